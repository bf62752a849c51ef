"""The crash matrix: kill -9 the server, and separately an agent, at each step of a job's life, restart it, and
check that no job is lost, no two attempts of a job ever ran at once, every attempt that ran kept its log, and
the tree is consistent (``opeva-spool fsck`` exits 0).

The exact steps are named crash points (opeva_spool/crashpoints.py): the victim is started with OPEVA_CRASH_AT
naming one and kills itself there with SIGKILL; its restart is unarmed. "running" is a plain kill -9 from outside.
Real processes (server, agent, the jobs, their guards) on a real filesystem; about a minute with -n 4.
"""

import http.client
import json
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

HOST = "gpu-a"
FAST = dict(observer="polling", scan_interval=0.2, heartbeat_interval=0.3, offline_after=3.0, stop_grace=1.0,
            retry_backoff=0.2, retry_backoff_max=0.5, embedded_worker="false", hosts=HOST)
LONG, SHORT = "60", "0.6"

# Each attempt writes its own marks file (one writer per file): its start, a line every 50 ms while it
# lives, its end; and a line naming itself into the job's log (stdout). FAIL_FIRST makes attempt 1 exit 1.
JOB = r"""
import os, sys, time
folder = os.path.join(os.environ["OPEVA_BASE_DIR"], "jobs", os.environ["OPEVA_JOB_ID"])
attempt = os.environ["OPEVA_ATTEMPT"]
print("attempt", attempt, "started", flush=True)
seconds = float(os.environ["FIRST_SECONDS" if attempt == "1" else "LATER_SECONDS"])
with open(os.path.join(folder, "alive-" + attempt), "a") as out:
    out.write("start %f\n" % time.time()); out.flush()
    end = time.time() + seconds
    while time.time() < end:
        out.write("alive %f\n" % time.time()); out.flush()
        time.sleep(0.05)
    out.write("end %f\n" % time.time())
sys.exit(1 if attempt == "1" and os.environ.get("FAIL_FIRST") else 0)
"""


