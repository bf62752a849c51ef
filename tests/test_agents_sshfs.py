"""Two worker hosts that each see the shared root through their own sshfs mount, as on NFS.

Each host is a network namespace with its own address on a private bridge; a throwaway sshd
on the bridge address serves the real shared root, and each host mounts it with sshfs (FUSE)
at its own mount point (see tests/sshfs_support.py). One agent process runs per host inside
its namespace with OPEVA_SHARED_ROOT = that host's mount point, a polling observer and its
lock dir on the host's local disk; the server runs in the root namespace on the real directory.
So every file operation of an agent (listing the queue, the claim rename, attempt records,
heartbeats, the job's own writes) goes through SFTP, and flock between hosts excludes nothing.

Why the agents poll: on such a mount inotify only reports what this host itself did — the
other host's writes (new queued entries, its claims) raise no event, exactly as on NFS —
while watchdog's PollingObserver and the agents' periodic scan see them. Also as on NFS,
listings are cached unless told otherwise: with sshfs's defaults a new entry showed up in
another host's listing only after ~20 s (its directory cache), hence the cache options in
sshfs_support.SSHFS_CACHE_OPTIONS.
"""

import json
import os
import time
from pathlib import Path

import pytest

from opeva_spool import fsio
from opeva_spool.spool import Spool

from .conftest import wait_for
from .processes import PROJECT_ROOT, spool_env, start_server, stop
from .sshfs_support import new_hosts

pytestmark = pytest.mark.sshfs

HOSTS = ("node-a", "node-b")
AGENT = dict(observer="polling", scan_interval=0.2, heartbeat_interval=0.3, capacity=4, stop_grace=1.0)
# Each run appends the host that ran it (via its own mount): a job run twice leaves two lines.
MARK = 'echo "$OPEVA_HOST" >> "$OPEVA_BASE_DIR/jobs/$OPEVA_JOB_ID/ran"'
CLAIMS = 100


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    work, root, hosts = new_hosts(tmp_path_factory, "sshfs", HOSTS)
    procs = []
    try:
        started = time.monotonic()
        hosts.start()
        server_proc, http = start_server(root, work, hosts=",".join(HOSTS), embedded_worker="false",
                                         **AGENT)
        procs.append(server_proc)
        for name in HOSTS:
            host = hosts.hosts[name]
            env = spool_env(host.mount, Path(host.local), host=name, **AGENT)
            procs.append(hosts.python(name, ["-m", "opeva_spool.cli", "agent"], env,
                                      os.path.join(host.local, "agent.log"), cwd=PROJECT_ROOT))

        def online():
            views = {view["host"]: view for view in http.get("/hosts").json()["hosts"]}
            return all(views.get(name, {}).get("state") == "online" for name in HOSTS)

        wait_for(online, timeout=10, message="both sshfs hosts' agents to be online")
        print(f"sshfs cluster up in {time.monotonic() - started:.2f}s")
        yield Cluster(root, hosts, http)
    finally:
        for proc in reversed(procs):
            stop(proc, timeout=10)
        hosts.close()


class Cluster:
    def __init__(self, root, hosts, http):
        self.root, self.hosts, self.http = str(root), hosts, http
        self.spool = Spool(self.root)

    def submit(self, target="any", command=None):
        body = {"command": command or ["sh", "-c", MARK], "target_host": target, "max_retries": 0}
        response = self.http.post("/run-simulation", json=body)
        assert response.status == 200, response.text
        return response.json()["job_id"]

    def status(self, job_id):
        return self.http.get(f"/status/{job_id}").json()

    def wait_finished(self, job_ids, timeout):
        pending = set(job_ids)

        def check():
            for job_id in sorted(pending):
                state = self.status(job_id)["status"]
                assert state not in ("failed", "cancelled", "stopped"), self.status(job_id)
                if state == "finished":
                    pending.discard(job_id)
            return not pending
        wait_for(check, timeout=timeout, interval=0.2, message=f"{len(pending)} jobs to finish")

    def ran(self, job_id):
        """The hosts that ran job_id, read on the real directory (not through a mount)."""
        try:
            with open(os.path.join(self.spool.jobs_dir, job_id, "ran"), encoding="utf-8") as handle:
                return handle.read().split()
        except FileNotFoundError:
            return []


