"""opeva-spool benchmark: one command, a table of figure vs target, and a JSON file.

    python bench/run.py                      # full run (~4-6 min on 2 cores): 0 / 10k / 100k jobs
    python bench/run.py --quick              # reduced run (~1 min): 0 / 10k jobs, fewer requests
    python bench/run.py --out bench/results/latest.json   # where the JSON goes (this is the default)
    python bench/run.py --profile            # also py-spy the server during each phase (needs py-spy);
                                         # read them with bench/profile_summary.py
    python bench/run.py --streams-only       # only figure 7 (~30 s; with --quick ~15 s)

What it does, all on this machine (docs/benchmarks.md has the details and the last results):
- starts the real server, ``python -m opeva_spool.cli serve``, as a subprocess on 127.0.0.1 with a
  fresh shared root under /tmp and ``OPEVA_HOSTS=local,benchhost`` (the embedded ``local`` worker
  runs; nothing works for ``benchhost``, so jobs sent there stay queued);
- seeds 10k / 100k jobs straight onto disk before the server starts (bench/seed.py);
- measures with real HTTP from separate client processes, each with one keep-alive
  ``http.client`` connection (multiprocessing for 8 clients):
  1. POST /run-simulation latency and jobs/s, 1 and 8 clients, at 0 / 10k / 100k jobs;
  2. submit -> claimed / running on the embedded worker (``command: "true"``, target ``local``,
     inotify observer): clock from the POST's 2xx until ``jobs/<id>/attempts/1.json`` exists
     (claimed) and until it says running or a terminal state (running), polled by stat/read
     every 0.5 ms on the client side;
  3. GET /status/{id} and GET /jobs?limit=100 at the largest tree;
  4. claims/s with 4 processes racing ``Spool.claim`` over one spool (4 host names), with a
     double-claim audit; a check that a second agent for one host name is refused
     (``agent.HostPresence``), and, recorded only, what two claimers sharing a name would do;
  5. server VmRSS at the largest tree;
  6. GET /health while 8 clients stream submissions;
  7. GET /health every 10 ms, idle and while 200 clients follow a running job's log
     (``/logs/<id>?follow=1``; the job logs a line every 0.5 s), from 10 loopback addresses
     (20 each, within the default ``max_streams_per_client``).
Nothing here changes the package; bench/results/ is git-ignored.
"""

import argparse
import http.client
import json
import multiprocessing
import os
import platform
import random
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

import seed as seeding  # noqa: E402

from opeva_spool import agent as agent_module  # noqa: E402
from opeva_spool import fsio  # noqa: E402
from opeva_spool.spool import Entry, Spool  # noqa: E402

SUBMIT_BODY = {"command": "true", "target_host": seeding.SEED_HOST, "job_name": "bench-submit",
               "submitted_by": "bench"}
HEADERS = {"Content-Type": "application/json"}
FULL = dict(sizes=(0, 10_000, 100_000), submit_one=1000, submit_each=250, to_running=30, status=1000,
            pages=200, claims=20_000, health=400, health_submit_each=300, follow_seconds=10)
QUICK = dict(sizes=(0, 10_000), submit_one=300, submit_each=80, to_running=10, status=300,
             pages=60, claims=4_000, health=150, health_submit_each=120, follow_seconds=5)
FOLLOWERS = 200
FOLLOWER_ADDRESSES = 10  # 127.0.0.1 .. 127.0.0.10: all of 127.0.0.0/8 is this machine
# The followed job logs a line every half second, so every stream carries data.
TICKING_JOB = [sys.executable, "-c", "import time\nwhile True:\n    print('tick', flush=True)\n    time.sleep(0.5)"]


# ----- small helpers -----------------------------------------------------------------------

def pct(values, q):
    """The q-th percentile (0-100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def save_figures(path, figures):
    """Write a benchmark's raw figures as JSON to ``path``, making its folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(figures, handle, indent=2)


