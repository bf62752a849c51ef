"""retry_on_failure: a job that exits non-zero runs again, up to max_retries, after a backoff; every attempt is kept."""

import os

import pytest

from opeva_spool import fsio
from opeva_spool.agent import retry_delay
from opeva_spool.jobs import build_spec, parse_utc
from opeva_spool.server import Server
from opeva_spool.spool import QUEUED, RUNNING, Location
from opeva_spool.states import EndReason, JobState

from .clients import WsgiClient
from .conftest import PYTHON, make_settings, wait_for_status

# Prints its attempt, fails (exit 3) before attempt ``OK_FROM``.
FLAKY = [PYTHON, "-c", "import os, sys\na = int(os.environ['OPEVA_ATTEMPT'])\nprint(f'this is attempt {a}')\n"
                       "sys.exit(0 if a >= int(os.environ['OK_FROM']) else 3)"]
QUICK_RETRIES = [{"retry_backoff": 0.2, "retry_backoff_max": 0.3}]


def test_retry_delay_doubles_per_attempt_up_to_its_cap():
    assert [retry_delay(attempt, 10.0, 600.0) for attempt in (1, 2, 3, 6, 7, 20)] == [10, 20, 40, 320, 600, 600]


@pytest.mark.parametrize("settings", QUICK_RETRIES, indirect=True)
def test_flaky_job_is_retried_until_it_succeeds_with_each_attempts_record_and_log(client):
    job = client.post("/run-simulation", json={"command": FLAKY, "env": {"OK_FROM": "3"}, "retry_on_failure": True,
                                               "max_retries": 5}).json()
    job_id = job["job_id"]
    wait_for_status(client, job_id, "finished")
    info = client.get(f"/job-info/{job_id}").json()
    assert info["attempt"] == 3 and info["exit_code"] == 0
    attempts = info["attempts"]
    assert [(a["attempt"], a["state"], a["exit_code"]) for a in attempts] == [
        (1, "failed", 3), (2, "failed", 3), (3, "finished", 0)]
    assert all(a["reason"] == EndReason.EXIT_CODE and a["retry_at"] for a in attempts[:2])
    assert attempts[2]["retry_at"] is None and attempts[2]["reason"] is None
    assert [a["log"] for a in attempts] == [f"logs/{job_id}.attempt-1.log", f"logs/{job_id}.attempt-2.log",
                                            f"logs/{job_id}.log"]
    for a in attempts:
        # The backoff doubles: 0.2 s after attempt 1, 0.3 s (the cap) after attempt 2.
        if a["retry_at"]:
            waited = (parse_utc(a["retry_at"]) - parse_utc(a["ended_at"])).total_seconds()
            assert -1 < waited < 1.5
        log = client.get(f"/logs/{job_id}?attempt={a['attempt']}").text
        assert f"this is attempt {a['attempt']}" in log and log.count("this is attempt") == 1
    assert "attempt 2 of 6" in client.get(f"/logs/{job_id}?attempt=1").text  # the agent's note of the retry


@pytest.mark.parametrize("settings", QUICK_RETRIES, indirect=True)
def test_retries_end_failed_once_max_retries_are_spent(client):
    job = client.post("/run-simulation", json={"command": FLAKY, "env": {"OK_FROM": "99"}, "retry_on_failure": True,
                                               "max_retries": 1}).json()
    wait_for_status(client, job["job_id"], "failed")
    info = client.get(f"/job-info/{job['job_id']}").json()
    assert info["attempt"] == 2 and info["exit_code"] == 3 and info["reason"] == EndReason.EXIT_CODE
    assert [a["state"] for a in info["attempts"]] == ["failed", "failed"]
    assert info["attempts"][0]["retry_at"] and info["attempts"][1]["retry_at"] is None


@pytest.mark.parametrize("settings", QUICK_RETRIES, indirect=True)
def test_max_retries_alone_does_not_rerun_a_job_that_exited_non_zero(client):
    job = client.post("/run-simulation", json={"command": FLAKY, "env": {"OK_FROM": "2"}, "max_retries": 3}).json()
    wait_for_status(client, job["job_id"], "failed")
    assert client.get(f"/job-info/{job['job_id']}").json()["attempt"] == 1


