"""Agents as separate processes over one shared root, with a server process judging liveness.

Polling observers and short timings, as documented for tests: heartbeat 0.3 s,
offline_after 3 s (so the agent's lease is 1.5 s and its guard's SIGKILL comes at
2.25 s at the latest).
"""

import os
import signal
import subprocess
import sys
import time

import pytest

from opeva_spool import fsio
from opeva_spool.spool import Spool

from .conftest import wait_for
from .processes import PROJECT_ROOT, spool_env, start_agent, start_server, stop

pytestmark = pytest.mark.slow

OFFLINE_AFTER = 3.0
FAST = dict(observer="polling", scan_interval=0.2, heartbeat_interval=0.3, offline_after=OFFLINE_AFTER,
            stop_grace=1.0)

# Each attempt appends to its own file (one writer per file): its start, a line every
# 50 ms while alive, its end. Attempt 1 runs until something kills it; later ones end soon.
ATTEMPT_JOB = r"""
import os, sys, time
folder = os.path.join(os.environ["OPEVA_BASE_DIR"], "jobs", os.environ["OPEVA_JOB_ID"])
attempt = os.environ["OPEVA_ATTEMPT"]
seconds = 60.0 if attempt == "1" else 0.5
with open(os.path.join(folder, "alive-" + attempt), "a") as out:
    out.write("start %f\n" % time.time()); out.flush()
    end = time.time() + seconds
    while time.time() < end:
        out.write("alive %f\n" % time.time()); out.flush()
        time.sleep(0.05)
    out.write("end %f\n" % time.time())
"""


@pytest.fixture
def cluster(tmp_path):
    """Starts a server and agents on demand; ends them all (thawing frozen ones first)."""
    root = tmp_path / "share"
    procs = []

    class Cluster:
        spool = Spool(str(root))

        def server(self, **settings):
            proc, client = start_server(root, tmp_path, hosts="node-a,node-b", embedded_worker="false",
                                        **{**FAST, **settings})
            procs.append(proc)
            self.http = client
            return client

        def agent(self, host, **settings):
            proc = start_agent(root, tmp_path, host, **{**FAST, **settings})
            procs.append(proc)
            wait_for(lambda: self.host_view(host)["state"] == "online" and self.host_view(host).get("version"),
                     timeout=10, message=f"{host} to be online")
            return proc

        def host_view(self, host):
            hosts = self.http.get("/hosts").json()["hosts"]
            return next((view for view in hosts if view["host"] == host), {"state": None})

        def submit(self, target="any", max_retries=0, command=None, **body):
            body = {"command": command or [sys.executable, "-c", ATTEMPT_JOB], "target_host": target,
                    "max_retries": max_retries, **body}
            response = self.http.post("/run-simulation", json=body)
            assert response.status == 200, response.text
            return response.json()["job_id"]

        def status(self, job_id):
            return self.http.get(f"/status/{job_id}").json()

        def wait_status(self, job_id, wanted, timeout=15, **fields):
            def check():
                status = self.status(job_id)
                return status if status["status"] == wanted and all(status[k] == v for k, v in fields.items()) \
                    else None
            return wait_for(check, timeout=timeout, message=f"{job_id} to be {wanted} {fields}")

        def job_running_on_node_a(self, max_retries):
            """Server up, node-a's agent (capacity 1) running one marked job: (agent process, job id)."""
            self.server()
            agent_a = self.agent("node-a", capacity=1)
            job_id = self.submit(max_retries=max_retries)
            self.wait_status(job_id, "running", host="node-a")
            wait_for(lambda: self.marks(job_id, 1), message="attempt 1 to start")
            return agent_a, job_id

        def marks(self, job_id, attempt):
            path = os.path.join(self.spool.jobs_dir, job_id, f"alive-{attempt}")
            if not os.path.exists(path):
                return []
            with open(path) as handle:
                return [(kind, float(stamp)) for kind, stamp in (line.split() for line in handle if line.strip())]

        def record(self, job_id, attempt):
            return fsio.read_json_object(self.spool.folder(job_id).attempt_record(attempt))

    yield Cluster()
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            stop(proc)


def last_alive(marks):
    return max(stamp for _, stamp in marks)


def test_targeted_jobs_run_only_on_their_host_and_any_jobs_spread(cluster):
    cluster.server()
    cluster.agent("node-a", capacity=1)
    cluster.agent("node-b", capacity=1)
    sleeper = [sys.executable, "-c", "import time; time.sleep(0.6)"]
    targeted = {cluster.submit(target=host, command=sleeper): host for host in ("node-a", "node-b") * 2}
    spread = [cluster.submit(command=sleeper) for _ in range(4)]
    for job_id in [*targeted, *spread]:
        cluster.wait_status(job_id, "finished", timeout=20)
    for job_id, host in targeted.items():
        assert cluster.record(job_id, 1)["host"] == host
    assert {cluster.record(job_id, 1)["host"] for job_id in spread} == {"node-a", "node-b"}