def request(url, body=None, timeout=60):
    """GET (or POST ``body`` as JSON) and the answer's JSON."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=HEADERS)
    with urllib.request.urlopen(req, timeout=timeout) as answer:
        return json.loads(answer.read())


def start_plain_server(repo, root, port, env=None, timeout=30):
    """``opeva-spool serve`` from ``repo`` on ``root``, configured by the environment only (plus ``env``),
    returned once /health answers."""
    environment = {**os.environ, "PYTHONPATH": repo, "OPEVA_SHARED_ROOT": root,
                   "OPEVA_LOCK_DIR": os.path.join(root, "locks"), "OPEVA_PORT": str(port), "OPEVA_BIND": "127.0.0.1",
                   **(env or {})}
    environment.pop("OPEVA_CONFIG", None)
    server = subprocess.Popen([sys.executable, "-m", "opeva_spool.cli", "serve", "--log-level", "WARNING"],
                              env=environment, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            request(f"http://127.0.0.1:{port}/health")
            return server
        except OSError:
            time.sleep(0.05)
    server.kill()
    raise SystemExit(f"the server did not answer /health within {timeout} s")


def end_process(proc, timeout=10):
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def summary_ms(seconds):
    ms = [s * 1000.0 for s in seconds]
    return {"n": len(ms), "p50_ms": pct(ms, 50), "p95_ms": pct(ms, 95), "p99_ms": pct(ms, 99),
            "max_ms": max(ms) if ms else None, "mean_ms": sum(ms) / len(ms) if ms else None}


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Client:
    """One keep-alive HTTP/1.1 connection; every response is read in full so it can be reused."""

    def __init__(self, port):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def request(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        self.conn.request(method, path, body=data, headers=HEADERS if data is not None else {})
        response = self.conn.getresponse()
        payload = response.read()
        return response.status, payload, response

    def close(self):
        self.conn.close()


def machine_facts(temp_root):
    def run(*argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return ""

    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    fstype = run("df", "--output=fstype", temp_root).splitlines()[-1:] or [""]
    mem_kb = 0
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            mem_kb = int(handle.readline().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return {"nproc": os.cpu_count(), "loadavg": os.getloadavg(), "cpu_model": cpu, "kernel": platform.release(),
            "python": platform.python_version(), "temp_dir": temp_root, "temp_fs_type": fstype[0].strip(),
            "mem_total_mb": mem_kb // 1024, "platform": platform.platform()}


def cpu_seconds(pid):
    """(user, system) CPU seconds a process and its reaped children have used, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def vm_status(pid):
    """VmRSS and VmHWM of a process, in MB."""
    out = {}
    with open(f"/proc/{pid}/status", encoding="utf-8") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0]) / 1024.0
    return out


class Spy:
    """py-spy recordings (collapsed stacks, idle included) of one process into ``directory``; nothing when
    ``directory`` is empty (profiling off). ``stop`` ends a recording; ``seconds + slack`` is only its backstop."""

    def __init__(self, directory, pid, slack=0):
        self.directory, self.pid, self.slack, self.proc = directory, pid, slack, None

    def start(self, name, seconds):
        if not self.directory:
            return
        out = os.path.join(self.directory, f"{name}.txt")
        argv = ["py-spy", "record", "-p", str(self.pid), "-d", str(int(seconds) + self.slack), "-r", "250",
                "--format", "raw", "--threads", "--idle", "-o", out, "--nonblocking"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # let it attach

    def stop(self):
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None


# ----- the server under test ---------------------------------------------------------------

class ServerProcess:
    def __init__(self, root, workdir, worker=True, profile=None):
        self.root, self.workdir = root, workdir
        self.port = free_port()
        self.log_path = os.path.join(workdir, f"server-{self.port}.log")
        env = dict(os.environ)
        env.update(OPEVA_HOSTS=f"local,{seeding.SEED_HOST}", OPEVA_OBSERVER="native",
                   OPEVA_LOCK_DIR=os.path.join(workdir, "locks"),
                   PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""), PYTHONDONTWRITEBYTECODE="1")
        argv = [sys.executable, "-m", "opeva_spool.cli", "serve", "--root", root, "--port", str(self.port),
                "--bind", "127.0.0.1"]
        if not worker:
            argv.append("--no-worker")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        started = time.perf_counter()
        self.proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.startup_s = self._wait_ready(started)
        self.spy = Spy(profile, self.proc.pid)

    def _wait_ready(self, started, timeout=300):
        while time.perf_counter() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log_path}")
            try:
                client = Client(self.port)
                status, _, _ = client.request("GET", "/health")
                client.close()
                if status == 200:
                    return time.perf_counter() - started
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server not ready after {timeout}s; see {self.log_path}")

    @property
    def pid(self):
        return self.proc.pid

    def stop(self):
        self.spy.stop()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