@pytest.mark.parametrize("settings", QUICK_RETRIES, indirect=True)
def test_a_job_whose_stop_was_requested_is_not_retried(client):
    # The job asks for its own stop (as POST /stop would), then fails at once: however the agent sees it first,
    # as a stop or as the failure, the job ends there.
    stop_and_fail = [PYTHON, "-c", "import os, sys\n"
                                   "base, job = os.environ['OPEVA_BASE_DIR'], os.environ['OPEVA_JOB_ID']"
                                   "\nopen(f'{base}/spool/requests/{job}.stop', 'w').close()\nsys.exit(3)"]
    job = client.post("/run-simulation", json={"command": stop_and_fail, "retry_on_failure": True,
                                               "max_retries": 3}).json()
    wait_for_status(client, job["job_id"], ("failed", "stopped"))
    info = client.get(f"/job-info/{job['job_id']}").json()
    assert info["attempt"] == 1 and info["attempts"][0]["retry_at"] is None


def claimed(spool, spec, host="gpu-a"):
    """``spec`` published and claimed by ``host`` (by the spool's own calls), as its agent would."""
    entry = spool.publish(spec)
    fsio.makedirs(spool.running_dir(host))  # as its agent does when it starts
    assert spool.claim(entry, host, "agent-1")
    spool.write_attempt(entry, host, "agent-1", JobState.RUNNING, started_at="2026-01-01T00:00:00Z")
    return entry


def test_retry_records_retry_at_then_requeues_the_next_attempt_which_retry_at_reports(tmp_path):
    server = Server(make_settings(tmp_path, embedded_worker=False))
    spool = server.spool
    spec = build_spec({"command": "false", "target_host": "gpu-a", "retry_on_failure": True, "max_retries": 2},
                      ["gpu-a"], job_id="flaky-1")
    entry = claimed(spool, spec)
    assert spool.retry_at(entry) is None  # a first attempt may run at once
    new = spool.retry(entry, "gpu-a", "agent-1", 30.0, exit_code=3, reason=EndReason.EXIT_CODE)
    assert new == entry.next_attempt()
    assert os.path.exists(spool.entry_path(Location(QUEUED), new))
    record = spool.read_attempt(entry)
    assert record["state"] == "failed" and record["exit_code"] == 3
    assert 29 < (spool.retry_at(new) - parse_utc(record["ended_at"])).total_seconds() < 32
    assert spool.retry_at(new) == parse_utc(record["retry_at"])


def test_a_superseded_attempt_cannot_requeue_its_job(tmp_path):
    server = Server(make_settings(tmp_path, embedded_worker=False))
    spool = server.spool
    spec = build_spec({"command": "false", "target_host": "any", "retry_on_failure": True, "max_retries": 2},
                      ["gpu-a"], job_id="flaky-2")
    entry = claimed(spool, spec)
    requeued = spool.requeue(entry, "gpu-a")  # the server judged the host lost first
    fsio.makedirs(spool.running_dir("gpu-b"))
    assert spool.claim(requeued, "gpu-b", "agent-2")  # and another host runs attempt 2 already
    assert spool.retry(entry, "gpu-a", "agent-1", 1.0, exit_code=3) is None
    assert os.listdir(spool.queued_dir) == []  # no second attempt 2, and no attempt 3
    assert os.listdir(spool.running_dir("gpu-b")) == [requeued.name]
    # Had the server's requeue not been claimed yet, both renames aim at the same name: the job is queued once.


