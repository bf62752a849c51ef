"""The quick start's demo: a simulated training run that writes what the real OPEVA image writes.

``opeva-spool serve --demo`` calls ``start``: it saves ``configs/demo.yaml``, submits the
demo job to the embedded worker and logs the job's state, progress and result as they
change. The job itself is this module run as a process:

    python -m opeva_spool.demo --config CONFIG --job_id ID [--base-dir DIR]

Same arguments as the image's ``run_experiment.py``; ``--base-dir`` defaults to
$OPEVA_BASE_DIR. It prints its log to stdout (the runtime captures it into
``logs/<job_id>.log``), rewrites ``progress/progress.json`` by temp + rename, and writes
``results/result.json`` with a plain write, starting ``pending`` — all as the real image
does, so the spooler is exercised against the same formats. The config's optional
``demo`` section sets ``episodes``, ``steps``, ``step_seconds`` and ``fail_at_step``.
"""

import argparse
import json
import logging
import math
import os
import random
import sys
import threading
import time

import yaml

from .configs import WriteMode
from .fsio import atomic_write_json
from .jobs import utc_now_precise
from .names import job_id
from .states import JobState

log = logging.getLogger(__name__)

CONFIG_FILE = "demo.yaml"
CONFIG = """\
experiment: {name: demo, run_name: quick-start, logging: {log_level: INFO, mlflow: false}}
simulator: {dataset_path: /data/datasets/demo/schema.json, central_agent: false, reward_function: RewardFunction}
algorithm: {seed: 22, hyperparameters: {checkpoint_interval: 20}}
demo: {episodes: 3, steps: 40, step_seconds: 0.1}
"""
NARRATE_POLL_SECONDS = 0.2


# ----- in the server: submit the demo job and narrate it ---------------------------------------

def start(server, host):
    """Save the demo config, submit the demo job to ``host`` and narrate it until it ends or the server closes."""
    server.jobs.configs.write(CONFIG_FILE, CONFIG, WriteMode.SAME)
    job = server.jobs.submit({"config_path": CONFIG_FILE, "target_host": host, "job_name": "demo-training",
                              "submitted_by": "quick-start"})
    settings = server.settings
    base = f"http://{settings.bind}:{settings.port}"
    log.info("demo job %s queued; watch it at %s/ui/job?id=%s (the dashboard) or %s/status/%s", job["job_id"], base,
             job["job_id"], base, job["job_id"])
    threading.Thread(target=narrate, args=(server.jobs, job["job_id"], server.stopping), name="demo-narrator",
                     daemon=True).start()
    return job