# ----- HTTP load: client processes ----------------------------------------------------------

def _client_proc(port, kind, count, ids, barrier, queue, seed_value):
    """Runs in its own process: ``count`` requests of ``kind`` on one keep-alive connection."""
    rng = random.Random(seed_value)
    client = Client(port)
    client.request("GET", "/health")  # connect and warm up outside the timed part
    lat, errors, created = [], 0, []
    barrier.wait()
    t_start = time.perf_counter()
    for i in range(count):
        t0 = time.perf_counter()
        if kind == "submit":
            status, payload, _ = client.request("POST", "/run-simulation", SUBMIT_BODY)
        elif kind == "status":
            status, payload, _ = client.request("GET", f"/status/{rng.choice(ids)}")
        elif kind == "jobs":
            status, payload, _ = client.request("GET", "/jobs?limit=100")
        else:
            status, payload, _ = client.request("GET", "/health")
        lat.append(time.perf_counter() - t0)
        if status >= 300:
            errors += 1
        elif kind == "submit" and i < 3:
            created.append(json.loads(payload)["job_id"])
    t_end = time.perf_counter()
    client.close()
    queue.put({"lat": lat, "errors": errors, "t_start": t_start, "t_end": t_end, "created": created})


def http_load(port, kind, clients, count_each, ids=(), during=None, server_pid=None):
    """Run ``clients`` processes; ``during(stop_event)`` runs in a thread while they do.

    With ``server_pid``, the server's CPU time over the run is recorded too (user and system
    ms per request): on 2 cores that tells CPU-bound (GIL) from waiting on the filesystem.
    """
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(clients + 1), ctx.Queue()
    procs = [ctx.Process(target=_client_proc, args=(port, kind, count_each, list(ids), barrier, queue, n))
             for n in range(clients)]
    for proc in procs:
        proc.start()
    barrier.wait()
    cpu_before = cpu_seconds(server_pid) if server_pid else None
    stop = threading.Event()
    side = None
    if during is not None:
        side_result = {}
        side = threading.Thread(target=lambda: side_result.update(during(stop)), daemon=True)
        side.start()
    results = [queue.get(timeout=600) for _ in procs]
    cpu_after = cpu_seconds(server_pid) if server_pid else None
    stop.set()
    for proc in procs:
        proc.join(30)
    if side is not None:
        side.join(60)
    lat = [x for r in results for x in r["lat"]]
    wall = max(r["t_end"] for r in results) - min(r["t_start"] for r in results)
    out = summary_ms(lat)
    out.update(clients=clients, requests=len(lat), errors=sum(r["errors"] for r in results), wall_s=wall,
               per_s=len(lat) / wall if wall else None,
               created_sample=[j for r in results for j in r["created"]][:5])
    if side is not None:
        out["during"] = side_result
    if cpu_before:
        user, system = (cpu_after[i] - cpu_before[i] for i in (0, 1))
        out["server_cpu"] = {"user_ms_per_req": 1000 * user / len(lat), "sys_ms_per_req": 1000 * system / len(lat),
                             "cores_busy": (user + system) / wall if wall else None}
    return out


def health_prober(port, interval=0.01, limit=100000):
    """A ``during`` callback: GET /health every ``interval`` s on one connection until stopped."""
    def probe(stop):
        client = Client(port)
        lat, errors = [], 0
        while not stop.is_set() and len(lat) < limit:
            t0 = time.perf_counter()
            status, _, _ = client.request("GET", "/health")
            lat.append(time.perf_counter() - t0)
            errors += status != 200
            time.sleep(interval)
        client.close()
        result = summary_ms(lat)
        result["errors"] = errors
        return result
    return probe


# ----- submit -> claimed / running on the embedded worker -----------------------------------

