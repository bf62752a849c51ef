"""A worker host cut off from the share: its job is dead before the job runs again elsewhere.

docs/guarantees.md, row "share unreachable from one host": the agent cannot renew its lease,
its jobs are stopped by the agent and the guards within lease + grace, and the server requeues
them after offline_after. Emulated with the sshfs hosts of tests/sshfs_support.py (its own
module-scoped cluster, separate from tests/test_agents_sshfs.py): node-a's link to the bridge
goes down while its job runs, so every operation on its mount blocks as on a hard NFS mount,
while nothing on node-a is killed or frozen by the test.

The job records its life on local disk (not on the share, which is cut): a line every 50 ms
with time.monotonic() (CLOCK_MONOTONIC is system-wide, so values from the hosts' namespaces
and from this test compare), and on SIGTERM the sender's pid, which tells whether the agent
or the attempt's guard (the job's parent) stopped it.
"""

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from .conftest import wait_for
from .processes import PROJECT_ROOT, spool_env, start_server, stop
from .sshfs_support import _descendants, new_hosts

pytestmark = pytest.mark.sshfs

HOSTS = ("node-a", "node-b")
OFFLINE_AFTER = 4.0  # lease 2 s, guard grace min(stop_grace, offline_after / 4) = 1 s
SETTINGS = dict(observer="polling", scan_interval=0.2, heartbeat_interval=0.3, offline_after=OFFLINE_AFTER,
                stop_grace=1.0, capacity=1)

# argv: [token]. Attempt 1 runs until stopped; later attempts end after 1 s.
JOB = r"""
import os, signal, time
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
attempt = os.environ["OPEVA_ATTEMPT"]
out = open(os.path.join(os.environ["LIFE_DIR"], "attempt-" + attempt), "a", buffering=1)
out.write("start %f %s\n" % (time.monotonic(), os.environ["OPEVA_HOST"]))
end = time.monotonic() + (120.0 if attempt == "1" else 1.0)
while time.monotonic() < end:
    out.write("alive %f\n" % time.monotonic())
    info = signal.sigtimedwait([signal.SIGTERM], 0.05)
    if info is not None:
        out.write("term %f %d %d\n" % (time.monotonic(), info.si_pid, os.getppid()))
        out.close()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)
out.write("end %f\n" % time.monotonic())
"""


def _netns_inode(netns):
    return os.stat(f"/run/netns/{netns}").st_ino


def _processes_in(net_inodes, needle=None):
    """{pid: cmdline} of the processes in one of these network namespaces (cmdline containing needle)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            inode = os.stat(f"/proc/{entry}/ns/net").st_ino
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if inode in net_inodes and (needle is None or needle in cmdline):
            found[int(entry)] = cmdline
    return found


def _task(pid):
    """(state, exiting) of a process, or None once it is gone. exiting: PF_EXITING, i.e. in the kernel's
    exit path: no user code runs any more (its memory is released; what is left may still wait there
    for a FUSE flush of a file on the hung mount, e.g. its log)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], bool(int(fields[6]) & 0x4)


