"""Event stream figures (issue 8, section 5): SSE transition latency, and idle CPU beside open streams.

    python bench/events.py                 # ~30 s
    python bench/events.py --quick         # ~15 s
    python bench/events.py --clients 200   # idle CPU beside 200 streams instead of 50

What it does, against the real server (``python -m opeva_spool.cli serve``, bench/run.py's ServerProcess:
inotify observer, embedded ``local`` worker, hosts ``local,benchhost``) on a fresh shared root:
1. transition latency: an SSE client (a thread of this process, one ``/events`` connection) is open;
   for each of N jobs submitted to ``benchhost`` (for which nothing works), this process plays the
   agent and renames the entry on the share itself, queued/ -> benchhost/running/ (a claim) and later
   running/ -> done/finished/ (an ending). The clock runs from just before each rename to the moment
   the client has read the matching event (``dispatched``, then ``finished``): the same clock, no
   HTTP polling;
2. idle CPU: the server's CPU time (/proc/<pid>/stat, user + system) over a quiet window with no
   stream open, then with 50 streams open (raw sockets, each having read its response head).
Targets (docs/events.md): transition p95 <= 100 ms; CPU with 50 streams within 1 % of a core of CPU
with none ("flat").
"""

import argparse
import json
import os
import socket
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import run as bench  # noqa: E402 - bench/run.py: the server process, percentiles, CPU time

from opeva_spool.spool import QUEUED, RUNNING, Location, Spool  # noqa: E402

HOST = "benchhost"
LATENCY_TARGET_MS = 100.0
FLAT_CPU_PERCENT = 1.0  # "flat": with streams open, within this much of one core of the idle figure
EVENT_TIMEOUT = 10.0


class EventReader:
    """One /events stream read in a thread; ``wait_for(job_id, to)`` returns when that event was read."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.sendall(b"GET /events HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n")
        self.seen = {}  # (job_id, to) -> monotonic time read
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        buffer = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            now = time.monotonic()
            buffer += chunk
            # Chunked transfer framing lines never start with "data: ", so reading data lines suffices.
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.startswith(b"data: "):
                    event = json.loads(line[6:])
                    if event.get("type") == "job":
                        with self.cond:
                            self.seen[(event["job_id"], event["to"])] = now
                            self.cond.notify_all()

    def wait_for(self, job_id, to):
        deadline = time.monotonic() + EVENT_TIMEOUT
        with self.cond:
            while (job_id, to) not in self.seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {to} event for {job_id}")
                self.cond.wait(left)
            return self.seen[(job_id, to)]

    def close(self):
        self.sock.close()


def transition_latency(server, root, count):
    spool = Spool(root)
    reader = EventReader(server.port)
    client = bench.Client(server.port)
    claimed, ended = [], []
    try:
        for _ in range(count):
            status, payload, _ = client.request("POST", "/run-simulation", {"command": "true", "target_host": HOST})
            assert status == 200, payload
            job_id = json.loads(payload)["job_id"]
            reader.wait_for(job_id, "queued")
            entry = next(entry for location, entry in spool.scan(include_done=False)
                         if entry.job_id == job_id and location == Location(QUEUED))
            time.sleep(0.05)  # apart from the submission's own events
            started = time.monotonic()
            os.rename(spool.entry_path(Location(QUEUED), entry), spool.entry_path(Location(RUNNING, HOST), entry))
            claimed.append(reader.wait_for(job_id, "dispatched") - started)
            time.sleep(0.05)
            started = time.monotonic()
            os.rename(spool.entry_path(Location(RUNNING, HOST), entry),
                      os.path.join(spool.done_path("finished"), entry.name))
            ended.append(reader.wait_for(job_id, "finished") - started)
    finally:
        reader.close()
        client.close()
    return {"claim": bench.summary_ms(claimed), "end": bench.summary_ms(ended),
            "all": bench.summary_ms(claimed + ended)}


def open_streams(port, count):
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(b"GET /events HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n")
        sockets.append(sock)
    for sock in sockets:
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
    return sockets


def cpu_percent(pid, seconds):
    before = sum(bench.cpu_seconds(pid))
    time.sleep(seconds)
    return 100.0 * (sum(bench.cpu_seconds(pid)) - before) / seconds


def idle_cpu(server, clients, seconds):
    time.sleep(2.0)  # past start-up work
    without = cpu_percent(server.pid, seconds)
    sockets = open_streams(server.port, clients)
    try:
        time.sleep(1.0)
        beside = cpu_percent(server.pid, seconds)
    finally:
        for sock in sockets:
            sock.close()
    return {"streams": clients, "seconds": seconds, "cpu_percent_no_streams": without,
            "cpu_percent_with_streams": beside}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "events.json"))
    args = parser.parse_args(argv)
    count, seconds = (20, 5.0) if args.quick else (60, 10.0)
    workdir = tempfile.mkdtemp(prefix="opeva-bench-events-")
    root = os.path.join(workdir, "root")
    # As a host whose agent ran before: the server watches its running/ from the start.
    os.makedirs(Spool(root).running_dir(HOST))
    server = bench.ServerProcess(root, workdir)
    try:
        latency = transition_latency(server, root, count)
        cpu = idle_cpu(server, args.clients, seconds)
    finally:
        server.stop()
    p95 = latency["all"]["p95_ms"]
    flat = cpu["cpu_percent_with_streams"] - cpu["cpu_percent_no_streams"] <= FLAT_CPU_PERCENT
    rows = [
        ("SSE transition latency, claim (rename -> event read) p50/p95",
         f"{latency['claim']['p50_ms']:.1f} / {latency['claim']['p95_ms']:.1f} ms", None),
        ("SSE transition latency, end (rename -> event read) p50/p95",
         f"{latency['end']['p50_ms']:.1f} / {latency['end']['p95_ms']:.1f} ms", None),
        (f"SSE transition latency, all {latency['all']['n']} moves p50/p95",
         f"{latency['all']['p50_ms']:.1f} / {p95:.1f} ms",
         ("<= 100 ms", p95 <= LATENCY_TARGET_MS)),
        (f"idle server CPU, 0 vs {cpu['streams']} streams ({seconds:.0f} s each)",
         f"{cpu['cpu_percent_no_streams']:.2f} % vs {cpu['cpu_percent_with_streams']:.2f} %",
         (f"flat (+<= {FLAT_CPU_PERCENT:g} %)", flat)),
    ]
    for name, value, target in rows:
        verdict = "" if target is None else f"{target[0]:<16} {'PASS' if target[1] else 'MISS'}"
        print(f"{name:<64} {value:>22}  {verdict}")
    bench.save_figures(args.out, {"latency": latency, "idle_cpu": cpu, "machine": bench.machine_facts(workdir)})
    return 0 if p95 <= LATENCY_TARGET_MS and flat else 1


if __name__ == "__main__":
    sys.exit(main())
