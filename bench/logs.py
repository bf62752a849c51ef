"""A 1 GB job log, tailed, read whole and followed: the server's RSS stays flat; write -> client p50 <= 200 ms.

    python bench/logs.py                 # 1 GB log, 100 followed lines (~1 min)
    python bench/logs.py --mb 200        # quicker
    python bench/logs.py --repo /tree    # the server runs that tree (e.g. an older export, for a ratio)

All on this machine: the real server (``python -m opeva_spool.cli serve``) as a subprocess on 127.0.0.1 with a
fresh shared root under /tmp and its embedded ``local`` worker (process runtime, stdout straight into the
job's log). The job writes ``--mb`` MiB of 100-byte lines, then waits for a go file. Meanwhile this
script asks ``GET /logs/<id>?tail=N`` (N = 10, 1000, 100000; each 5 times), reads the whole log
(``GET /logs/<id>``) three times, then follows it (``?follow=1&tail=10``) and creates the go file: the job then
prints ``--lines`` lines carrying ``time.time()`` at random gaps of 20-400 ms (random so that the writes
do not fall in step with the server's polling) and ends, which ends the follow. Latency = arrival - stamp
(one clock). The server's VmRSS is sampled every 20 ms throughout: before, after and peak are printed.
Raw figures go to bench/results/logs.json.
"""

import argparse
import http.client
import os
import shutil
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from datasets import proc_status_mb  # noqa: E402
from run import end_process, free_port, pct, request, save_figures, start_plain_server, summary_ms  # noqa: E402

TARGET_P50_MS = 200.0
# "Flat": over the whole run (tails, three whole reads of the log, the follow) the server may grow by at most
# this much. Some growth is malloc warming its arenas and does not recur; a server that kept a share of what
# it served grows with every read (this project's did, 20-70 MiB per GiB read, before logs.py sent files whole).
FLAT_RSS_MARGIN_MB = 64.0
WHOLE_READS = 3
TAILS = (10, 1000, 100_000)
TAIL_REPEATS = 5
READ_CHUNK = 1 << 20
JOB = """\
import os, random, sys, time
block = ("x" * 99 + "\\n") * 10486  # 1 MiB of 100-byte lines
for _ in range({mb}):
    sys.stdout.write(block)
print("filled", flush=True)
while not os.path.exists({go!r}):
    time.sleep(0.05)
rng = random.Random(7)
for i in range({lines}):
    time.sleep(rng.uniform(0.02, 0.4))
    print(f"line {{i}} {{time.time():.6f}}", flush=True)
"""


class RssSampler(threading.Thread):
    """The server's VmRSS every ``interval`` seconds until stopped."""

    def __init__(self, pid, interval=0.02):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples = []
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            self.samples.append(proc_status_mb(self.pid, "VmRSS"))
            time.sleep(self.interval)

    def stop(self):
        self.stopping.set()
        self.join()
        return max(self.samples)




def get(port, path):
    """(seconds, bytes) of one GET read to its end in 1 MiB reads."""
    began = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("GET", path)
    answer = conn.getresponse()
    if answer.status != 200:
        raise SystemExit(f"GET {path}: {answer.status} {answer.read()[:200]!r}")
    size = 0
    while chunk := answer.read(READ_CHUNK):
        size += len(chunk)
    conn.close()
    return time.monotonic() - began, size


