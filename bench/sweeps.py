"""Sweep figures (issue 9, section 9): a 1,000-job sweep accepted in one request in <= 2 s.

    python bench/sweeps.py            # ~1 min: 5 sweeps of 1,000 jobs, then one of 10,000
    python bench/sweeps.py --quick    # ~15 s: 3 sweeps of 1,000 jobs

What it does, against the real server (``python -m opeva_spool.cli serve``, bench/run.py's ServerProcess:
inotify observer, embedded ``local`` worker, hosts ``local,benchhost``) on a fresh shared root under /tmp:
1. POST /sweeps with an inline config (CONFIG below, ~50 lines of YAML, like a training config) and a grid of
   10 learning rates x 100 seeds, for ``benchhost`` (nothing works for it, so every job stays queued). The clock
   runs from sending the request to reading its 2xx on one keep-alive connection: validation, 1,000 config
   snapshots, staging, one syncfs, the commit rename and the moves into queued/ are all inside. Each sweep
   lands in a queue that already holds the earlier ones. Printed beside it: the server's CPU time over the
   request (/proc, user + system, all its threads) and the load average before it, since a busy machine
   (other test suites) stretches the wall time and not the CPU time;
2. after each sweep, checks on disk that all its entries are in queued/ and all its folders in jobs/;
3. GET /sweeps/{id} (1,000 jobs with their states) and GET /sweeps, timed once each;
4. (full run) one sweep of 10,000 jobs, the most a sweep may have, recorded only.
Target (docs/benchmarks.md): every 1,000-job sweep accepted in <= 2 s.
"""

import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import run as bench  # noqa: E402 - bench/run.py: the server process, the client, percentiles

from opeva_spool.spool import Entry, Spool  # noqa: E402

HOST = "benchhost"
TARGET_SECONDS = 2.0
LEARNING_RATES = [round(0.0001 * 2 ** step, 6) for step in range(10)]
# A training config of about the size researchers run: every section the image reads, ~50 lines of YAML.
CONFIG = {
    "metadata": {"experiment_name": "bench-sweep", "run_name": "base", "owner": "bench", "tags": ["sweep", "bench"]},
    "simulator": {"dataset_path": "/data/datasets/demo/schema.json", "central_agent": False,
                  "reward_function": "RewardFunction", "episode_time_steps": 8760, "simulation_start_time_step": 0,
                  "observations": ["hour", "day_type", "outdoor_dry_bulb_temperature", "electricity_pricing",
                                   "net_electricity_consumption", "electric_vehicle_soc"]},
    "algorithm": {"name": "SAC", "seed": 22,
                  "hyperparameters": {"lr": 0.0003, "gamma": 0.99, "tau": 0.005, "batch_size": 256,
                                      "buffer_size": 100000, "hidden_layers": [256, 256], "alpha": 0.2,
                                      "target_update_interval": 1, "gradient_steps": 1, "learning_starts": 1000,
                                      "checkpoint_interval": 20}},
    "training": {"episodes": 50, "seed": 1, "deterministic_eval": True, "eval_interval": 5,
                 "early_stopping": {"enabled": False, "patience": 10, "metric": "average_reward"}},
    "logging": {"log_level": "INFO", "mlflow": False, "metrics_interval": 100, "save_model": True},
    "kpis": ["cost_total", "carbon_emissions_total", "ev_departure_success_rate", "average_reward"],
}


def sweep_body(seeds, name):
    return {"name": name, "config": CONFIG, "target_host": HOST, "submitted_by": "bench",
            "grid": {"algorithm.hyperparameters.lr": LEARNING_RATES, "training.seed": list(range(1, seeds + 1))}}


def timed(client, method, path, body=None):
    started = time.perf_counter()
    status, payload, _ = client.request(method, path, body)
    return time.perf_counter() - started, status, json.loads(payload)


def server_cpu(server):
    """CPU seconds (user + system) the server process has used so far: next to the wall time, what the
    request cost, whatever else loads the machine."""
    return sum(bench.cpu_seconds(server.pid))


def on_disk(spool, job_ids):
    """(entries in queued/, folders in jobs/) of these job ids."""
    wanted = set(job_ids)
    entries = sum(1 for name in os.listdir(spool.queued_dir) if (Entry.parse(name) or Entry(0, 0, "", 0, "")).job_id
                  in wanted)
    folders = sum(1 for job_id in job_ids if os.path.isdir(spool.folder(job_id).path))
    return entries, folders


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "sweeps.json"))
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else 5
    workdir = tempfile.mkdtemp(prefix="opeva-bench-sweeps-")
    root = os.path.join(workdir, "root")
    os.makedirs(Spool(root).running_dir(HOST))  # a host whose agent ran once: the server knows it
    spool = Spool(root)
    server = bench.ServerProcess(root, workdir)
    client = bench.Client(server.port)
    raw = {"sweeps_1000": [], "machine": bench.machine_facts(workdir)}
    try:
        for number in range(rounds):
            load, cpu = os.getloadavg()[0], server_cpu(server)
            seconds, status, answer = timed(client, "POST", "/sweeps", sweep_body(100, f"bench-{number}"))
            cpu = server_cpu(server) - cpu
            if status != 200:
                raise RuntimeError(f"POST /sweeps answered {status}: {answer}")
            entries, folders = on_disk(spool, answer["job_ids"])
            raw["sweeps_1000"].append({"seconds": seconds, "server_cpu_seconds": cpu, "load_before": load,
                                       "jobs": answer["job_count"], "entries_queued": entries, "folders": folders})
            print(f"sweep {number + 1}: {answer['job_count']} jobs accepted in {seconds:.3f} s, server CPU "
                  f"{cpu:.2f} s, load average before {load:.1f} ({entries} entries in queued/, {folders} folders "
                  "in jobs/)", flush=True)
        last = answer["sweep_id"]
        raw["get_sweep_s"], status, shown = timed(client, "GET", f"/sweeps/{last}")
        raw["list_sweeps_s"], _, listed = timed(client, "GET", "/sweeps")
        print(f"GET /sweeps/{last} ({len(shown['jobs'])} jobs): {raw['get_sweep_s'] * 1000:.0f} ms; "
              f"GET /sweeps ({len(listed)} sweeps): {raw['list_sweeps_s'] * 1000:.0f} ms", flush=True)
        if not args.quick:
            seconds, status, answer = timed(client, "POST", "/sweeps", sweep_body(1000, "bench-10k"))
            raw["sweep_10000"] = {"seconds": seconds, "status": status, "jobs": answer.get("job_count")}
            print(f"sweep of {answer.get('job_count')} jobs accepted in {seconds:.3f} s (recorded only)", flush=True)
    finally:
        client.close()
        server.stop()
    times = [run["seconds"] for run in raw["sweeps_1000"]]
    cpus = [run["server_cpu_seconds"] for run in raw["sweeps_1000"]]
    complete = all(run["entries_queued"] == run["folders"] == run["jobs"] == 1000 for run in raw["sweeps_1000"])
    passed = max(times) <= TARGET_SECONDS and complete
    print(f"\n{'1,000-job sweep accepted (one POST /sweeps), p50 / max':<58} "
          f"{bench.pct(times, 50):.3f} / {max(times):.3f} s   <= {TARGET_SECONDS:g} s  {'PASS' if passed else 'MISS'}")
    print(f"{'  server CPU per 1,000-job sweep, p50 / max':<58} {bench.pct(cpus, 50):.3f} / {max(cpus):.3f} s")
    bench.save_figures(args.out, raw)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
