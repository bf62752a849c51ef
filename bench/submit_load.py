"""Submits under load: durable submits/s with 8 concurrent HTTP clients, and /health meanwhile.

    python bench/submit_load.py                        # this tree: 8 clients x 500 submits, /health every 10 ms
    python bench/submit_load.py --baseline /tmp/main   # first the tree at /tmp/main (e.g. `git archive main`), then
                                                       # this one, and the ratio of the two
    python bench/submit_load.py --repo /tmp/other      # only that tree
    python bench/submit_load.py --commit-flush syncfs  # only that way of flushing (default: fsync, then syncfs)
    python bench/submit_load.py --out bench/results/submit_load.json

Each tree gets a real server process (``python -m opeva_spool.cli serve`` run from that tree, on a fresh
shared root under /tmp, ``OPEVA_HOSTS=local,benchhost``; the jobs go to ``benchhost``, where nothing runs
them, so they stay queued). It measures, with bench/run.py's clients (separate processes, one keep-alive
connection each, released together):

1. ``GET /health`` every 10 ms on its own connection while idle (``--health-idle`` probes);
2. 8 clients x ``--each`` ``POST /run-simulation``: submits/s = answered / wall time. Each 2xx is a durable
   submission (the server answers only once the entry and the job folder are flushed); the count of entries
   in ``spool/queued/`` afterwards is checked against the 2xx count;
3. meanwhile ``GET /health`` every 10 ms on its own connection: p50 / p99.

Targets: >= 1,000 submits/s with 8 clients; /health p50 <= 2 ms while they submit.
The clients run on the same cores as the server, so on a small machine they take CPU from it.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import run as harness  # noqa: E402

CLIENTS = 8
EACH = 500
HEALTH_IDLE = 200
TARGET_SUBMITS_PER_S = 1000.0
TARGET_HEALTH_P50_MS = 2.0


class TreeServer(harness.ServerProcess):
    """bench/run.py's server process, run from the source tree ``repo`` (this one or an exported older one),
    with the setting ``commit_flush`` if given (a tree that has no such setting ignores it)."""

    def __init__(self, root, workdir, repo, commit_flush=None):
        saved, saved_env = harness.REPO, os.environ.get("OPEVA_COMMIT_FLUSH")
        harness.REPO = repo  # ServerProcess takes its PYTHONPATH and cwd from it, and its environment from ours
        if commit_flush:
            os.environ["OPEVA_COMMIT_FLUSH"] = commit_flush
        try:
            super().__init__(root, workdir, worker=False)
        finally:
            harness.REPO = saved
            os.environ.pop("OPEVA_COMMIT_FLUSH", None)
            if saved_env is not None:
                os.environ["OPEVA_COMMIT_FLUSH"] = saved_env


def measure(repo, each, health_idle, commit_flush=None):
    """The figures of one tree: idle /health, then 8 clients submitting with /health probed meanwhile."""
    workdir = tempfile.mkdtemp(prefix="opeva-submit-load-")
    root = os.path.join(workdir, "root")
    server = TreeServer(root, workdir, repo, commit_flush)
    try:
        idle = harness.http_load(server.port, "health", 1, health_idle)
        load = harness.http_load(server.port, "submit", CLIENTS, each, during=harness.health_prober(server.port),
                                 server_pid=server.pid)
        answered = load["requests"] - load["errors"]
        queued = len(os.listdir(os.path.join(root, "spool", "queued")))
        return {"repo": repo, "commit": _commit(repo), "commit_flush": commit_flush, "health_idle": idle,
                "submit": load, "answered": answered, "queued_entries": queued, "loadavg": os.getloadavg()}
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _commit(repo):
    try:
        return subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except OSError:
        return None


def report(name, figures):
    load, health = figures["submit"], figures["submit"]["during"]
    rate_ok = load["per_s"] >= TARGET_SUBMITS_PER_S
    health_ok = health["p50_ms"] <= TARGET_HEALTH_P50_MS
    cpu = load.get("server_cpu", {})
    print(f"\n{name}: {figures['repo']} ({figures['commit'] or 'no git'}), commit_flush "
          f"{figures['commit_flush'] or 'its default'}, load average {figures['loadavg'][0]:.2f}")
    print(f"  submits/s, {CLIENTS} clients x {load['requests'] // CLIENTS}: {load['per_s']:8.0f}   target >= "
          f"{TARGET_SUBMITS_PER_S:.0f}   {'PASS' if rate_ok else 'MISS'}")
    print(f"  submit latency p50 / p99:        {load['p50_ms']:.2f} / {load['p99_ms']:.2f} ms, errors {load['errors']}")
    print(f"  /health p50 / p99 while submitting: {health['p50_ms']:.2f} / {health['p99_ms']:.2f} ms   target p50 <= "
          f"{TARGET_HEALTH_P50_MS} ms   {'PASS' if health_ok else 'MISS'}")
    print(f"  /health p50 / p99 idle:          {figures['health_idle']['p50_ms']:.2f} / "
          f"{figures['health_idle']['p99_ms']:.2f} ms")
    if cpu:
        print(f"  server CPU per submit: {cpu['user_ms_per_req']:.2f} ms user + {cpu['sys_ms_per_req']:.2f} ms system "
              f"({cpu['cores_busy']:.2f} cores busy)")
    print(f"  entries in queued/ {figures['queued_entries']} for {figures['answered']} answered submits")
    return rate_ok and health_ok and figures["queued_entries"] >= figures["answered"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=REPO, help="the source tree whose server is measured (default: this one)")
    parser.add_argument("--baseline", help="a second tree measured first (e.g. main exported), for the ratio")
    parser.add_argument("--each", type=int, default=EACH, help="submits per client")
    parser.add_argument("--health-idle", type=int, default=HEALTH_IDLE, help="idle /health probes")
    parser.add_argument("--commit-flush", default="fsync,syncfs",
                        help="the measured tree's commit_flush settings, comma-separated: each is measured")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "submit_load.json"))
    args = parser.parse_args(argv)
    figures = {"machine": harness.machine_facts(tempfile.gettempdir()), "clients": CLIENTS,
               "targets": {"submits_per_s": TARGET_SUBMITS_PER_S, "health_p50_ms": TARGET_HEALTH_P50_MS}}
    if args.baseline:
        figures["baseline"] = measure(os.path.abspath(args.baseline), args.each, args.health_idle)
    flushes = [mode for mode in args.commit_flush.split(",") if mode]
    figures["measured"] = {mode: measure(os.path.abspath(args.repo), args.each, args.health_idle, mode)
                           for mode in flushes}
    ok = True
    if args.baseline:
        report("baseline", figures["baseline"])
    for measured in figures["measured"].values():
        ok = report("measured", measured) and ok
    if args.baseline:
        before = figures["baseline"]
        figures["ratio"] = {mode: {"submits_per_s": after["submit"]["per_s"] / before["submit"]["per_s"],
                                   "health_p50": after["submit"]["during"]["p50_ms"]
                                   / before["submit"]["during"]["p50_ms"]}
                            for mode, after in figures["measured"].items()}
        for mode, ratio in figures["ratio"].items():
            print(f"\nratio measured ({mode}) / baseline: submits/s x{ratio['submits_per_s']:.2f}, "
                  f"/health p50 under load x{ratio['health_p50']:.2f}")
    harness.save_figures(args.out, figures)
    print(f"\nraw figures: {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