def test_targeted_jobs_run_on_their_host_and_any_jobs_spread_each_exactly_once(cluster):
    sleeper = ["sh", "-c", MARK + "; sleep 1"]
    targeted = {cluster.submit(target=host, command=sleeper): host for host in HOSTS * 3}
    spread = [cluster.submit(command=sleeper) for _ in range(8)]
    cluster.wait_finished([*targeted, *spread], timeout=20)
    for job_id, host in targeted.items():
        assert cluster.ran(job_id) == [host]
        assert cluster.status(job_id)["host"] == host
    ran_on = {}
    for job_id in spread:
        hosts = cluster.ran(job_id)
        assert len(hosts) == 1, f"{job_id} ran {len(hosts)} times: {hosts}"
        assert cluster.status(job_id)["host"] == hosts[0]
        ran_on[job_id] = hosts[0]
    assert set(ran_on.values()) == set(HOSTS)


def test_agents_claiming_through_sshfs_run_each_of_many_jobs_exactly_once(cluster):
    job_ids = [cluster.submit() for _ in range(CLAIMS)]
    cluster.wait_finished(job_ids, timeout=25)
    runs = {job_id: cluster.ran(job_id) for job_id in job_ids}
    double = {job_id: hosts for job_id, hosts in runs.items() if len(hosts) != 1}
    assert double == {}, f"{len(double)} of {CLAIMS} jobs did not run exactly once: {double}"
    for job_id, hosts in runs.items():
        record = fsio.read_json_object(cluster.spool.folder(job_id).attempt_record(1))
        assert record["state"] == "finished" and record["host"] == hosts[0]
    entries = [entry.job_id for _, entry in cluster.spool.scan() if entry.job_id in runs]
    assert sorted(entries) == sorted(job_ids)  # one entry per job
    assert {hosts[0] for hosts in runs.values()} == set(HOSTS)


# Run inside a host's namespace on its mount: say ready, wait for the start signal, then try
# to claim every file of queue/ by one rename into <host>/, in an order of its own (shuffled,
# so the two claimers keep colliding instead of one trailing the other through the same order).
CLAIMER = r"""
import json, os, random, sys, time
from opeva_spool import fsio
base, host = sys.argv[1], sys.argv[2]
queue, mine = os.path.join(base, "queue"), os.path.join(base, host)
open(os.path.join(base, "ready-" + host), "w").close()
while not os.path.exists(os.path.join(base, "go")):
    time.sleep(0.002)
won, lost, unsure = [], 0, []
while True:
    names = fsio.listdir(queue)
    if not names:
        break
    random.shuffle(names)
    for name in names:
        moved = fsio.rename_claim(os.path.join(queue, name), os.path.join(mine, name))
        if moved:
            won.append(name)
        elif moved is None:
            unsure.append(name)
        else:
            lost += 1
print(json.dumps({"won": won, "lost": lost, "unsure": unsure}))
"""


def test_claims_by_rename_through_two_sshfs_mounts_never_double_claim(cluster, tmp_path):
    base = os.path.join(cluster.root, "claim-race")
    os.makedirs(os.path.join(base, "queue"))
    names = [f"entry-{i:04d}" for i in range(CLAIMS)]
    for name in names:
        with open(os.path.join(base, "queue", name), "w", encoding="utf-8") as handle:
            handle.write(name)
    procs = {}
    for name in HOSTS:
        host = cluster.hosts.hosts[name]
        os.makedirs(os.path.join(base, name))
        procs[name] = cluster.hosts.python(
            name, ["-c", CLAIMER, os.path.join(host.mount, "claim-race"), name],
            dict(os.environ, PYTHONPATH=PROJECT_ROOT), str(tmp_path / f"claimer-{name}.out"), cwd=PROJECT_ROOT)
    wait_for(lambda: all(os.path.exists(os.path.join(base, f"ready-{name}")) for name in HOSTS), timeout=10,
             message="both claimers to be ready")
    open(os.path.join(base, "go"), "w").close()
    results = {}
    for name, proc in procs.items():
        assert proc.wait(20) == 0, (tmp_path / f"claimer-{name}.out").read_text()
        results[name] = json.loads((tmp_path / f"claimer-{name}.out").read_text().strip().splitlines()[-1])
    won = {name: set(result["won"]) for name, result in results.items()}
    double = won["node-a"] & won["node-b"]
    print(f"claims through sshfs: node-a {len(won['node-a'])}, node-b {len(won['node-b'])}, "
          f"lost races {sum(r['lost'] for r in results.values())}, double {len(double)}, "
          f"unsure {sum(len(r['unsure']) for r in results.values())}")
    assert double == set()
    assert won["node-a"] | won["node-b"] == set(names)
    assert all(result["unsure"] == [] for result in results.values())
    for name in HOSTS:  # what each claimer believes it won is what its directory holds
        assert set(os.listdir(os.path.join(base, name))) == won[name]
    assert os.listdir(os.path.join(base, "queue")) == []
    assert won["node-a"] and won["node-b"] and sum(r["lost"] for r in results.values()), "no race happened"