def _wchan(pid):
    try:
        with open(f"/proc/{pid}/wchan", encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        return None


def _alive_as(pid, cmdline):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace") == cmdline
    except OSError:
        return False


def _leftovers(hosts, work, net_inodes, watched):
    """What of the emulation is still there after close(): namespaces, links, mounts, processes."""
    left = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    left += [f"netns {h.netns}" for h in hosts.hosts.values() if h.netns in netns]
    left += [f"link {name}" for name in [hosts.bridge, *(h.veth for h in hosts.hosts.values())]
             if f" {name}:" in links or f" {name}@" in links]
    with open("/proc/mounts", encoding="utf-8") as mounts:
        left += [f"mount {line.split()[1]}" for line in mounts if line.split()[1].startswith(str(work))]
    left += [f"process {pid} in a host namespace: {cmd}" for pid, cmd in _processes_in(net_inodes).items()]
    left += [f"process {pid}: {cmd}" for pid, cmd in watched.items() if _alive_as(pid, cmd)]
    return left


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    work, root, hosts = new_hosts(tmp_path_factory, "share-lost", HOSTS)
    cluster = Cluster(work, root, hosts)
    net_inodes, watched = set(), {}
    try:
        hosts.start()
        net_inodes = {_netns_inode(host.netns) for host in hosts.hosts.values()}
        cluster.server_proc, cluster.http = start_server(root, work, hosts=",".join(HOSTS),
                                                         embedded_worker="false", **SETTINGS)
        yield cluster
    finally:
        if "node-a" in hosts.hosts:  # the cable back, so that teardown does not wait on a hung mount
            subprocess.run(["ip", "link", "set", hosts.hosts["node-a"].veth, "up"], capture_output=True)
        for proc in cluster.agents.values():
            # An agent stuck in a call on a hung mount: SIGKILL ends FUSE waits.
            stop(proc, timeout=5)
        if cluster.server_proc is not None:
            stop(cluster.server_proc, timeout=10)
        if hosts.sshd is not None:  # sshd, sshfs, their children: all must be gone after close()
            for pid in [hosts.sshd.pid, *(host.sshfs.pid for host in hosts.hosts.values() if host.sshfs)]:
                for each in [pid, *_descendants(pid)]:
                    try:
                        with open(f"/proc/{each}/cmdline", "rb") as handle:
                            watched[each] = handle.read().replace(b"\0", b" ").decode(errors="replace")
                    except OSError:
                        watched.pop(each, None)
        closing = time.monotonic()
        hosts.close()
        print(f"teardown: close() took {time.monotonic() - closing:.2f}s")
        left = _leftovers(hosts, work, net_inodes, {p: c for p, c in watched.items() if c})
        assert left == [], f"left behind after close(): {left}"


class Cluster:
    def __init__(self, work, root, hosts):
        self.work, self.root, self.hosts = work, str(root), hosts
        self.server_proc, self.http, self.agents = None, None, {}
        self.life = work / "life"  # local disk, not the share
        self.life.mkdir()

    def start_agent(self, name):
        host = self.hosts.hosts[name]
        env = spool_env(host.mount, Path(host.local), host=name, **SETTINGS)
        self.agents[name] = self.hosts.python(name, ["-m", "opeva_spool.cli", "agent"], env,
                                              os.path.join(host.local, "agent.log"), cwd=PROJECT_ROOT)
        wait_for(lambda: self.host_view(name)["state"] == "online", timeout=10, message=f"{name} to be online")

    def host_view(self, name):
        views = self.http.get("/hosts").json()["hosts"]
        return next((view for view in views if view["host"] == name), {"state": None})

    def status(self, job_id):
        return self.http.get(f"/status/{job_id}").json()

    def link(self, name, up):
        """node-a's cable: its veth at the bridge, down or up (nothing on the host notices but the timeouts)."""
        subprocess.run(["ip", "link", "set", self.hosts.hosts[name].veth, "up" if up else "down"], check=True)

    def marks(self, attempt):
        try:
            with open(self.life / f"attempt-{attempt}", encoding="utf-8") as handle:
                return [line.split() for line in handle if line.endswith("\n")]
        except FileNotFoundError:
            return []


def test_host_cut_off_from_the_share_stops_its_job_before_another_host_runs_it(cluster):
    token = f"share-lost-{uuid.uuid4().hex[:8]}"
    node_a = cluster.hosts.hosts["node-a"]
    cluster.start_agent("node-a")
    response = cluster.http.post("/run-simulation", json={
        "command": [sys.executable, "-I", "-c", JOB, token], "target_host": "any", "max_retries": 1,
        "env": {"LIFE_DIR": str(cluster.life)}})
    assert response.status == 200, response.text
    job_id = response.json()["job_id"]
    wait_for(lambda: cluster.status(job_id)["status"] == "running" and cluster.marks(1), timeout=10,
             message="attempt 1 to run")
    assert cluster.status(job_id)["host"] == "node-a"
    cluster.start_agent("node-b")  # only now: node-a has claimed the job

    node_a_ns = {_netns_inode(node_a.netns)}
    attempt_1 = sorted(_processes_in(node_a_ns, token))  # its guard and the job
    assert len(attempt_1) == 2, f"attempt 1 is not running as guard + job in node-a's namespace: {attempt_1}"
    cluster.link("node-a", up=False)
    cut_at = time.monotonic()

    def attempt_2():
        status = cluster.status(job_id)
        return status if status["attempt"] == 2 and status["status"] in ("running", "finished") else None
    second = wait_for(attempt_2, timeout=OFFLINE_AFTER + 6, interval=0.05, message="attempt 2 to start")
    seen_at = time.monotonic()
    assert second["host"] == "node-b"
    wait_for(lambda: cluster.marks(2), timeout=5, message="attempt 2 to record its start")
    left_a = _processes_in(node_a_ns, token)
    tasks_a = {pid: _task(pid) for pid in attempt_1}
    waits_a = {pid: _wchan(pid) for pid in attempt_1}

    first, started = cluster.marks(1), cluster.marks(2)[0]
    last_alive = max(float(mark[1]) for mark in first)
    assert started[0] == "start" and started[2] == "node-b"
    assert last_alive < float(started[1]), "attempt 1 was still alive when attempt 2 started"
    assert last_alive - cut_at < OFFLINE_AFTER, "attempt 1 outlived the server's offline threshold"
    assert left_a == {}, f"attempt 1 still has processes on node-a: {left_a}"
    running = {pid: task for pid, task in tasks_a.items() if task and task[0] != "Z" and not task[1]}
    assert running == {}, f"attempt 1's processes still run on node-a: {running}"

    term = next((mark for mark in first if mark[0] == "term"), None)
    agent_pid = cluster.agents["node-a"].pid
    if term is None:
        stopper = "SIGKILL without SIGTERM"
    else:
        sender = int(term[2])
        stopper = {agent_pid: "agent", int(term[3]): "guard"}.get(sender, f"pid {sender}")
    print(f"\nlink down -> SIGTERM from {stopper} after "
          f"{(float(term[1]) - cut_at) if term else float('nan'):.2f}s, last sign of life after "
          f"{last_alive - cut_at:.2f}s, attempt 2 started on node-b after {float(started[1]) - cut_at:.2f}s "
          f"(seen by the server after {seen_at - cut_at:.2f}s; lease {OFFLINE_AFTER / 2:g}s, "
          f"offline_after {OFFLINE_AFTER:g}s)")
    print(f"node-a agent alive: {cluster.agents['node-a'].poll() is None}; attempt 1's guard and job when "
          f"attempt 2 started: {tasks_a} (None: gone; (state, exiting)), waiting in {waits_a}")

    # The cable back: node-a rejoins; its late writes do not change the job's outcome.
    cluster.link("node-a", up=True)
    restored = time.monotonic()
    final = wait_for(lambda: (lambda s: s if s["status"] == "finished" else None)(cluster.status(job_id)),
                     timeout=10, message="attempt 2 to finish")
    assert (final["attempt"], final["host"]) == (2, "node-b")
    wait_for(lambda: cluster.host_view("node-a")["state"] == "online", timeout=15,
             message="node-a to be online again")
    print(f"node-a online again {time.monotonic() - restored:.2f}s after the link came back")
    wait_for(lambda: all(_task(pid) is None or _task(pid)[0] == "Z" for pid in attempt_1), timeout=10,
             message="attempt 1's exiting processes to be gone")
    print(f"attempt 1's processes gone {time.monotonic() - restored:.2f}s after the link came back")
    time.sleep(0.5)
    final = cluster.status(job_id)
    assert (final["status"], final["attempt"], final["host"]) == ("finished", 2, "node-b")