class Cluster:
    """A server and one agent as separate processes over one root, each restartable and armable."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.root = tmp_path / "share"
        self.spool = Spool(str(self.root))
        self.server_proc = self.agent_proc = None
        self.http = None

    def start_server(self, crash_at=""):
        self.server_proc, self.http = start_server(self.root, self.tmp_path, crash_at=crash_at, **FAST)

    def start_agent(self, crash_at=""):
        self.agent_proc = start_agent(self.root, self.tmp_path, HOST, crash_at=crash_at, capacity=1, **FAST)
        wait_for(lambda: self.host_state() == "online", timeout=15, message=f"{HOST} online")

    def host_state(self):
        hosts = self.http.get("/hosts").json()["hosts"]
        return next((view["state"] for view in hosts if view["host"] == HOST), None)

    def submit(self, first=LONG, later=SHORT, max_retries=1, **body):
        response = self.http.post("/run-simulation", json=self.job_body(first, later, max_retries, **body))
        assert response.status == 200, response.text
        return response.json()["job_id"]

    @staticmethod
    def job_body(first=LONG, later=SHORT, max_retries=1, fail_first=False, **body):
        env = {"FIRST_SECONDS": first, "LATER_SECONDS": later, **({"FAIL_FIRST": "1"} if fail_first else {})}
        return {"command": [sys.executable, "-c", JOB], "target_host": HOST, "max_retries": max_retries,
                "env": env, **body}

    def status(self, job_id):
        return self.http.get(f"/status/{job_id}").json()

    def wait_status(self, job_id, wanted, timeout=30):
        return wait_for(lambda: self.status(job_id)["status"] == wanted, timeout=timeout,
                        message=f"job {job_id} to be {wanted}")

    def wait_started(self, job_id, attempt=1):
        wait_for(lambda: self.marks(job_id, attempt), timeout=15, message=f"attempt {attempt} of {job_id} to start")

    def marks(self, job_id, attempt):
        path = os.path.join(self.spool.jobs_dir, job_id, f"alive-{attempt}")
        if not os.path.exists(path):
            return []
        with open(path) as handle:
            return [float(line.split()[1]) for line in handle if line.strip()]

    def close(self):
        for proc in (self.agent_proc, self.server_proc):
            if proc is not None:
                stop(proc)


def died_at_crash_point(proc, timeout=20):
    proc.wait(timeout)
    assert proc.returncode == -signal.SIGKILL, f"expected to die at its crash point, exited {proc.returncode}"


def request_killing_the_server(call):
    """Make a request the server dies in (no answer comes)."""
    with pytest.raises((OSError, http.client.HTTPException)):
        call()


def live_attempts(job_id):
    """The attempts (OPEVA_ATTEMPT) of ``job_id`` whose processes are alive now, read from /proc."""
    found = set()
    needle = f"OPEVA_JOB_ID={job_id}".encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                environ = handle.read().split(b"\0")
        except OSError:
            continue
        if needle in environ:
            found |= {item.split(b"=", 1)[1].decode() for item in environ if item.startswith(b"OPEVA_ATTEMPT=")}
    return found


# ----- the steps: each leaves a job (or none) and says what it must end as ----------------------------------

def server_at_publish_before_commit(cluster):
    cluster.start_server(crash_at="publish.committing")
    request_killing_the_server(lambda: cluster.http.post("/run-simulation", json=cluster.job_body(), timeout=10))
    died_at_crash_point(cluster.server_proc)
    cluster.start_server()
    assert cluster.http.get("/jobs").json() == []  # never acknowledged, never committed: no job
    return {}


def server_at_publish_after_commit(cluster):
    cluster.start_server(crash_at="publish.committed")
    cluster.start_agent()
    request_killing_the_server(lambda: cluster.http.post("/run-simulation", json=cluster.job_body(first=SHORT),
                                                         timeout=10))
    died_at_crash_point(cluster.server_proc)
    cluster.start_server()
    [job] = cluster.http.get("/jobs").json()  # committed before the crash: the whole job is there
    return {job["job_id"]: "finished"}


def server_at_stop(cluster):
    cluster.start_server(crash_at="stop.requested")
    cluster.start_agent()
    job_id = cluster.submit()
    cluster.wait_started(job_id)
    request_killing_the_server(lambda: cluster.http.post(f"/stop/{job_id}", timeout=10))
    died_at_crash_point(cluster.server_proc)
    cluster.start_server()
    return {job_id: "stopped"}


def server_at_delete(cluster):
    cluster.start_server(crash_at="delete.entry_trashed")
    cluster.start_agent()
    job_id = cluster.submit(first=SHORT)
    cluster.wait_status(job_id, "finished")
    request_killing_the_server(lambda: cluster.http.delete(f"/job/{job_id}", timeout=10))
    died_at_crash_point(cluster.server_proc)
    cluster.start_server()
    assert cluster.status(job_id)["status"] == "not_found"  # the entry's rename was the commit
    return {job_id: None}


def server_at_requeue(cluster):
    cluster.start_server(crash_at="requeue.renamed")
    cluster.start_agent()
    job_id = cluster.submit()
    cluster.wait_started(job_id)
    cluster.agent_proc.kill()  # its host goes silent: the server requeues its job, and dies right after
    died_at_crash_point(cluster.server_proc, timeout=30)
    cluster.start_server()
    cluster.start_agent()
    return {job_id: "finished"}


def server_while_running(cluster):
    cluster.start_server()
    cluster.start_agent()
    job_id = cluster.submit(first="2")
    cluster.wait_started(job_id)
    cluster.server_proc.kill()  # claims, starts, endings and their records need no server
    cluster.server_proc.wait()
    wait_for(lambda: os.path.exists(cluster.spool.folder(job_id).attempt_record(1)) and (
        fsio.read_json_object(cluster.spool.folder(job_id).attempt_record(1)) or {}).get("state") == "finished",
        timeout=20, message="the job to finish while the server is down")
    cluster.start_server()
    return {job_id: "finished"}


def agent_at_claim(cluster):
    cluster.start_server()
    cluster.start_agent(crash_at="claim.renamed")
    job_id = cluster.submit(first=SHORT)
    died_at_crash_point(cluster.agent_proc)
    cluster.start_agent()  # finds an attempt it cannot re-attach: requeued (max_retries 1)
    return {job_id: "finished"}


def agent_at_start(cluster):
    cluster.start_server()
    cluster.start_agent(crash_at="start.launched")
    job_id = cluster.submit()
    died_at_crash_point(cluster.agent_proc)
    cluster.start_agent()  # ends its predecessor's attempt first, then requeues it
    return {job_id: "finished"}


def agent_while_running(cluster):
    cluster.start_server()
    cluster.start_agent()
    job_id = cluster.submit()
    cluster.wait_status(job_id, "running")
    cluster.wait_started(job_id)
    cluster.agent_proc.kill()
    cluster.agent_proc.wait()
    cluster.start_agent()
    return {job_id: "finished"}


def agent_at_result(cluster):
    cluster.start_server()
    cluster.start_agent(crash_at="finish.recorded")
    job_id = cluster.submit(first=SHORT)
    died_at_crash_point(cluster.agent_proc)
    assert cluster.status(job_id)["status"] == "finished"  # the record is what readers follow
    cluster.start_agent()  # moves the entry on
    return {job_id: "finished"}


def agent_killed_acting_on(name, crash_at, act, outcome):
    """The case ``name``: the agent dies at ``crash_at`` while it ends a running job the API asked to end (``act``)."""
    def case(cluster):
        cluster.start_server()
        cluster.start_agent(crash_at=crash_at)
        job_id = cluster.submit()
        cluster.wait_started(job_id)
        assert act(cluster.http, job_id).status == 200
        died_at_crash_point(cluster.agent_proc)
        cluster.start_agent()
        return {job_id: outcome}

    case.__name__ = name
    return case


agent_at_stop = agent_killed_acting_on("agent_at_stop", "stop.stop_requested",
                                       lambda http, job_id: http.post(f"/stop/{job_id}"), "stopped")
agent_at_delete = agent_killed_acting_on("agent_at_delete", "stop.entry_removed",
                                         lambda http, job_id: http.delete(f"/job/{job_id}?force=1"), None)


def agent_at_retry(cluster):
    cluster.start_server()
    cluster.start_agent(crash_at="retry.recorded")
    job_id = cluster.submit(first=SHORT, fail_first=True, retry_on_failure=True)
    died_at_crash_point(cluster.agent_proc)
    cluster.start_agent()
    return {job_id: "finished"}


STEPS = [server_at_publish_before_commit, server_at_publish_after_commit, server_while_running, server_at_stop,
         server_at_delete, server_at_requeue, agent_at_claim, agent_at_start, agent_while_running, agent_at_result,
         agent_at_stop, agent_at_delete, agent_at_retry]


@pytest.mark.parametrize("step", STEPS, ids=[step.__name__ for step in STEPS])
def test_kill_9_at_each_step_loses_no_job_runs_no_attempt_twice_keeps_every_log(step, tmp_path):
    cluster = Cluster(tmp_path)
    try:
        expected = step(cluster)
        for job_id, status in expected.items():
            if status is None:
                wait_for(lambda job_id=job_id: cluster.status(job_id)["status"] == "not_found", timeout=10,
                         message=f"job {job_id} to stay deleted")
            else:
                cluster.wait_status(job_id, status)
            wait_for(lambda job_id=job_id: not live_attempts(job_id), timeout=15,
                     message=f"every process of job {job_id} to have ended")
            if status is not None:
                check_attempts(cluster, job_id)
        check_tree(cluster)
    finally:
        cluster.close()


def check_attempts(cluster, job_id):
    """No two attempts ran at once, and every attempt that ran has its log, holding its own output."""
    info = cluster.http.get(f"/job-info/{job_id}").json()
    previous_last = None
    for attempt in info["attempts"]:
        number = attempt["attempt"]
        marks = cluster.marks(job_id, number)
        if not marks:
            continue  # this attempt never started its job (killed at its claim, or requeued before it ran)
        if previous_last is not None:
            assert marks[0] > previous_last, f"attempt {number} started before the previous one's last sign of life"
        previous_last = max(marks)
        assert attempt["log"], f"attempt {number} ran but has no log: {info['attempts']}"
        with open(os.path.join(cluster.spool.folder(job_id).path, attempt["log"])) as handle:
            assert f"attempt {number} started" in handle.read()


def fsck(cluster, *args):
    env = spool_env(cluster.root, cluster.tmp_path, **FAST)
    return subprocess.run([sys.executable, "-m", "opeva_spool.cli", "fsck", "--json", *args], capture_output=True,
                          text=True, env=env, cwd=PROJECT_ROOT, timeout=60)


def check_tree(cluster):
    """fsck: clean now (what is young may be in flight), and with nothing left once the server's leftovers
    younger than its recovery's 60 s (a crash a moment ago) are collected, with the server and agent stopped."""
    checked = fsck(cluster)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    cluster.close()
    repaired = fsck(cluster, "--repair", "--min-age", "0")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    report = json.loads(fsck(cluster, "--min-age", "0").stdout)
    assert report["findings"] == [], report
    for name in fsio.listdir(cluster.spool.jobs_dir):  # every folder left is a job's that still has its entry
        assert any(entry.job_id == name for _, entry in cluster.spool.scan()), name