def follow(port, job_id, go, latencies):
    """Follow the log (its last 10 lines first), create the go file, stamp each job line as it arrives."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("GET", f"/logs/{job_id}?follow=1&tail=10")
    answer = conn.getresponse()
    open(go, "w").close()
    while line := answer.readline():
        arrived = time.time()
        if line.startswith(b"line "):
            latencies.append(arrived - float(line.split()[2]))
    conn.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=1024, help="MiB of log before following (default: %(default)s)")
    parser.add_argument("--lines", type=int, default=100, help="lines written while followed (default: %(default)s)")
    parser.add_argument("--repo", default=REPO, help="the tree the server runs (default: this one)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "logs.json"))
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="opeva-bench-logs-")
    server = None
    try:
        port = free_port()
        server = start_plain_server(os.path.abspath(args.repo), os.path.join(work, "root"), port)
        go = os.path.join(work, "go")
        job = request(f"http://127.0.0.1:{port}/run-simulation", {
            "command": [sys.executable, "-c", JOB.format(mb=args.mb, go=go, lines=args.lines)],
            "target_host": "local"})
        job_id = job["job_id"]
        deadline = time.monotonic() + 600
        while True:  # until the job has written its log and waits for the go file: its last line is "filled"
            if get(port, f"/logs/{job_id}?tail=1")[1] == len(b"filled\n"):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"the job did not write its {args.mb} MiB log within 10 minutes")
            time.sleep(0.2)
        rss_before = proc_status_mb(server.pid, "VmRSS")
        sampler = RssSampler(server.pid)
        sampler.start()
        tails = {}
        for lines in TAILS:
            tails[lines] = [get(port, f"/logs/{job_id}?tail={lines}") for _ in range(TAIL_REPEATS)]
        rss_after_tails = proc_status_mb(server.pid, "VmRSS")
        whole_seconds, whole_bytes, rss_after_whole = [], 0, []
        for _ in range(WHOLE_READS):
            seconds, whole_bytes = get(port, f"/logs/{job_id}")
            whole_seconds.append(seconds)
            rss_after_whole.append(proc_status_mb(server.pid, "VmRSS"))
        whole_seconds = min(whole_seconds)
        latencies = []
        follow(port, job_id, go, latencies)
        peak = sampler.stop()
        rss_after = proc_status_mb(server.pid, "VmRSS")
        follow_ms = summary_ms(latencies)
        figures = {
            "log_mib": args.mb, "repo": args.repo, "whole_log_bytes": whole_bytes, "whole_read_seconds": whole_seconds,
            "whole_read_mb_per_s": whole_bytes / 1e6 / whole_seconds,
            "tail_ms_p50": {n: pct([s * 1000 for s, _ in runs], 50) for n, runs in tails.items()},
            "tail_bytes": {n: runs[0][1] for n, runs in tails.items()},
            "server_rss_before_mb": rss_before, "server_rss_after_tails_mb": rss_after_tails,
            "server_rss_after_each_whole_read_mb": rss_after_whole,
            "server_rss_after_mb": rss_after,
            "server_rss_peak_mb": peak, "server_vmhwm_mb": proc_status_mb(server.pid, "VmHWM"),
            "follow_latency": follow_ms, "lines_received": len(latencies),
        }
        flat = peak - rss_before <= FLAT_RSS_MARGIN_MB
        print(f"log: {whole_bytes / 2**20:.0f} MiB; whole read {whole_seconds:.1f} s (best of {WHOLE_READS}) "
              f"({figures['whole_read_mb_per_s']:.0f} MB/s)")
        for n, ms in figures["tail_ms_p50"].items():
            print(f"tail={n:<7} p50 {ms:8.1f} ms  ({figures['tail_bytes'][n]} bytes)")
        print(f"server RSS        before {rss_before:.1f} MiB, after tails {rss_after_tails:.1f}, after each whole "
              f"read {', '.join(f'{r:.1f}' for r in rss_after_whole)}, after follow {rss_after:.1f}, peak {peak:.1f}  "
              f"target flat (peak <= before + {FLAT_RSS_MARGIN_MB:.0f} MiB) {'ok' if flat else 'MISS'}")
        p50 = follow_ms["p50_ms"]
        print(f"write -> client   p50 {p50:.1f} ms, p95 {follow_ms['p95_ms']:.1f} ms, max {follow_ms['max_ms']:.1f} ms "
              f"({len(latencies)}/{args.lines} lines)   target p50 <= {TARGET_P50_MS:.0f} ms "
              f"{'ok' if p50 is not None and p50 <= TARGET_P50_MS else 'MISS'}")
        save_figures(args.out, figures)
    finally:
        if server is not None:
            end_process(server)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