def submit_to_running(port, root, count, gap, timeout=10.0):
    """One job at a time; the next is sent ``gap`` s after the previous one ended."""
    client = Client(port)
    body = {"command": "true", "target_host": "local", "job_name": "bench-latency", "submitted_by": "bench"}
    to_claim, to_running, to_end, misses = [], [], [], 0
    spool = Spool(root)
    for _ in range(count):
        status, payload, _ = client.request("POST", "/run-simulation", body)
        t_ok = time.perf_counter()
        if status >= 300:
            misses += 1
            continue
        job_id = json.loads(payload)["job_id"]
        path = spool.folder(job_id).attempt_record(1)
        claimed = running = None
        while time.perf_counter() - t_ok < timeout:
            now = time.perf_counter()
            if claimed is None and os.path.exists(path):
                claimed = now
            if claimed is not None:
                record = fsio.read_json_object(path) or {}
                state = record.get("state")
                if running is None and state in ("running", "finished", "failed", "stopped"):
                    running = now
                if state in ("finished", "failed", "stopped"):
                    to_end.append(now - t_ok)
                    break
            time.sleep(0.0005)
        if claimed is None or running is None:
            misses += 1
            continue
        to_claim.append(claimed - t_ok)
        to_running.append(running - t_ok)
        time.sleep(gap)
    client.close()
    return {"claimed": summary_ms(to_claim), "running": summary_ms(to_running), "ended": summary_ms(to_end),
            "timeouts": misses, "jobs": count, "gap_s": gap,
            "method": "client stats/reads jobs/<id>/attempts/1.json every 0.5 ms"}


# ----- claims racing over one spool -----------------------------------------------------------

def _claimer(root, host, agent_id, barrier, queue):
    spool = Spool(root)
    won, attempts = [], 0
    barrier.wait()
    t_start = time.perf_counter()
    while True:
        names = sorted(fsio.listdir(spool.queued_dir))  # what Agent.claim_ready does: queue order
        if not names:
            break
        for name in names:
            entry = Entry.parse(name)
            if entry is None:
                continue
            attempts += 1
            if spool.claim(entry, host, agent_id):
                won.append(name)
    t_end = time.perf_counter()
    queue.put({"host": host, "agent_id": agent_id, "won": won, "attempts": attempts, "t_start": t_start,
               "t_end": t_end})


def race(root, hosts, claimer):
    """Run ``claimer(root, host, agent_id, barrier, queue)`` in one process per host, started together at a
    barrier; returns (what each put on the queue, wall seconds from the first start to the last end)."""
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(len(hosts)), ctx.Queue()
    procs = [ctx.Process(target=claimer, args=(root, host, f"{host}:bench:{n}", barrier, queue))
             for n, host in enumerate(hosts)]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join(30)
    return results, max(r["t_end"] for r in results) - min(r["t_start"] for r in results)


def claim_race(workdir, count, hosts):
    root = tempfile.mkdtemp(prefix="claims-", dir=workdir)
    spool = Spool(root)
    spool.ensure_layout()
    for host in set(hosts):
        fsio.makedirs(spool.running_dir(host))
    base = time.time_ns()
    entry_names = []
    for i in range(count):
        job_id = f"claim-{i:06d}"
        entry = Entry(0, base + i, "any", 1, job_id)
        os.makedirs(os.path.join(spool.folder(job_id).path, "attempts"))
        with open(os.path.join(spool.queued_dir, entry.name), "wb") as handle:
            handle.write(b'{"job_id": "%s"}\n' % job_id.encode())
        entry_names.append(entry.name)
    results, wall = race(root, hosts, _claimer)
    # Audit: every entry in exactly one running/ dir, won-sets disjoint and covering, records agree.
    where = {}
    for host in set(hosts):
        for name in fsio.listdir(spool.running_dir(host)):
            where.setdefault(name, []).append(host)
    winners = {}
    for r in results:
        for name in r["won"]:
            winners.setdefault(name, []).append(r["agent_id"])
    in_several_dirs = sum(1 for hs in where.values() if len(hs) > 1)
    won_twice = sum(1 for agents in winners.values() if len(agents) > 1)
    unclaimed = sum(1 for name in entry_names if name not in where)
    left_queued = len(fsio.listdir(spool.queued_dir))
    dir_mismatch = record_mismatch = 0
    for name in entry_names:
        agents = winners.get(name, [])
        hosts_of = where.get(name, [])
        if len(agents) != 1 or len(hosts_of) != 1:
            continue
        agent = agents[0]
        if agent.split(":", 1)[0] != hosts_of[0]:
            dir_mismatch += 1
        record = spool.read_attempt(Entry.parse(name)) or {}
        if record.get("agent_id") != agent:
            record_mismatch += 1
    shutil.rmtree(root, ignore_errors=True)
    per = {r["agent_id"]: {"won": len(r["won"]), "attempts": r["attempts"]} for r in results}
    return {"entries": count, "claimers": list(hosts), "wall_s": wall,
            "claims_per_s": count / wall if wall else None, "double_claims": in_several_dirs + won_twice,
            "in_several_running_dirs": in_several_dirs, "won_by_several": won_twice, "unclaimed": unclaimed,
            "left_queued": left_queued, "won_not_in_own_dir": dir_mismatch, "record_agent_mismatch": record_mismatch,
            "no_winner": sum(1 for name in entry_names if name not in winners), "per_claimer": per}


