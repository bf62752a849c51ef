"""opeva-spool at a million jobs: start-up, idle cost, RSS and read latency of a server on a big tree.

    python bench/scale.py                       # seed 1M jobs (~15 min here), start the server, measure
    python bench/scale.py --jobs 100000         # a smaller tree
    python bench/scale.py --repo /tmp/other     # the server runs that source tree (another branch)
    python bench/scale.py --keep                # keep the seeded tree; a later run on the same
                                                # --workdir reuses it instead of seeding again
    python bench/scale.py --profile             # py-spy the server while idle and under the probes

What it does: seeds N jobs straight onto disk with bench/seed.py (submit times spread over
``--span-days``, 1000 by default: a lab's thousand jobs a day), then starts ``python -m
opeva_spool.cli serve`` from ``--repo`` as a process on that root (embedded worker on, as a default
server runs; OPEVA_HOSTS=local,benchhost) and measures, with one keep-alive HTTP client:
1. start-up: process start until /health answers 200 and GET /jobs counts N jobs (the index is complete);
2. idle CPU: the server's user+system CPU over ``--idle-seconds`` (60) with no requests, % of a core,
   from ``--settle-seconds`` (15) after start-up (the first rounds' CPU is reported beside it);
3. RSS: VmRSS after start-up and after the idle window (VmHWM: the peak);
4. /health every 10 ms for ``--health-seconds`` (30): p50 and p99 on an idle server;
5. GET /status/<id> for random seeded jobs, and GET /jobs?limit=100 (the first page; and pages
   followed through X-Next-Cursor, reported beside it): p50.
Raw figures go to bench/results/scale-<N>.json (``--out``). A reused tree is one a server has already
run on: a server that moves entries (archiving) finds it as that run left it.
"""

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import run  # noqa: E402  (bench/run.py: the HTTP client and the /proc readers)
import seed as seeding  # noqa: E402

THIS_REPO = os.path.dirname(HERE)
DEFAULT_JOBS = 1_000_000
DEFAULT_SPAN_DAYS = 1000
READY_TIMEOUT_S = 900
HEALTH_PERIOD_S = 0.01
SEEDED_MARK = "seeded.txt"  # in the workdir: the number of jobs the root was seeded with
# (label, unit, comparison, target) per figure, in print order.
TARGETS = {
    "startup_s": ("start-up (process start -> index complete)", "s", "<=", 10.0),
    "idle_cpu_pct": ("idle server CPU", "% core", "<=", 1.0),
    "rss_mb": ("server RSS (after the idle window)", "MB", "<=", 500.0),
    "status_p50_ms": ("GET /status/<id> p50", "ms", "<=", 1.0),
    "jobs_p50_ms": ("GET /jobs?limit=100 p50", "ms", "<=", 5.0),
    "health_p99_ms": ("GET /health p99, idle", "ms", "<=", 10.0),
}


