"""How soon ``opeva-spool logs -f`` prints a line after the job wrote it (target: p95 <= 200 ms).

    python bench/cli_follow.py                  # 200 lines, about a minute
    python bench/cli_follow.py --lines 50       # quicker

All on this machine: the real server (``python -m opeva_spool.cli serve``) as a subprocess on 127.0.0.1
with a fresh shared root under /tmp and its embedded ``local`` worker (process runtime); one job that prints
lines, each carrying ``time.time()`` taken just before it is written and flushed to the job's log, at random
gaps of 20-400 ms (random so that the writes do not fall in step with the server's polling of the log); and
``opeva-spool logs -f <job>`` as a subprocess whose stdout this script reads, stamping each line as it
arrives. Latency = arrival - stamp (one clock: the same machine). Prints p50/p95/p99/max and the verdict.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from run import end_process, free_port, pct, request, start_plain_server  # noqa: E402

TARGET_P95_MS = 200
JOB = """\
import random, sys, time
rng = random.Random(7)
print("ready", flush=True)
time.sleep(1.0)  # the follower is connected and has read the first line
for i in range({lines}):
    time.sleep(rng.uniform(0.02, 0.4))
    print(f"line {{i}} {{time.time():.6f}}", flush=True)
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=200, help="lines the job writes (default: %(default)s)")
    args = parser.parse_args(argv)
    root = tempfile.mkdtemp(prefix="opeva-bench-follow-")
    port = free_port()
    server = start_plain_server(REPO, root, port)
    follower = None
    try:
        url = f"http://127.0.0.1:{port}"
        job = request(f"{url}/run-simulation",
                      {"command": [sys.executable, "-c", JOB.format(lines=args.lines)], "target_host": "local"})
        env = {**os.environ, "PYTHONPATH": REPO, "OPEVA_SERVER": url, "XDG_CONFIG_HOME": root}
        follower = subprocess.Popen([sys.executable, "-m", "opeva_spool.cli", "logs", "-f", job["job_id"]], env=env,
                                    stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        latencies = []
        for raw in follower.stdout:
            arrived = time.time()
            parts = raw.split()
            if len(parts) == 3 and parts[0] == b"line":
                latencies.append((arrived - float(parts[2])) * 1000)
        code = follower.wait(30)
    finally:
        if follower and follower.poll() is None:
            follower.kill()
        end_process(server, 30)
        shutil.rmtree(root, ignore_errors=True)
    if len(latencies) != args.lines or code != 0:
        raise SystemExit(f"got {len(latencies)} of {args.lines} lines, follower exit status {code}")
    p95 = pct(latencies, 95)
    print(f"logs -f: line written -> printed, {len(latencies)} lines: min {min(latencies):.0f} ms, "
          f"p50 {pct(latencies, 50):.0f} ms, p95 {p95:.0f} ms, p99 {pct(latencies, 99):.0f} ms, "
          f"max {max(latencies):.0f} ms "
          f"(target p95 <= {TARGET_P95_MS} ms: {'PASS' if p95 <= TARGET_P95_MS else 'MISS'})")
    return 0 if p95 <= TARGET_P95_MS else 1


if __name__ == "__main__":
    sys.exit(main())