def _second_agent(lock_dir, root, host, queue):
    try:
        agent_module.HostPresence(lock_dir, root, host).acquire()
        queue.put("acquired")
    except Exception as exc:  # the package raises Conflict (409) for a second agent
        queue.put(f"refused: {type(exc).__name__}: {exc}")


def presence_check(workdir):
    """With agent.HostPresence (one agent per host name per machine): a second agent is refused."""
    lock_dir = os.path.join(workdir, "presence-locks")
    first = agent_module.HostPresence(lock_dir, workdir, "bench-s")
    first.acquire()
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_second_agent, args=(lock_dir, workdir, "bench-s", queue))
    proc.start()
    outcome = queue.get(timeout=30)
    proc.join(10)
    first.release()
    return {"second_agent": outcome, "refused": outcome.startswith("refused")}


# ----- /health beside many log followers ----------------------------------------------------

def _followers(port, job_id, count, opened, stop, queue):
    """Runs in its own process: ``count`` follow streams, read as data comes, until ``stop``."""
    selector = selectors.DefaultSelector()
    for n in range(count):
        source = f"127.0.0.{1 + n % FOLLOWER_ADDRESSES}"
        sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
        sock.sendall(f"GET /logs/{job_id}?follow=1 HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, bytearray())
    admitted, ended, received = 0, 0, 0
    while not stop.is_set():
        for key, _ in selector.select(0.1):
            data = key.fileobj.recv(65536)
            received += len(data)
            head = key.data
            if len(head) < 12:
                head += data[: 12 - len(head)]
                if len(head) >= 12:
                    admitted += head.startswith(b"HTTP/1.1 200")
                    if admitted == count:
                        opened.set()
            if not data:
                ended += 1
                selector.unregister(key.fileobj)
    for key in list(selector.get_map().values()):
        key.fileobj.close()
    queue.put({"streams": count, "admitted": admitted, "ended_early": ended, "bytes_received": received})


def _probe_health(port, seconds):
    """GET /health every 10 ms for ``seconds`` (health_prober on a thread of this process)."""
    stop, result = threading.Event(), {}
    prober = threading.Thread(target=lambda: result.update(health_prober(port)(stop)), daemon=True)
    prober.start()
    time.sleep(seconds)
    stop.set()
    prober.join(30)
    return result


def health_beside_followers(workdir, seconds):
    """/health latency on an idle server, then with FOLLOWERS clients following a running job's log
    (which logs a line every half second, so each of them is written to ``2 * seconds`` times)."""
    root = os.path.join(workdir, "root-streams")
    server = ServerProcess(root, workdir)
    ctx = multiprocessing.get_context("fork")
    try:
        client = Client(server.port)
        body = {"command": TICKING_JOB, "target_host": "local", "job_name": "bench-ticking"}
        job_id = json.loads(client.request("POST", "/run-simulation", body)[1])["job_id"]
        deadline = time.monotonic() + 30
        while json.loads(client.request("GET", f"/status/{job_id}")[1])["status"] != "running":
            if time.monotonic() > deadline:
                raise RuntimeError("the followed job did not start")
            time.sleep(0.05)
        client.close()
        idle = _probe_health(server.port, seconds)
        opened, stop, queue = ctx.Event(), ctx.Event(), ctx.Queue()
        followers = ctx.Process(target=_followers, args=(server.port, job_id, FOLLOWERS, opened, stop, queue))
        followers.start()
        if not opened.wait(60):
            stop.set()
            raise RuntimeError(f"not all {FOLLOWERS} follow streams were admitted: {queue.get(timeout=30)}")
        loaded = _probe_health(server.port, seconds)
        stop.set()
        streams = queue.get(timeout=60)
        followers.join(30)
    finally:
        server.stop()
    return {"idle": idle, "with_followers": loaded, "followers": streams}


# ----- the run -------------------------------------------------------------------------------

def check(value, op, target):
    if value is None:
        return False
    return value <= target if op == "<=" else value >= target


def build_figures(raw, sizes):
    figs = []

    def add(name, value, unit, op, target, note=""):
        figs.append({"figure": name, "value": value, "unit": unit, "op": op, "target": target,
                     "pass": check(value, op, target), "note": note})

    for n in sizes:
        s = raw["submit"][str(n)]
        add(f"submit p50, 1 client, {n:,} jobs", s["one"]["p50_ms"], "ms", "<=", 2.0,
            f"p95 {s['one']['p95_ms']:.2f} ms, {s['one']['per_s']:.0f} jobs/s")
        add(f"submit jobs/s, 8 clients, {n:,} jobs", s["eight"]["per_s"], "jobs/s", ">=", 1000,
            f"{1000.0 / s['eight']['per_s']:.2f} ms/job; latency p50 {s['eight']['p50_ms']:.1f} / "
            f"p95 {s['eight']['p95_ms']:.1f} ms")
    first, last = raw["submit"][str(sizes[0])], raw["submit"][str(sizes[-1])]
    add(f"submit flatness: p50 at {sizes[-1]:,} / p50 at {sizes[0]:,}",
        last["one"]["p50_ms"] / first["one"]["p50_ms"], "x", "<=", 1.25, "1 client; flat = within 25 %")
    for label, r in raw["to_running"].items():
        add(f"submit -> running p50 ({label})", r["running"]["p50_ms"], "ms", "<=", 100.0,
            f"p95 {r['running']['p95_ms']:.1f} ms; -> claimed p50 {r['claimed']['p50_ms']:.1f} / "
            f"p95 {r['claimed']['p95_ms']:.1f} ms; timeouts {r['timeouts']}")
    big = f"{sizes[-1]:,}"
    add(f"GET /status p50 at {big}", raw["status"]["p50_ms"], "ms", "<=", 1.0, f"p95 {raw['status']['p95_ms']:.2f} ms")
    add(f"GET /jobs?limit=100 p50 at {big}", raw["jobs_page"]["p50_ms"], "ms", "<=", 5.0,
        f"p95 {raw['jobs_page']['p95_ms']:.2f} ms")
    for key, label in (("distinct_hosts", "4 hosts"),):
        c = raw["claims"][key]
        add(f"claims/s, 4 claimers ({label})", c["claims_per_s"], "claims/s", ">=", 1000,
            f"{c['entries']:,} entries in {c['wall_s']:.1f} s")
        add(f"double claims ({label})", c["double_claims"], "", "<=", 0,
            f"unclaimed {c['unclaimed']}, record mismatches {c['record_agent_mismatch']}")
    unlocked = raw["claims"]["shared_host_unlocked"]
    add("2nd agents accepted for one host name (HostPresence)", 0 if raw["claims"]["presence"]["refused"] else 1,
        "", "<=", 0, f"why it is refused: 2 claimers sharing a host name would give "
        f"{unlocked['double_claims']} double claims, {unlocked['record_agent_mismatch']} record mismatches")
    add(f"server VmRSS at {big}", raw["rss"]["after_load"]["VmRSS"], "MB", "<=", 250.0,
        f"idle after start {raw['rss']['after_start']['VmRSS']:.0f} MB; peak (VmHWM) "
        f"{raw['rss']['after_load']['VmHWM']:.0f} MB")
    h = raw["health_under_load"]["during"]
    add("GET /health p50, 8 clients submitting", h["p50_ms"], "ms", "<=", 1.5,
        f"p95 {h['p95_ms']:.1f} ms; idle p50 {raw['health_idle']['p50_ms']:.2f} ms; '~1 ms' read as <= 1.5 ms")
    figs.extend(streams_figures(raw))
    return figs


def streams_figures(raw):
    f = raw["health_beside_followers"]
    loaded, idle = f["with_followers"], f["idle"]
    return [{"figure": f"GET /health p99, {FOLLOWERS} clients following a log", "value": loaded["p99_ms"],
             "unit": "ms", "op": "<=", "target": 10.0, "pass": check(loaded["p99_ms"], "<=", 10.0),
             "note": f"p50 {loaded['p50_ms']:.2f} ms; idle p50 / p99 {idle['p50_ms']:.2f} / {idle['p99_ms']:.2f} ms; "
                     f"{f['followers']['admitted']} streams admitted, {f['followers']['ended_early']} ended early"}]


def fmt(value, unit):
    if value is None:
        return "n/a"
    if unit in ("jobs/s", "claims/s"):
        return f"{value:,.0f} {unit}"
    if unit == "":
        return f"{value:g}"
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:.2f} {unit}" if value < 100 else f"{value:.0f} {unit}"