def log(message):
    print(f"[scale {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Server:
    """``opeva-spool serve`` from ``repo`` as a process on ``root``; ``startup_s`` is measured on start."""

    def __init__(self, repo, root, workdir, jobs):
        self.port = run.free_port()
        self.log_path = os.path.join(workdir, f"server-{self.port}.log")
        env = dict(os.environ)
        env.update(OPEVA_HOSTS=f"local,{seeding.SEED_HOST}", OPEVA_LOCK_DIR=os.path.join(workdir, "locks"),
                   PYTHONPATH=repo, PYTHONDONTWRITEBYTECODE="1")
        argv = [sys.executable, "-m", "opeva_spool.cli", "serve", "--root", root, "--port", str(self.port),
                "--bind", "127.0.0.1"]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        started = time.perf_counter()
        self.proc = subprocess.Popen(argv, cwd=repo, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.first_answer_s = None
        self.startup_s = self._wait_indexed(started, jobs)

    def _wait_indexed(self, started, jobs):
        """Seconds until /health answers and /jobs counts every seeded job (X-Total-Count; an index built
        after the listener opened counts too)."""
        client = None
        while time.perf_counter() - started < READY_TIMEOUT_S:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log_path}")
            try:
                client = client or run.Client(self.port)
                path = "/jobs?limit=1" if self.first_answer_s else "/health"
                status, _, response = client.request("GET", path)
            except OSError:
                client = None
                time.sleep(0.05)
                continue
            if status == 200 and not self.first_answer_s:
                self.first_answer_s = time.perf_counter() - started
                continue
            if status == 200 and int(response.getheader("X-Total-Count") or 0) >= jobs:
                client.close()
                return time.perf_counter() - started
            time.sleep(0.05)
        raise RuntimeError(f"the server had not indexed {jobs} jobs after {READY_TIMEOUT_S}s; see {self.log_path}")

    @property
    def pid(self):
        return self.proc.pid

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()



def timed(client, path, count):
    """Latencies (s) of ``count`` GETs of ``path`` (a callable gives the path per request)."""
    out = []
    for i in range(count):
        target = path(i) if callable(path) else path
        started = time.perf_counter()
        status, _, _ = client.request("GET", target)
        out.append(time.perf_counter() - started)
        if status != 200:
            raise RuntimeError(f"GET {target} answered {status}")
    return out


def health_probe(client, seconds):
    """/health every HEALTH_PERIOD_S for ``seconds``: the latencies (s)."""
    out, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        client.request("GET", "/health")
        out.append(time.perf_counter() - started)
        time.sleep(max(0.0, HEALTH_PERIOD_S - (time.perf_counter() - started)))
    return out


def sample_ids(root, count):
    """``count`` job ids from jobs/ (directory order is hash order in ext4: a spread over the tree)."""
    ids = []
    with os.scandir(os.path.join(root, "jobs")) as entries:
        for entry in entries:
            ids.append(entry.name)
            if len(ids) >= count * 20:
                break
    return random.Random(7).sample(ids, min(count, len(ids)))


def cursor_pages(client, count):
    """Latencies (s) of ``count`` /jobs?limit=100 pages, following X-Next-Cursor from the first."""
    out, cursor = [], None
    while len(out) < count:
        path = "/jobs?limit=100" + (f"&cursor={cursor}" if cursor else "")
        started = time.perf_counter()
        status, _, response = client.request("GET", path)
        out.append(time.perf_counter() - started)
        cursor = response.getheader("X-Next-Cursor") if status == 200 else None
    return out


def measure(args, root, workdir):
    raw = {"jobs": args.jobs, "repo": args.repo, "commit": git_commit(args.repo), "machine": run.machine_facts(root),
           "loadavg_before": os.getloadavg()}
    log(f"starting the server from {args.repo}")
    server = Server(args.repo, root, workdir, args.jobs)
    spy = run.Spy(args.profile_dir, server.pid, slack=5)
    try:
        raw["startup_s"] = round(server.startup_s, 3)
        raw["first_answer_s"] = round(server.first_answer_s, 3)
        raw["rss_after_start"] = run.vm_status(server.pid)
        log(f"indexed in {server.startup_s:.2f}s (first /health {server.first_answer_s:.2f}s); "
            f"RSS {raw['rss_after_start']['VmRSS']:.0f} MB; idle for {args.idle_seconds}s")
        # The first maintenance rounds after start-up read each queued entry once (then remembered) and run the
        # archive pass that is due: start-up's work, reported on its own, not idle cost.
        before, started = run.cpu_seconds(server.pid), time.perf_counter()
        time.sleep(args.settle_seconds)
        after, elapsed = run.cpu_seconds(server.pid), time.perf_counter() - started
        raw["settle_cpu_pct"], raw["settle_seconds"] = 100.0 * (sum(after) - sum(before)) / elapsed, args.settle_seconds
        spy.start("idle", args.idle_seconds)
        before, started = run.cpu_seconds(server.pid), time.perf_counter()
        time.sleep(args.idle_seconds)
        after, elapsed = run.cpu_seconds(server.pid), time.perf_counter() - started
        spy.stop()
        raw["idle_cpu_pct"] = 100.0 * (sum(after) - sum(before)) / elapsed
        raw["idle_cpu_user_sys_s"] = [after[0] - before[0], after[1] - before[1], elapsed]
        raw["rss_after_idle"] = run.vm_status(server.pid)
        log(f"idle CPU {raw['idle_cpu_pct']:.2f}% of a core; probing /health for {args.health_seconds}s")
        client = run.Client(server.port)
        spy.start("health", args.health_seconds)
        raw["health"] = run.summary_ms(health_probe(client, args.health_seconds))
        spy.stop()
        ids = sample_ids(root, args.requests)
        spy.start("reads", 60)
        raw["status"] = run.summary_ms(timed(client, lambda i: f"/status/{ids[i % len(ids)]}", args.requests))
        raw["jobs_first_page"] = run.summary_ms(timed(client, "/jobs?limit=100", args.requests // 10))
        raw["jobs_cursor_pages"] = run.summary_ms(cursor_pages(client, args.requests // 10))
        raw["jobs_failed_filter"] = run.summary_ms(timed(client, "/jobs?limit=100&status=failed", args.requests // 10))
        spy.stop()
        client.close()
        raw["rss_end"] = run.vm_status(server.pid)
    finally:
        spy.stop()
        server.stop()
    raw["rss_mb"] = raw["rss_after_idle"]["VmRSS"]
    raw["status_p50_ms"] = raw["status"]["p50_ms"]
    raw["jobs_p50_ms"] = raw["jobs_first_page"]["p50_ms"]
    raw["health_p99_ms"] = raw["health"]["p99_ms"]
    raw["loadavg_after"] = os.getloadavg()
    return raw


def git_commit(repo):
    try:
        return subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def report(raw):
    print(f"\nopeva-spool at {raw['jobs']:,} jobs — server from {raw['repo']} ({raw['commit']})")
    print(f"{'figure':46} {'value':>12}   {'target':>14}  verdict")
    for key, (label, unit, op, target) in TARGETS.items():
        value = raw[key]
        ok = value <= target if op == "<=" else value >= target
        print(f"{label:46} {value:10.2f} {unit:6} {op} {target:g} {unit:6} {'ok' if ok else 'MISS'}")
    print(f"  CPU in the first {raw['settle_seconds']:g}s after start-up (before the idle window): "
          f"{raw['settle_cpu_pct']:.2f} % of a core")
    print(f"  first /health answer {raw['first_answer_s']:.2f}s; RSS after start {raw['rss_after_start']['VmRSS']:.0f}"
          f" MB, end {raw['rss_end']['VmRSS']:.0f} MB, peak {raw['rss_end']['VmHWM']:.0f} MB")
    print(f"  /health p50 {raw['health']['p50_ms']:.2f} ms, max {raw['health']['max_ms']:.1f} ms; /status p99 "
          f"{raw['status']['p99_ms']:.2f} ms; /jobs cursor pages p50 {raw['jobs_cursor_pages']['p50_ms']:.2f} ms, "
          f"?status=failed p50 {raw['jobs_failed_filter']['p50_ms']:.2f} ms")
    print(f"  load average before {raw['loadavg_before'][0]:.2f}, after {raw['loadavg_after'][0]:.2f} "
          "(a shared machine: figures are noisy)")


def read_text(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read().strip()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=DEFAULT_JOBS, help="jobs to seed (default 1M)")
    parser.add_argument("--repo", default=THIS_REPO, help="the source tree the server runs (default this one)")
    parser.add_argument("--workdir", help="where the tree goes (default /tmp/opeva-scale-<jobs>)")
    parser.add_argument("--keep", action="store_true", help="keep the seeded tree for a later run")
    parser.add_argument("--span-days", type=float, default=DEFAULT_SPAN_DAYS, help="submit times spread over")
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--settle-seconds", type=float, default=15.0,
                        help="after start-up, before the idle window: three maintenance rounds (default 15)")
    parser.add_argument("--health-seconds", type=float, default=30.0)
    parser.add_argument("--requests", type=int, default=2000,
                        help="GET /status requests (a tenth as many of each /jobs kind)")
    parser.add_argument("--profile", action="store_true", help="record py-spy profiles into <workdir>/profiles")
    parser.add_argument("--out", help="raw figures (default bench/results/scale-<jobs>.json)")
    args = parser.parse_args()
    args.repo = os.path.abspath(args.repo)
    workdir = args.workdir or f"/tmp/opeva-scale-{args.jobs}"
    root = os.path.join(workdir, "root")
    mark = os.path.join(workdir, SEEDED_MARK)
    args.profile_dir = os.path.join(workdir, "profiles") if args.profile else None
    if args.profile_dir:
        os.makedirs(args.profile_dir, exist_ok=True)
    reused = os.path.exists(mark) and read_text(mark) == str(args.jobs)
    try:
        if reused:
            log(f"reusing the {args.jobs:,}-job tree under {root}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            os.makedirs(workdir)
            log(f"seeding {args.jobs:,} jobs under {root}")
            seeded = seeding.seed(root, args.jobs, span_days=args.span_days)
            with open(mark, "w") as handle:
                handle.write(str(args.jobs))
            log(f"seeded in {seeded['seconds']:.0f}s ({args.jobs / max(seeded['seconds'], 1e-9):,.0f} jobs/s)")
        raw = measure(args, root, workdir)
        raw["reused_tree"] = reused
        out = args.out or os.path.join(HERE, "results", f"scale-{args.jobs}.json")
        run.save_figures(out, raw)
        report(raw)
        print(f"raw figures: {out}")
    finally:
        if not args.keep:  # minutes at 1M: after the table
            log(f"deleting {workdir}")
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