def test_kill_9_of_the_server_during_a_dataset_build_leaves_no_half_dataset_and_fsck_ends_the_build(
        tmp_path, mongo_uri, lab_site):
    cluster = Cluster(tmp_path)
    build = {"name": "lab60", "site_id": lab_site, "period": 60, "from_ts": "2024-03-30T00:00:00Z",
             "until_ts": "2024-04-01T00:00:00Z"}
    status_path = os.path.join(cluster.spool.datasets_dir, ".builds", "lab60.json")
    try:
        cluster.server_proc, cluster.http = start_server(cluster.root, tmp_path, crash_at="dataset.building",
                                                         mongo_uri=mongo_uri, **FAST)
        try:  # the build thread may kill the server before or after the 202 is sent
            cluster.http.post("/dataset", json=build, timeout=10)
        except (OSError, http.client.HTTPException):
            pass
        died_at_crash_point(cluster.server_proc)
        cluster.server_proc, cluster.http = start_server(cluster.root, tmp_path, mongo_uri=mongo_uri, **FAST)
        # The folder's rename is the build's commit: no half dataset is ever listed.
        assert not os.path.exists(os.path.join(cluster.spool.datasets_dir, "lab60"))
        assert [dataset["name"] for dataset in cluster.http.get("/datasets").json()] == []
        checked = fsck(cluster)  # the build's status is younger than the store's 600 s: maybe still building
        assert checked.returncode == 0 and json.loads(checked.stdout)["findings"][0]["pending"], checked.stdout
        os.utime(status_path, (time.time() - 3600, time.time() - 3600))  # an hour later, nobody built it
        repaired = fsck(cluster, "--repair")
        assert repaired.returncode == 0, repaired.stdout + repaired.stderr
        assert [(finding["kind"], finding["repaired"]) for finding in json.loads(repaired.stdout)["findings"]] == [
            ("dataset_build_interrupted", True)]
        assert cluster.http.get("/dataset/status/lab60").json()["state"] == "failed"
        # The name is free again: the same build now succeeds.
        assert cluster.http.post("/dataset", json=build).status == 202
        wait_for(lambda: cluster.http.get("/dataset/status/lab60").json()["state"] == "ready", timeout=60,
                 message="the rebuilt dataset to be ready")
        assert fsck(cluster, "--min-age", "0").returncode == 0
    finally:
        cluster.close()