def table(figs):
    rows = [("figure", "measured", "target", "", "notes")]
    for f in figs:
        target = f"{f['op']} {fmt(f['target'], f['unit'])}"
        rows.append((f["figure"], fmt(f["value"], f["unit"]), target, "PASS" if f["pass"] else "MISS", f["note"]))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for n, r in enumerate(rows):
        lines.append("  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4])
        if n == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 5)
    return "\n".join(lines)


def _count_in(path, text):
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return sum(text in line for line in handle)
    except OSError:
        return None


def _git_state():
    """The commit measured and whether the work tree had changes (read-only git calls)."""
    def git(*argv):
        try:
            return subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return ""
    return {"commit": git("rev-parse", "HEAD"), "dirty_files": git("status", "--porcelain", "--untracked-files=no")
            .splitlines()}


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="reduced run: 0 / 10k jobs, fewer requests (< 2 min)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "latest.json"), help="JSON output path")
    parser.add_argument("--profile", action="store_true", help="record py-spy profiles of the server per phase")
    parser.add_argument("--keep", action="store_true", help="keep the temp shared roots")
    parser.add_argument("--streams-only", action="store_true", help="only /health beside log followers (~30 s)")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    sizes = cfg["sizes"]
    workdir = tempfile.mkdtemp(prefix="opeva-bench-", dir="/tmp")
    if args.streams_only:
        try:
            raw = {"health_beside_followers": health_beside_followers(workdir, cfg["follow_seconds"])}
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        figs = streams_figures(raw)
        print(table(figs))
        print(json.dumps(raw["health_beside_followers"]["followers"]))
        return 0 if all(f["pass"] for f in figs) else 1
    profile_dir = None
    if args.profile:
        if shutil.which("py-spy") is None:
            sys.exit("--profile needs py-spy (pip install py-spy)")
        profile_dir = os.path.join(os.path.dirname(os.path.abspath(args.out)), "profiles")
        os.makedirs(profile_dir, exist_ok=True)
    began = time.perf_counter()
    load_start = os.getloadavg()
    raw = {"config": dict(cfg, quick=args.quick), "submit": {}, "to_running": {}, "seed": {}, "startup_s": {}}
    log(f"workdir {workdir}; sizes {sizes}")
    try:
        for n in sizes:
            root = os.path.join(workdir, f"root-{n}")
            seeded = seeding.seed(root, n)
            raw["seed"][str(n)] = round(seeded["seconds"], 2)
            log(f"seeded {n:,} jobs in {seeded['seconds']:.1f}s; starting the server")
            server = ServerProcess(root, workdir, profile=profile_dir)
            raw["startup_s"][str(n)] = round(server.startup_s, 3)
            log(f"server pid {server.pid} ready in {server.startup_s:.2f}s")
            try:
                point = {}
                server.spy.start(f"submit-1client-{n}", 60)
                point["one"] = http_load(server.port, "submit", 1, cfg["submit_one"], server_pid=server.pid)
                server.spy.stop()
                server.spy.start(f"submit-8clients-{n}", 60)
                point["eight"] = http_load(server.port, "submit", 8, cfg["submit_each"], server_pid=server.pid)
                server.spy.stop()
                raw["submit"][str(n)] = point
                log(f"submit at {n:,}: 1 client p50 {point['one']['p50_ms']:.2f} ms, "
                    f"8 clients {point['eight']['per_s']:.0f} jobs/s")
                if n == sizes[0] or n == sizes[-1]:
                    # Idle queue: the next job comes 0.7 s after the last ended (nothing left in the
                    # watcher's pipeline). Back-to-back: 20 ms after, as on a busy queue.
                    for mode, gap in (("idle queue", 0.7), ("back-to-back", 0.02)):
                        label = f"{n:,} jobs, {mode}"
                        server.spy.start(f"to-running-{n}-{mode.replace(' ', '-')}", 60)
                        raw["to_running"][label] = submit_to_running(server.port, root, cfg["to_running"], gap)
                        server.spy.stop()
                        log(f"submit -> running at {label}: p50 {raw['to_running'][label]['running']['p50_ms']:.1f} ms")
                if n == sizes[-1]:
                    raw["rss"] = {"after_start": vm_status(server.pid)}
                    ids = [job_id for job_id, _, _ in seeded["jobs"]] or ["missing"]
                    raw["health_idle"] = http_load(server.port, "health", 1, 200, server_pid=server.pid)
                    server.spy.start(f"status-{n}", 60)
                    raw["status"] = http_load(server.port, "status", 1, cfg["status"], ids=ids, server_pid=server.pid)
                    server.spy.stop()
                    server.spy.start(f"jobs-page-{n}", 60)
                    raw["jobs_page"] = http_load(server.port, "jobs", 1, cfg["pages"], server_pid=server.pid)
                    server.spy.stop()
                    log(f"status p50 {raw['status']['p50_ms']:.2f} ms, /jobs p50 {raw['jobs_page']['p50_ms']:.2f} ms")
                    server.spy.start(f"health-under-load-{n}", 60)
                    raw["health_under_load"] = http_load(server.port, "submit", 8, cfg["health_submit_each"],
                                                         during=health_prober(server.port), server_pid=server.pid)
                    server.spy.stop()
                    log(f"/health under load p50 {raw['health_under_load']['during']['p50_ms']:.2f} ms")
                    raw["rss"]["after_load"] = vm_status(server.pid)
            finally:
                server.stop()
                raw.setdefault("waitress_queue_warnings", {})[str(n)] = _count_in(server.log_path, "Task queue depth")
            if not args.keep:
                # Deleting 100k job folders takes minutes: move the tree aside now, remove it at the end.
                os.rename(root, os.path.join(workdir, f"trash-{n}"))
        log("claim races")
        raw["claims"] = {
            "distinct_hosts": claim_race(workdir, cfg["claims"], ["bench-a", "bench-b", "bench-c", "bench-d"]),
            # One agent per host name per machine (HostPresence): check a second one is refused,
            # and record (not judge) what two claimers sharing a host name would do without it.
            "presence": presence_check(workdir),
            "shared_host_unlocked": claim_race(workdir, cfg["claims"], ["bench-s", "bench-s", "bench-b", "bench-c"]),
        }
        log(f"/health beside {FOLLOWERS} log followers")
        raw["health_beside_followers"] = health_beside_followers(workdir, cfg["follow_seconds"])
    except BaseException:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    figs = build_figures(raw, sizes)
    out = {"git": _git_state(), "loadavg_at_start": load_start, "loadavg_at_end": os.getloadavg(),
           "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seconds": time.perf_counter() - began,
           "quick": args.quick, "machine": machine_facts(tempfile.gettempdir()), "figures": figs, "raw": raw}
    save_figures(args.out, out)
    m = out["machine"]
    print()
    print(f"opeva-spool benchmark ({'quick' if args.quick else 'full'}), {m['nproc']} x {m['cpu_model']}, "
          f"kernel {m['kernel']}, Python {m['python']}, {m['temp_fs_type']} temp dir, {out['seconds']:.0f} s, "
          f"load average {load_start[0]:.1f} at start / {out['loadavg_at_end'][0]:.1f} at end "
          f"(commit {out['git']['commit'][:7]})")
    print(table(figs))
    print(f"\nJSON: {args.out}")
    if not args.keep:
        log(f"removing {workdir}")
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(f["pass"] for f in figs) else 1


if __name__ == "__main__":
    sys.exit(main())