def narrate(jobs, job_id, stopping):
    """Log the job's state and progress (every 10 %) as they change, then its result."""
    last = None
    while not stopping.is_set():
        status = jobs.status(job_id)["status"]
        progress = jobs.progress(job_id)
        shown = (status, int(progress.get("progress_pct", 0) // 10))
        if shown != last:
            log.info("demo job: %s, progress %s%%", status, progress.get("progress_pct", 0))
            last = shown
        if JobState(status).terminal:
            log.info("demo job result: %s", json.dumps(jobs.result(job_id)))
            return
        stopping.wait(NARRATE_POLL_SECONDS)


# ----- in the job: the simulated training run ----------------------------------------------------




def load_demo_section(config_path):
    if not config_path:
        return {}
    with open(config_path, encoding="utf-8") as handle:
        config = yaml.safe_load(handle) or {}
    section = config.get("demo") if isinstance(config, dict) else None
    return section if isinstance(section, dict) else {}


def run(job_dir, job_name, episodes, steps, step_seconds, fail_at_step=None, seed=22):
    progress_path = os.path.join(job_dir, "progress", "progress.json")
    result_path = os.path.join(job_dir, "results", "result.json")
    for sub in ("progress", "results", "logs"):
        os.makedirs(os.path.join(job_dir, sub), exist_ok=True)
    with open(result_path, "w", encoding="utf-8") as handle:  # plain write, like the image
        json.dump({"status": "pending"}, handle)
    total = episodes * steps
    base = {"episode_total": episodes, "step_total": steps, "global_step_total": total}
    atomic_write_json(progress_path, dict(base, episode=0, episode_current=0, step=0, step_current=0,
                                          global_step=0, progress_pct=0.0, status="initializing",
                                          timestamp=utc_now_precise()), durable=False)
    rng = random.Random(seed)
    rewards = []
    # Like the image's logs/metrics.jsonl: one JSON object per step, appended and flushed.
    with open(os.path.join(job_dir, "logs", "metrics.jsonl"), "a", encoding="utf-8") as metrics:
        print(f"[demo] job {job_name}: {episodes} episodes x {steps} steps", flush=True)
        global_step = 0
        for episode in range(1, episodes + 1):
            episode_reward = 0.0
            for step in range(1, steps + 1):
                global_step += 1
                if fail_at_step and global_step >= fail_at_step:
                    error = f"simulated failure at global step {global_step}"
                    atomic_write_json(progress_path, dict(base, episode=episode, step=step, global_step=global_step,
                                                          progress_pct=round(100 * global_step / total, 2),
                                                          status="failed", error_type="RuntimeError", error=error,
                                                          timestamp=utc_now_precise()), durable=False)
                    with open(result_path, "w", encoding="utf-8") as handle:
                        json.dump({"status": "failed", "error_type": "RuntimeError", "error": error,
                                   "timestamp": utc_now_precise(), "traceback": "RuntimeError: " + error}, handle)
                    print(f"[demo] ERROR {error}", file=sys.stderr, flush=True)
                    return 1
                step_reward = -1.0 + math.tanh(global_step / total * 3) + rng.uniform(-0.1, 0.1)
                episode_reward += step_reward
                time.sleep(step_seconds)
                loss = math.exp(-3 * global_step / total) + rng.uniform(0, 0.05)
                metrics.write(json.dumps({"global_step": global_step, "episode": episode,
                                          "timestamp": utc_now_precise(), "reward": round(step_reward, 4),
                                          "loss": round(loss, 4)}) + "\n")
                metrics.flush()
                atomic_write_json(progress_path, dict(base, episode=episode, episode_current=episode, step=step,
                                                      step_current=step, global_step=global_step,
                                                      progress_pct=round(100 * global_step / total, 2),
                                                      status="running", rewards={"episode": round(episode_reward, 4)},
                                                      timestamp=utc_now_precise()), durable=False)
            rewards.append(round(episode_reward, 4))
            print(f"[demo] episode {episode}/{episodes} reward {episode_reward:.4f}", flush=True)
    atomic_write_json(progress_path, dict(base, episode=episodes, episode_current=episodes, step=steps,
                                          step_current=steps, global_step=total, progress_pct=100,
                                          status="completed", rewards={"episodes": rewards},
                                          timestamp=utc_now_precise()), durable=False)
    with open(result_path, "w", encoding="utf-8") as handle:
        json.dump({"status": "completed", "job_id": job_name, "episodes": episodes, "steps_per_episode": steps,
                   "episode_rewards": rewards, "final_reward": rewards[-1] if rewards else None,
                   "kpis": {"average_reward": round(sum(rewards) / len(rewards), 4) if rewards else None},
                   "timestamp": utc_now_precise()}, handle)
    print(f"[demo] done: final reward {rewards[-1] if rewards else None}", flush=True)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="")
    parser.add_argument("--job_id", required=True)
    parser.add_argument("--base-dir", default=os.environ.get("OPEVA_BASE_DIR", "/data"))
    args = parser.parse_args(argv)
    job_id(args.job_id)  # the id becomes a directory name: refuse anything path-like
    section = load_demo_section(args.config)
    return run(
        os.path.join(args.base_dir, "jobs", args.job_id),
        args.job_id,
        episodes=int(section.get("episodes", 3)),
        steps=int(section.get("steps", 20)),
        step_seconds=float(section.get("step_seconds", 0.05)),
        fail_at_step=section.get("fail_at_step"),
    )


if __name__ == "__main__":
    sys.exit(main())