def test_an_agent_killed_between_the_retry_record_and_its_rename_still_retries_the_job(tmp_path):
    """The record says failed-with-retry_at while the entry is still in running/: the job is queued, not failed,
    and the host's restarted agent requeues it (a lost host's would be requeued by the server alike)."""
    settings = make_settings(tmp_path)
    server = Server(settings)  # not started: its embedded worker for "local" plays the restarted agent
    spool = server.spool
    spec = build_spec({"command": "true", "target_host": "local", "retry_on_failure": True, "max_retries": 1},
                      ["local"], job_id="flaky-3")
    entry = claimed(spool, spec, host="local")
    spool.write_attempt(entry, "local", "agent-1", JobState.FAILED, exit_code=3, retry_at="2026-01-01T00:00:00Z")
    assert spool.state_at(Location(RUNNING, "local"), entry) == JobState.QUEUED
    assert spool.recorded_ending(entry) is None
    server.start()
    try:
        client = WsgiClient(server.app)
        wait_for_status(client, "flaky-3", "finished")
        info = client.get("/job-info/flaky-3").json()
        assert [a["state"] for a in info["attempts"]] == ["failed", "finished"]
    finally:
        server.close()



def test_each_attempts_log_is_kept_under_its_own_number_also_after_an_attempt_that_never_started(tmp_path):
    server = Server(make_settings(tmp_path, embedded_worker=False))
    spool, client = server.spool, WsgiClient(server.app)
    spec = build_spec({"command": "false", "target_host": "gpu-a", "retry_on_failure": True, "max_retries": 3},
                      ["gpu-a"], job_id="logs-1")
    folder = spool.folder(spec.job_id)
    first = claimed(spool, spec)
    os.makedirs(os.path.dirname(folder.log))
    with open(folder.log, "w") as log:
        log.write("attempt 1 ran\n")
    second = spool.retry(first, "gpu-a", "agent-1", 0.0, exit_code=3)
    server.index.place(Location(QUEUED), second)
    # Queued for its retry: the job's log is still attempt 1's, and attempt 2 has none yet.
    assert [a["log"] for a in client.get("/job-info/logs-1").json()["attempts"]] == ["logs/logs-1.log", None]
    assert client.get("/logs/logs-1?attempt=1").text == "attempt 1 ran\n"

    assert spool.claim(second, "gpu-a", "agent-1")
    third = spool.requeue(second, "gpu-a")  # its host was lost before attempt 2 started: it wrote no log
    server.index.place(Location(QUEUED), third)
    assert [a["log"] for a in client.get("/job-info/logs-1").json()["attempts"]] == ["logs/logs-1.log", None, None]
    assert client.get("/logs/logs-1?attempt=1").text == "attempt 1 ran\n"
    assert client.get("/logs/logs-1?attempt=2").text == ""

    # Attempt 3's runner moves attempt 1's log aside under attempt 1's number, not 2's.
    assert spool.claim(third, "gpu-a", "agent-1")
    os.replace(folder.log, folder.attempt_log(spool.log_attempt(third)))
    with open(folder.log, "w") as log:
        log.write("attempt 3 ran\n")
    server.index.place(Location(RUNNING, "gpu-a"), third)
    assert [a["log"] for a in client.get("/job-info/logs-1").json()["attempts"]] == [
        "logs/logs-1.attempt-1.log", None, "logs/logs-1.log"]
    assert client.get("/logs/logs-1?attempt=1").text == "attempt 1 ran\n"
    assert client.get("/logs/logs-1?attempt=3").text == "attempt 3 ran\n"


@pytest.mark.docker
def test_a_container_job_is_retried_with_each_attempts_log_kept(tmp_path, docker_engine, busybox_image):
    settings = make_settings(tmp_path, runtime="docker", docker_host=docker_engine[0], default_image=busybox_image,
                             retry_backoff=0.2)
    server = Server(settings).start()
    try:
        client = WsgiClient(server.app)
        job_id = client.post("/run-simulation", json={
            "command": "sh -c 'echo container attempt $OPEVA_ATTEMPT; [ $OPEVA_ATTEMPT -ge 2 ]'",
            "retry_on_failure": True, "max_retries": 1}).json()["job_id"]
        wait_for_status(client, job_id, "finished", timeout=60)
        attempts = client.get(f"/job-info/{job_id}").json()["attempts"]
        assert [(a["state"], a["exit_code"]) for a in attempts] == [("failed", 1), ("finished", 0)]
        for a in attempts:
            assert f"container attempt {a['attempt']}" in client.get(f"/logs/{job_id}?attempt={a['attempt']}").text
    finally:
        server.close()