def test_fsck_repair_beside_a_busy_server_and_agent_finds_nothing_and_changes_nothing(tmp_path):
    """Claims, endings, retries, stops and deletes go on while fsck --repair runs again and again: it must neither
    report a problem nor repair anything (each listing races the owners' renames)."""
    from opeva_spool import fsck as checker

    cluster = Cluster(tmp_path)
    try:
        cluster.start_server()
        cluster.agent_proc = start_agent(cluster.root, tmp_path, HOST, capacity=4, **FAST)
        wait_for(lambda: cluster.host_state() == "online", timeout=15, message=f"{HOST} online")
        jobs = [cluster.submit(first="0.2", later="0.1", fail_first=index % 3 == 0, retry_on_failure=True)
                for index in range(24)]
        reports = []
        deadline = time.monotonic() + 60
        for index, job_id in enumerate(jobs):
            if index % 6 == 1:
                cluster.http.post(f"/stop/{job_id}")
            elif index % 6 == 2:
                cluster.http.delete(f"/job/{job_id}?force=1")
            reports.append(checker.check(str(cluster.root), repair=True, offline_after=FAST["offline_after"]))
        while time.monotonic() < deadline and any(
                cluster.status(job_id)["status"] not in ("finished", "stopped", "canceled", "not_found")
                for job_id in jobs):
            reports.append(checker.check(str(cluster.root), repair=True, offline_after=FAST["offline_after"]))
        assert all(cluster.status(job_id)["status"] in ("finished", "stopped", "canceled", "not_found")
                   for job_id in jobs)
        for report in reports:
            assert report.clean and not any(finding.repaired for finding in report.findings), report.to_dict()
    finally:
        cluster.close()
