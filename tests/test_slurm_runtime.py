"""The slurm runtime end to end: a server and ``opeva-spool agent --host hpc --runtime slurm`` as processes,
jobs submitted through the API, run by a real one-node Slurm cluster (the ``slurm_cluster`` fixture).

The node has as many CPUs as this machine (2 here); tests run one at a time against it.
"""

import json
import signal
import time

import pytest

from .conftest import wait_for
from .processes import start_agent, start_server, stop

pytestmark = pytest.mark.slurm

HOST = "hpc"
FAST = dict(observer="polling", scan_interval=0.2, heartbeat_interval=0.3, offline_after=5.0, stop_grace=2.0)
SETTLE = 30.0  # seconds for a job to reach a state (sbatch + release + one scheduling pass + polls)


class Hpc:
    """A server and a Slurm host's agent over one shared root; counts what reached the cluster by name."""

    def __init__(self, cluster, tmp_path):
        self.cluster, self.tmp_path = cluster, tmp_path
        self.root = tmp_path / "share"
        self.server, self.http = start_server(self.root, tmp_path, hosts=HOST, embedded_worker="false", **FAST)
        self.agent = None
        self.jobs = []

    def start_agent(self, **settings):
        self.agent = start_agent(self.root, self.tmp_path, HOST, runtime="slurm", slurm_conf=self.cluster.conf,
                                 capacity=8, slurm_poll_interval=0.3, **FAST, **settings)
        wait_for(lambda: self.host_view().get("state") == "online" and self.host_view().get("detached"),
                 timeout=20, message=f"{HOST} to be online")
        return self.agent

    def host_view(self):
        return next((view for view in self.http.get("/hosts").json()["hosts"] if view["host"] == HOST), {})

    def submit(self, command, **body):
        response = self.http.post("/run-simulation", json={"command": command, "target_host": HOST, **body})
        assert response.status == 200, response.text
        job_id = response.json()["job_id"]
        self.jobs.append(job_id)
        return job_id

    def status(self, job_id):
        return self.http.get(f"/status/{job_id}").json()

    def info(self, job_id):
        return self.http.get(f"/job-info/{job_id}").json()

    def record(self, job_id, attempt=1):
        path = self.root / "jobs" / job_id / "attempts" / f"{attempt}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def wait_status(self, job_id, *wanted, timeout=SETTLE):
        return wait_for(lambda: self.status(job_id) if self.status(job_id)["status"] in wanted else None,
                        timeout, interval=0.1, message=f"job {job_id} to be {wanted}")

    def wait_cluster_state(self, job_id, state, timeout=SETTLE):
        return wait_for(lambda: self.record(job_id) if self.record(job_id).get("cluster_state") == state else None,
                        timeout, interval=0.1, message=f"job {job_id} to be {state} at the cluster")

    def slurm_jobs(self, job_id):
        """Every Slurm job (any state) named after this job's attempts: how many sbatch calls it cost."""
        listed = self.cluster.run("squeue", "-h", "-t", "all", "-o", "%i|%j|%T").stdout.split()
        return [line for line in listed if line.split("|")[1].startswith(f"opeva-{job_id}-")]

    def close(self):
        for proc in (self.agent, self.server):
            if proc is not None:
                stop(proc)
        for job_id in self.jobs:  # nothing of ours stays on the shared cluster
            self.cluster.run("scancel", "--name", f"opeva-{job_id}-1", check=False)


@pytest.fixture
def hpc(slurm_cluster, tmp_path):
    deployment = Hpc(slurm_cluster, tmp_path)
    try:
        deployment.start_agent()
        yield deployment
    finally:
        deployment.close()


def test_a_command_runs_as_a_slurm_job_and_finishes_with_its_log(hpc):
    job_id = hpc.submit(["sh", "-c", 'echo "hello from $SLURM_JOB_ID as $OPEVA_JOB_ID"'])
    hpc.wait_status(job_id, "finished")
    record = hpc.record(job_id)
    assert record["runtime"] == "slurm" and record["exit_code"] == 0
    assert record["slurm_job_name"] == f"opeva-{job_id}-1"
    log = hpc.http.get(f"/logs/{job_id}").text
    assert f"hello from {record['slurm_job_id']} as {job_id}" in log
    script = (hpc.root / "jobs" / job_id / "slurm" / "attempt-1.sh").read_text()
    assert f"#SBATCH --job-name=opeva-{job_id}-1" in script
    assert len(hpc.slurm_jobs(job_id)) == 1


