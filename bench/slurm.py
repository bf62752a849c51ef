"""Slurm runtime figures against a real one-node Slurm cluster.

    python bench/slurm.py            # ~3 min: 20 latency jobs, 100 handed, CPU at 1/10/100/500 jobs
    python bench/slurm.py --quick    # ~1 min: 10 latency jobs, 100 handed, CPU at 1/10/100 jobs

Needs the cluster of SLURM_CONF, else starts a private one with .ci/slurm.sh (root and the Debian packages),
and stops it at the end. Runs the real server (``opeva-spool serve``, no embedded worker, host ``hpc``) and
``opeva-spool agent --host hpc --runtime slurm`` as processes on a fresh shared root under /tmp.
1. submit -> RUNNING: one job at a time (``sleep 1``); the clock runs from the POST's 2xx until squeue (polled by
   this script every 20 ms) shows it RUNNING at the cluster, and until the attempt record says so (the agent's
   own view, one slurm_poll_interval later at most). Target: p50 <= 1.5 s (one scheduling pass,
   batch_sched_delay=0).
2. 100 jobs handed: 100 POSTs back to back (``true``, capacity 1000); the clock runs from the first POST until
   every attempt record holds its Slurm id (sbatch --hold, record, release done). Target: >= 50 jobs/s.
3. agent CPU per poll: with 1, 10, 100, 500 jobs at the cluster (``sleep 3600``; the node runs two, the rest
   pend), the agent's CPU time (/proc: user + system, its threads and its reaped squeue children) over 10 s,
   divided by the polls in that time (slurm_poll_interval). Target: flat from 1 to 500.
Raw figures: bench/results/slurm.json (``save_figures``).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

import run as bench  # noqa: E402 - bench/run.py: percentiles, save_figures, free_port

HOST = "hpc"
POLL_INTERVAL = 0.5  # slurm_poll_interval of the benchmark's agent
CPU_WINDOW = 10.0
LATENCY_TARGET = 1.5
HANDED_TARGET = 50.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
SLURM_SCRIPT = os.path.join(REPO, ".ci", "slurm.sh")


def slurm_script(function, directory):
    subprocess.run(["bash", "-c", f'source "$0" && {function} "$1"', SLURM_SCRIPT, directory], check=True,
                   stdout=subprocess.DEVNULL, timeout=180)


class Deployment:
    def __init__(self, conf, work):
        self.conf, self.work = conf, work
        self.root = os.path.join(work, "share")
        self.port = bench.free_port()
        self.env = {**os.environ, "PYTHONPATH": REPO, "SLURM_CONF": conf, "OPEVA_SHARED_ROOT": self.root,
                    "OPEVA_LOCK_DIR": os.path.join(work, "locks"), "OPEVA_HOSTS": HOST, "OPEVA_PORT": str(self.port),
                    "OPEVA_EMBEDDED_WORKER": "false", "OPEVA_OBSERVER": "native", "OPEVA_SCAN_INTERVAL": "1",
                    "OPEVA_HOST": HOST, "OPEVA_RUNTIME": "slurm", "OPEVA_SLURM_CONF": conf, "OPEVA_CAPACITY": "1000",
                    "OPEVA_SLURM_POLL_INTERVAL": str(POLL_INTERVAL)}
        self.env.pop("OPEVA_CONFIG", None)
        self.procs = []
        self.server = self._start("serve")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if bench.Client(self.port).request("GET", "/health")[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        self.client = bench.Client(self.port)
        self.agent = self._start("agent")
        time.sleep(2)

    def _start(self, command):
        with open(os.path.join(self.work, f"{command}.log"), "ab") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen([sys.executable, "-m", "opeva_spool.cli", command], env=self.env, cwd=REPO,
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def submit(self, command):
        status, body, _ = self.client.request("POST", "/run-simulation", {"command": command, "target_host": HOST})
        assert status == 200, body
        return json.loads(body)["job_id"]

    def record(self, job_id):
        try:
            with open(os.path.join(self.root, "jobs", job_id, "attempts", "1.json"), encoding="utf-8") as handle:
                return json.load(handle)
        except (OSError, ValueError):
            return {}

    def squeue(self):
        done = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%j|%T"], env=self.env, capture_output=True,
                              text=True, timeout=30)
        return dict(line.split("|", 1) for line in done.stdout.split())

    def agent_cpu(self):
        with open(f"/proc/{self.agent.pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rpartition(")")[2].split()
        return sum(int(value) for value in fields[11:15]) / CLK_TCK  # utime stime cutime cstime

    def close(self):
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        ids = [str(self.record(job_id).get("slurm_job_id") or "") for job_id in self.job_ids()]
        if any(ids):  # nothing of the benchmark's stays on the cluster
            subprocess.run(["scancel", *filter(None, ids)], env=self.env, capture_output=True, timeout=60)

    def job_ids(self):
        jobs = os.path.join(self.root, "jobs")
        return os.listdir(jobs) if os.path.isdir(jobs) else []


def wait(predicate, timeout, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("the benchmark waited too long")


STARTED = ("RUNNING", "COMPLETING", "COMPLETED")


def one_latency(dep):
    """(seconds until the cluster ran it, seconds until the agent recorded that) for one submission."""
    sent = time.monotonic()
    job_id = dep.submit(["sleep", "1"])
    name = f"opeva-{job_id}-1"
    wait(lambda: dep.squeue().get(name) in STARTED, 30)
    at_cluster = time.monotonic() - sent
    wait(lambda: dep.record(job_id).get("cluster_state") in STARTED or dep.record(job_id).get("state") == "finished",
         30)
    recorded = time.monotonic() - sent
    wait(lambda: dep.record(job_id).get("state") == "finished", 30)
    return at_cluster, recorded


def latency(dep, count):
    at_cluster, recorded = zip(*(one_latency(dep) for _ in range(count)), strict=True)
    return {"at_cluster": bench.summary_ms(at_cluster), "recorded": bench.summary_ms(recorded)}


def handed(dep, count):
    """Submit ``count`` jobs back to back; when each was claimed (its record appeared) and handed (its record
    holds the Slurm id), in seconds from the first POST, read from the records every 10 ms."""
    started = time.monotonic()
    job_ids = [dep.submit(["true"]) for _ in range(count)]
    submitted = time.monotonic() - started
    claimed, handed_at = {}, {}
    deadline = started + 120
    while len(handed_at) < count and time.monotonic() < deadline:
        for job_id in job_ids:
            if job_id not in handed_at:
                record = dep.record(job_id)
                if record:
                    claimed.setdefault(job_id, time.monotonic() - started)
                if record.get("slurm_job_id"):
                    handed_at[job_id] = time.monotonic() - started
        time.sleep(0.01)
    wait(lambda: all(dep.record(job_id).get("state") == "finished" for job_id in job_ids), 300, interval=0.5)
    first_claim, last_claim, last_handed = min(claimed.values()), max(claimed.values()), max(handed_at.values())
    return {"jobs": count, "api_seconds": submitted, "first_claim": first_claim, "last_claim": last_claim,
            "last_handed": last_handed, "jobs_per_s": count / (last_handed - first_claim),
            "end_to_end_jobs_per_s": count / last_handed}


def cpu_per_poll(dep, levels):
    rows = []
    at_cluster = []

    def all_at_cluster():
        return all(dep.record(job_id).get("cluster_state") for job_id in at_cluster)

    for level in levels:
        at_cluster += [dep.submit(["sleep", "3600"]) for _ in range(level - len(at_cluster))]
        wait(all_at_cluster, 300, interval=0.2)
        time.sleep(2 * POLL_INTERVAL)  # every runner in its steady loop
        before, clock = dep.agent_cpu(), time.monotonic()
        time.sleep(CPU_WINDOW)
        cpu, elapsed = dep.agent_cpu() - before, time.monotonic() - clock
        polls = elapsed / POLL_INTERVAL
        rows.append({"jobs": level, "cpu_s": cpu, "polls": polls, "cpu_ms_per_poll": 1000 * cpu / polls,
                     "cpu_percent": 100 * cpu / elapsed})
        print(f"  {level:4d} jobs at the cluster: {1000 * cpu / polls:7.1f} ms agent CPU per poll "
              f"({100 * cpu / elapsed:5.1f} % of a core)", flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "slurm.json"))
    args = parser.parse_args()
    private = ""
    conf = os.environ.get("SLURM_CONF", "")
    if not conf:
        private = tempfile.mkdtemp(prefix="sb", dir="/tmp")
        slurm_script("slurm_up", private)
        conf = os.path.join(private, "slurm.conf")
    work = tempfile.mkdtemp(prefix="opeva-bench-slurm-")
    dep = None
    try:
        dep = Deployment(conf, work)
        dep.submit(["true"])  # the controller's first scheduling pass is 2-3 s after start: not measured
        time.sleep(4)
        figures = {"poll_interval": POLL_INTERVAL, "load_before": os.getloadavg()}
        figures["latency"] = latency(dep, 10 if args.quick else 20)
        p50 = figures["latency"]["at_cluster"]["p50_ms"] / 1000
        print(f"submit -> RUNNING at the cluster p50 {p50:.2f} s (target <= {LATENCY_TARGET} s); recorded by the "
              f"agent p50 {figures['latency']['recorded']['p50_ms'] / 1000:.2f} s", flush=True)
        figures["handed"] = handed(dep, 100)
        hand = figures["handed"]
        print(f"100 jobs handed to Slurm (first claim -> last Slurm id recorded): {hand['jobs_per_s']:.0f} jobs/s "
              f"(target >= {HANDED_TARGET:.0f}); POSTs took {hand['api_seconds']:.2f} s, claims from "
              f"{hand['first_claim']:.2f} to {hand['last_claim']:.2f} s, last handed at {hand['last_handed']:.2f} s",
              flush=True)
        print("agent CPU per poll (target: flat):", flush=True)
        figures["cpu"] = cpu_per_poll(dep, (1, 10, 100) if args.quick else (1, 10, 100, 500))
        bench.save_figures(args.out, figures)
        print(f"raw figures: {args.out}")
    finally:
        if dep is not None:
            dep.close()
        shutil.rmtree(work, ignore_errors=True)
        if private:
            slurm_script("slurm_down", private)


if __name__ == "__main__":
    main()