def test_hosts_shows_state_capacity_gpus_running_jobs_and_drain(cluster, tmp_path):
    cluster.server()
    agent_a = cluster.agent("node-a", capacity=2, gpu_ids="0,1")
    cluster.agent("node-b", capacity=1)
    job_id = cluster.submit(target="node-a", gpus=1)
    cluster.wait_status(job_id, "running", host="node-a")
    view = wait_for(lambda: (lambda v: v if v["running"] == [job_id] else None)(cluster.host_view("node-a")),
                    message="node-a to report its running job")
    assert view["state"] == "online" and view["seconds_since_seen"] < 2
    assert view["capacity"] == 2 and view["gpu_ids"] == ["0", "1"] and view["free_gpus"] == ["1"]
    assert view["version"] and view["runtime"] == "process" and view["draining"] is False

    # Drain by file (the CLI) on node-b and by SIGUSR1 on node-a: both show, neither takes new jobs.
    env = spool_env(cluster.spool.root, tmp_path)
    subprocess.run([sys.executable, "-m", "opeva_spool.cli", "drain", "--host", "node-b"], env=env, cwd=PROJECT_ROOT,
                   check=True, capture_output=True)
    agent_a.send_signal(signal.SIGUSR1)
    for host in ("node-a", "node-b"):
        wait_for(lambda host=host: cluster.host_view(host)["draining"], timeout=5, message=f"{host} to show draining")
    waiting = cluster.submit(command=[sys.executable, "-c", "pass"])
    time.sleep(1.0)  # several scans of both agents
    assert cluster.status(waiting)["status"] == "queued"
    assert cluster.status(job_id)["status"] == "running"  # draining finishes what runs
    subprocess.run([sys.executable, "-m", "opeva_spool.cli", "drain", "--host", "node-b", "--undo"], env=env,
                   cwd=PROJECT_ROOT, check=True, capture_output=True)
    cluster.wait_status(waiting, "finished", timeout=10, host="node-b")
    assert cluster.host_view("node-b")["draining"] is False


def test_killed_agent_s_jobs_are_requeued_or_failed_per_max_retries_without_overlap(cluster):
    cluster.server()
    agent_a = cluster.agent("node-a", capacity=2)
    retried = cluster.submit(max_retries=1)
    lost = cluster.submit(max_retries=0)
    for job_id in (retried, lost):
        cluster.wait_status(job_id, "running", host="node-a")
        wait_for(lambda job_id=job_id: cluster.marks(job_id, 1), message=f"{job_id} attempt 1 to start")
    cluster.agent("node-b", capacity=2)
    agent_a.kill()
    killed_at = time.time()
    cluster.wait_status(lost, "failed", timeout=OFFLINE_AFTER + 5)
    failed_after = time.time() - killed_at
    assert cluster.record(lost, 1)["reason"] == "host_lost"
    assert cluster.host_view("node-a")["state"] == "offline"

    second = cluster.wait_status(retried, "finished", timeout=10, host="node-b")
    assert second["attempt"] == 2
    # The dead agent's guard ended attempt 1 (lease 1.5 s) before the server requeued it (3 s).
    first_marks, second_marks = cluster.marks(retried, 1), cluster.marks(retried, 2)
    assert second_marks[0][0] == "start" and last_alive(first_marks) < second_marks[0][1]
    assert last_alive(first_marks) - killed_at < OFFLINE_AFTER
    assert last_alive(cluster.marks(lost, 1)) - killed_at < OFFLINE_AFTER
    logs = os.path.join(cluster.spool.jobs_dir, retried, "logs")
    assert sorted(os.listdir(logs)) == [f"{retried}.attempt-1.log", f"{retried}.log"]
    with open(os.path.join(logs, f"{retried}.attempt-1.log")) as handle:
        assert "heartbeat has not changed" in handle.read()
    print(f"kill -9 -> failed(host_lost) after {failed_after:.2f}s, retried job's attempt 2 started after "
          f"{second_marks[0][1] - killed_at:.2f}s (offline_after {OFFLINE_AFTER:g}s)")


def test_frozen_agent_never_runs_an_attempt_alongside_its_successor(cluster):
    agent_a, job_id = cluster.job_running_on_node_a(max_retries=2)
    cluster.agent("node-b", capacity=1)

    agent_a.send_signal(signal.SIGSTOP)
    frozen_at = time.time()
    requeued = cluster.wait_status(job_id, "finished", timeout=OFFLINE_AFTER + 8, host="node-b")
    assert requeued["attempt"] == 2
    first, second = cluster.marks(job_id, 1), cluster.marks(job_id, 2)
    # Attempt 1's last sign of life came before attempt 2 started, and before the
    # server's offline threshold: its guard killed it while its agent was frozen.
    assert last_alive(first) < second[0][1]
    assert last_alive(first) - frozen_at < OFFLINE_AFTER
    assert "end" not in [kind for kind, _ in first]

    agent_a.send_signal(signal.SIGCONT)
    wait_for(lambda: cluster.host_view("node-a")["state"] == "online", timeout=5, message="node-a back online")
    time.sleep(1.0)  # the thawed agent's runner sees its attempt gone and gives up
    status = cluster.status(job_id)
    assert (status["status"], status["attempt"], status["host"]) == ("finished", 2, "node-b")
    # Its late writes changed nothing: attempt 1 never ended "finished", only one entry exists.
    assert (cluster.record(job_id, 1) or {}).get("state") != "finished"
    assert [entry.attempt for _, entry in cluster.spool.scan() if entry.job_id == job_id] == [2]
    assert cluster.host_view("node-a")["running"] == []


def test_restarted_agent_ends_its_predecessor_s_attempt_before_requeueing_it(cluster):
    agent_a, job_id = cluster.job_running_on_node_a(max_retries=1)
    agent_a.kill()
    agent_a.wait()
    # Restarted at once (systemd's Restart=): well within the lease, so the old attempt's guard
    # still sees a fresh heartbeat — the new agent itself must end it before requeueing.
    cluster.agent("node-a", capacity=1)
    status = cluster.wait_status(job_id, "finished", timeout=10)
    assert status["attempt"] == 2
    first = cluster.marks(job_id, 1)
    assert last_alive(first) < cluster.marks(job_id, 2)[0][1]
    with open(os.path.join(cluster.spool.jobs_dir, job_id, "logs", f"{job_id}.attempt-1.log")) as handle:
        assert "heartbeat has not changed" not in handle.read()  # ended by the successor, not the lease
    assert cluster.record(job_id, 1)["state"] != "finished"