def test_a_failing_command_fails_with_its_exit_code(hpc):
    job_id = hpc.submit(["sh", "-c", "echo about to fail; exit 3"])
    hpc.wait_status(job_id, "failed")
    info = hpc.info(job_id)
    assert (info["exit_code"], info["reason"]) == (3, "exit_code")
    assert "about to fail" in hpc.http.get(f"/logs/{job_id}").text


def test_a_job_asking_more_than_the_cluster_has_is_refused_with_slurms_reason(hpc):
    job_id = hpc.submit(["true"], resources={"cpus": 4096})
    hpc.wait_status(job_id, "failed")
    info = hpc.info(job_id)
    assert info["reason"] == "cluster_refused"
    assert "More processors requested than permitted" in hpc.record(job_id)["error"]
    assert hpc.slurm_jobs(job_id) == []


def test_stop_cancels_a_running_job_and_a_job_still_queued_at_the_cluster(hpc):
    whole_node = hpc.cluster.run("sinfo", "-h", "-o", "%c").stdout.strip()
    running = hpc.submit(["sleep", "300"], resources={"cpus": int(whole_node)})
    hpc.wait_cluster_state(running, "RUNNING")
    waiting = hpc.submit(["sleep", "300"], resources={"cpus": int(whole_node)})
    hpc.wait_cluster_state(waiting, "PENDING")
    status = wait_for(lambda: hpc.status(waiting) if (hpc.status(waiting).get("queued_at_cluster") or {}).get(
        "reason") == "Resources" else None, SETTLE, interval=0.1, message="Slurm's reason Resources")
    assert status["status"] == "running" and status["queued_at_cluster"]["position"] == 1
    for job_id in (waiting, running):
        assert hpc.http.post(f"/stop/{job_id}").status == 200
    for job_id in (waiting, running):
        hpc.wait_status(job_id, "stopped")
        assert hpc.info(job_id)["reason"] == "stop_requested"
        assert [line.split("|")[2] for line in hpc.slurm_jobs(job_id)] == ["CANCELLED"]


def test_a_killed_agent_restarted_adopts_its_jobs_without_submitting_them_again(hpc):
    job_id = hpc.submit(["sh", "-c", "echo started; sleep 6; echo done"])
    hpc.wait_cluster_state(job_id, "RUNNING")
    slurm_id = hpc.record(job_id)["slurm_job_id"]
    hpc.agent.send_signal(signal.SIGKILL)
    hpc.agent.wait(10)
    hpc.start_agent()
    hpc.wait_status(job_id, "finished")
    record = hpc.record(job_id)
    assert record["slurm_job_id"] == slurm_id and record["exit_code"] == 0
    assert len(hpc.slurm_jobs(job_id)) == 1
    log = hpc.http.get(f"/logs/{job_id}").text
    assert "started" in log and "done" in log


def test_an_agent_killed_between_sbatch_and_the_record_adopts_the_held_job_by_name(hpc):
    stop(hpc.agent)
    hpc.start_agent(crash_at="start.launched")  # SIGKILL right after sbatch --hold, before the record
    job_id = hpc.submit(["sh", "-c", "echo adopted"])
    hpc.agent.wait(SETTLE)
    [held] = wait_for(lambda: hpc.slurm_jobs(job_id), SETTLE, message="the held Slurm job")
    assert held.endswith("|PENDING") and hpc.record(job_id)["state"] == "dispatched"
    hpc.start_agent()
    hpc.wait_status(job_id, "finished")
    assert hpc.record(job_id)["slurm_job_id"] == held.split("|")[0]
    assert len(hpc.slurm_jobs(job_id)) == 1
    assert "adopted" in hpc.http.get(f"/logs/{job_id}").text


@pytest.mark.slow
def test_a_job_over_its_time_limit_fails_with_timeout(hpc):
    # Slurm's smallest limit is one minute: this test takes about 65 s.
    job_id = hpc.submit(["sh", "-c", "echo working; sleep 300"], resources={"time": "1"})
    hpc.wait_cluster_state(job_id, "RUNNING")
    started = time.monotonic()
    hpc.wait_status(job_id, "failed", timeout=120)
    info = hpc.info(job_id)
    assert info["reason"] == "timeout"
    assert time.monotonic() - started > 50
    assert "DUE TO TIME LIMIT" in hpc.http.get(f"/logs/{job_id}").text
