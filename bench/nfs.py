"""opeva-spool in NFS mode: an agent polling the share through its own sshfs mount, with a long history.

    python bench/nfs.py                    # 1k, then 100k ended jobs in the tree (~8 min)
    python bench/nfs.py --sizes 1000 10000 # other tree sizes
    python bench/nfs.py --profile          # py-spy the agent during each idle window

Needs what tests/sshfs_support.py needs (root, network namespaces, sshd, sshfs, /dev/fuse). One
emulated host, ``nfs-a``, in a network namespace of its own mounts the shared root with sshfs (every
file operation an SFTP round trip, caches off, as the sshfs tests run it); the agent runs there with
``observer = polling`` and the default scan interval, so watchdog's PollingObserver lists queued/
every POLL_SECONDS (``watching.POLLING_OBSERVER_SECONDS``). The server runs here on the real directory.
The tree holds only ended jobs (bench/seed.py's ENDED_MIX): what grows with history.

Per tree size, with the agent and server restarted on it:
1. idle: the agent's CPU time (user + system, /proc) over ``--idle-seconds`` divided by the polls in
   that time; the same for its sshfs process (the SFTP client: a proxy for round trips);
2. submit -> claimed: POST /run-simulation for nfs-a (``command: true``) until the job's attempt record
   exists (stat'd here, on the real directory, every 2 ms); submits are spaced by a random 0-1.5 s so
   they land at every phase of the poll.
Targets: claimed p50 <= POLL_SECONDS + 100 ms; CPU per poll flat from the smallest to the largest tree.
Raw figures: bench/results/nfs.json. The mount is always unmounted, the namespace and sshd removed.
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)

import run  # noqa: E402
import seed as seeding  # noqa: E402

from opeva_spool.watching import POLLING_OBSERVER_SECONDS  # noqa: E402
from tests import sshfs_support  # noqa: E402

HOST = "nfs-a"
POLL_SECONDS = POLLING_OBSERVER_SECONDS  # the agent's scan interval is the default (longer): the observer polls
CLAIM_MARGIN_MS = 100.0
FLAT_TOLERANCE = 1.25  # "flat": the largest tree's CPU per poll within 25 % of the smallest's
CLAIM_TIMEOUT_S = 30.0


def log(message):
    print(f"[nfs {time.strftime('%H:%M:%S')}] {message}", flush=True)


def env_for(root, local, **settings):
    env = dict(os.environ)
    env.pop("OPEVA_CONFIG", None)
    env.update(OPEVA_SHARED_ROOT=root, OPEVA_LOCK_DIR=os.path.join(local, "locks"), PYTHONPATH=REPO,
               PYTHONDONTWRITEBYTECODE="1")
    env.update({f"OPEVA_{key.upper()}": str(value) for key, value in settings.items()})
    return env


def stop(proc, timeout=20):
    if proc is not None:
        run.end_process(proc, timeout)


def start_server(root, work):
    port = run.free_port()
    env = env_for(root, work, port=port, bind="127.0.0.1", hosts=f"{HOST},{seeding.SEED_HOST}",
                  embedded_worker="false")
    with open(os.path.join(work, f"server-{port}.log"), "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "opeva_spool.cli", "serve"], env=env, cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited; see {work}/server-{port}.log")
        try:
            client = run.Client(port)
            if client.request("GET", "/health")[0] == 200:
                return proc, client
        except OSError:
            pass
        time.sleep(0.1)
    stop(proc)
    raise RuntimeError("the server did not answer /health")


def agent_online(client):
    status, payload, _ = client.request("GET", "/hosts")
    views = {view["host"]: view for view in json.loads(payload)["hosts"]} if status == 200 else {}
    return views.get(HOST, {}).get("state") == "online"


def wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def cpu(pid):
    return sum(run.cpu_seconds(pid))


def sshfs_pid(host):
    """The sshfs process of the mount (nsenter execs it, so the Popen's pid is sshfs itself)."""
    return host.sshfs.pid


def measure_size(hosts, root, work, size, args):
    host = hosts.hosts[HOST]
    server, client = start_server(root, work)
    agent = spy = None
    try:
        env = env_for(host.mount, host.local, host=HOST, observer="polling")
        agent = hosts.python(HOST, ["-m", "opeva_spool.cli", "agent"], env, os.path.join(host.local, "agent.log"),
                             cwd=REPO)
        wait(lambda: agent_online(client), 60, "the agent to be online")
        time.sleep(2 * POLL_SECONDS)  # past its start-up (recovery, first listing)
        if args.profile:
            spy = subprocess.Popen(["py-spy", "record", "-p", str(agent.pid), "-d", str(int(args.idle_seconds) + 5),
                                    "-r", "100", "--format", "raw", "--threads", "-o",
                                    os.path.join(args.profile_dir, f"agent-idle-{size}.txt"), "--nonblocking"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        agent_before, fuse_before, started = cpu(agent.pid), cpu(sshfs_pid(host)), time.monotonic()
        time.sleep(args.idle_seconds)
        elapsed = time.monotonic() - started
        polls = elapsed / POLL_SECONDS
        figures = {"ended_jobs": size, "idle_seconds": elapsed, "polls": polls,
                   "agent_cpu_ms_per_poll": 1000 * (cpu(agent.pid) - agent_before) / polls,
                   "sshfs_cpu_ms_per_poll": 1000 * (cpu(sshfs_pid(host)) - fuse_before) / polls}
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
            spy = None
        log(f"{size:,} ended: agent {figures['agent_cpu_ms_per_poll']:.2f} ms CPU per poll, sshfs "
            f"{figures['sshfs_cpu_ms_per_poll']:.2f} ms; submitting {args.submits}")
        figures["claimed"] = run.summary_ms(submit_to_claimed(client, root, args.submits))
        log(f"{size:,} ended: submit -> claimed p50 {figures['claimed']['p50_ms']:.0f} ms, "
            f"p95 {figures['claimed']['p95_ms']:.0f} ms")
        return figures
    finally:
        if spy is not None:
            spy.kill()
        stop(agent)
        stop(server)


def submit_to_claimed(client, root, count):
    rng = random.Random(11)
    out = []
    for _ in range(count):
        time.sleep(rng.uniform(0, 1.5 * POLL_SECONDS))
        body = {"command": "true", "target_host": HOST, "job_name": "nfs-bench", "submitted_by": "bench"}
        status, payload, _ = client.request("POST", "/run-simulation", body)
        answered = time.perf_counter()
        if status != 200:
            raise RuntimeError(f"submit answered {status}: {payload[:200]!r}")
        record = os.path.join(root, "jobs", json.loads(payload)["job_id"], "attempts", "1.json")
        while not os.path.exists(record):
            if time.perf_counter() - answered > CLAIM_TIMEOUT_S:
                raise RuntimeError(f"not claimed within {CLAIM_TIMEOUT_S}s: {record}")
            time.sleep(0.002)
        out.append(time.perf_counter() - answered)
    return out


def report(raw):
    sizes = raw["sizes"]
    print(f"\nopeva-spool NFS mode (sshfs, polling observer every {POLL_SECONDS:g} s)")
    print(f"{'figure':52} {'value':>10}   target")
    target_ms = 1000 * POLL_SECONDS + CLAIM_MARGIN_MS
    for point in sizes:
        p50 = point["claimed"]["p50_ms"]
        print(f"{'submit -> claimed p50, ' + format(point['ended_jobs'], ',') + ' ended':52} {p50:8.0f} ms  "
              f"<= {target_ms:.0f} ms  {'ok' if p50 <= target_ms else 'MISS'}")
    for point in sizes:
        print(f"{'agent CPU per poll, ' + format(point['ended_jobs'], ',') + ' ended':52} "
              f"{point['agent_cpu_ms_per_poll']:8.2f} ms  (sshfs {point['sshfs_cpu_ms_per_poll']:.2f} ms)")
    first, last = sizes[0]["agent_cpu_ms_per_poll"], sizes[-1]["agent_cpu_ms_per_poll"]
    ratio = last / first if first else float("inf")
    print(f"{'agent CPU per poll, largest / smallest tree':52} {ratio:8.2f} x   <= {FLAT_TOLERANCE:g} x (flat)  "
          f"{'ok' if ratio <= FLAT_TOLERANCE else 'MISS'}")
    print(f"  load average {raw['loadavg_before'][0]:.2f} before, {raw['loadavg_after'][0]:.2f} after "
          "(a shared machine: figures are noisy)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000], help="ended jobs, ascending")
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--submits", type=int, default=30)
    parser.add_argument("--profile", action="store_true", help="py-spy the agent while idle (into the workdir)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "nfs.json"))
    args = parser.parse_args()
    why = sshfs_support.missing_prerequisites()
    if why:
        sys.exit(f"nfs.py: {why}")
    work = tempfile.mkdtemp(prefix="opeva-nfs-")
    args.profile_dir = work
    root = os.path.join(work, "share")
    raw = {"sizes": [], "poll_seconds": POLL_SECONDS, "loadavg_before": os.getloadavg()}
    hosts = sshfs_support.SshfsHosts(os.path.join(work, "hosts"), root, (HOST,))
    try:
        seeded = 0
        for size in sorted(args.sizes):
            log(f"seeding {size - seeded:,} more ended jobs (to {size:,})")
            seeding.seed(root, size - seeded, mix=seeding.ENDED_MIX)
            seeded = size
            if not hosts.hosts:
                hosts.start()  # after the first seed: the share exists
            raw["sizes"].append(measure_size(hosts, root, work, size, args))
    finally:
        hosts.close()  # unmounts, removes the namespace, stops sshd
        raw["loadavg_after"] = os.getloadavg()
        if len(raw["sizes"]) == len(args.sizes):
            run.save_figures(args.out, raw)  # before deleting the share, which takes minutes at 100k
            report(raw)
            print(f"raw figures: {args.out}")
        if args.profile:
            log(f"profiles kept in {work}; the share is deleted")
            shutil.rmtree(root, ignore_errors=True)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
