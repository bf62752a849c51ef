"""Accounting: queue wait and run time in /jobs and job-info, and GET /usage by user and by host, from the
attempt records the spool's own calls write (an agent's claim, start and finish, with their times set)."""

import datetime as dt
import os
import time

import pytest

from opeva_spool.server import Server
from opeva_spool.spool import QUEUED, Location
from opeva_spool.states import JobState

from .clients import WsgiClient

# No agent runs (not even the embedded one): the test plays the agents, and no host is judged lost meanwhile.
pytestmark = pytest.mark.parametrize("settings", [{"offline_after": 3600.0, "embedded_worker": False}], indirect=True)
HOUR = 3600.0


def iso(epoch):
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat()


def submit(client, submitted_by="alice", target="gpu-a"):
    answer = client.post("/run-simulation", json={"command": "true", "target_host": target,
                                                  "submitted_by": submitted_by})
    assert answer.status == 200, answer
    return answer.json()["job_id"]


def entry_of(server, job_id):
    return server.jobs.lookup(job_id).entry


def run_attempt(server, job_id, host, started, ended=None, claimed=None, gpus=(), state=JobState.FINISHED):
    """Claim the job's current attempt for ``host`` and start it at ``started`` (epoch s); with ``ended``,
    finish it as ``state`` then. Returns the entry."""
    spool = server.spool
    entry = entry_of(server, job_id)
    agent = f"agent-{host}"
    os.makedirs(spool.running_dir(host), exist_ok=True)  # as the host's agent does when it starts
    assert spool.claim(entry, host, agent)
    spool.write_attempt(entry, host, agent, JobState.RUNNING, claimed_at=iso(claimed or started),
                        started_at=iso(started), gpus=[str(gpu) for gpu in gpus])
    if ended is not None:
        assert spool.finish(entry, host, agent, state, exit_code=0 if state == JobState.FINISHED else 1)
        spool.write_attempt(entry, host, agent, state, ended_at=iso(ended))  # the end we want, not now
    return entry


def lose_attempt(server, entry, host):
    """The host of a running attempt is lost: the attempt goes back to the queue as the next one."""
    requeued = server.spool.requeue(entry, host)
    assert requeued is not None
    server.index.place(Location(QUEUED), requeued)  # as the liveness monitor tells the index
    return requeued


def item(client, job_id):
    return next(row for row in client.get("/jobs?limit=1000").json() if row["job_id"] == job_id)


def test_a_queued_or_waiting_job_shows_its_wait_so_far_and_no_run_time_and_counts_for_no_usage(server, client):
    queued = submit(client)
    waiting = client.post("/run-simulation", json={"command": "true", "target_host": "gpu-a", "after": [queued]}).json()
    assert waiting["status"] == "waiting"
    time.sleep(0.2)
    for job_id in (queued, waiting["job_id"]):
        for shown in (item(client, job_id), client.get(f"/job-info/{job_id}").json()):
            assert 0.2 <= shown["queue_wait_seconds"] < 10
            assert shown["run_seconds"] == 0
    assert client.get("/usage").json()["rows"] == []


def test_an_ended_job_shows_its_wait_until_the_first_claim_and_its_run_time_in_jobs_and_job_info(server, client):
    job_id = submit(client)
    submitted = entry_of(server, job_id).submit_ns / 1e9
    run_attempt(server, job_id, "gpu-a", claimed=submitted + 90, started=submitted + 100,
                ended=submitted + 100 + 1800)
    for shown in (item(client, job_id), client.get(f"/job-info/{job_id}").json()):
        assert shown["status"] == "finished"
        assert shown["queue_wait_seconds"] == pytest.approx(90, abs=0.01)
        assert shown["run_seconds"] == pytest.approx(1800, abs=0.01)


def test_run_time_sums_every_attempt_and_counts_a_running_one_up_to_now(server, client):
    job_id = submit(client)
    now = time.time()
    first = run_attempt(server, job_id, "gpu-a", started=now - 2 * HOUR)
    lose_attempt(server, first, "gpu-a")  # attempt 1 ran until its record was last written: now
    run_attempt(server, job_id, "gpu-b", started=now - 600)
    shown = client.get(f"/job-info/{job_id}").json()
    assert shown["status"] == "running" and shown["attempt"] == 2
    assert shown["run_seconds"] == pytest.approx(2 * HOUR + 600, abs=10)
    assert shown["queue_wait_seconds"] == 0  # claimed (as recorded) before it was submitted: never negative
    time.sleep(1.1)
    assert client.get(f"/job-info/{job_id}").json()["run_seconds"] > shown["run_seconds"]


def test_usage_by_user_and_by_host_counts_jobs_attempts_run_hours_and_gpu_hours(server, client):
    now = time.time()
    alice_a, alice_b = submit(client, "alice"), submit(client, "alice", target="gpu-b")
    run_attempt(server, alice_a, "gpu-a", now - 5 * HOUR, now - 3 * HOUR, gpus=(0, 1))  # 2 h on 2 GPUs
    run_attempt(server, alice_b, "gpu-b", now - 2 * HOUR, now - 1 * HOUR, state=JobState.FAILED)  # 1 h, no GPU
    bob = submit(client, "bob", target="any")
    lost = run_attempt(server, bob, "gpu-a", now - 4 * HOUR, gpus=(0,))
    lose_attempt(server, lost, "gpu-a")  # ran 4 h: until its record was last written, now
    run_attempt(server, bob, "gpu-b", now - 1 * HOUR, now - 0.5 * HOUR, gpus=(3,))  # 0.5 h on 1 GPU
    submit(client, "carol")  # queued: nothing ran

    by_user = client.get("/usage?by=user").json()
    assert by_user["by"] == "user" and by_user["since"] is None
    assert by_user["rows"] == [
        {"user": "bob", "jobs": 1, "attempts": 2, "run_hours": pytest.approx(4.5, abs=0.01),
         "gpu_hours": pytest.approx(4.5, abs=0.01)},  # most GPU hours first
        {"user": "alice", "jobs": 2, "attempts": 2, "run_hours": 3.0, "gpu_hours": 4.0},
    ]
    assert by_user["total"] == {"jobs": 3, "attempts": 4, "run_hours": pytest.approx(7.5, abs=0.01),
                                "gpu_hours": pytest.approx(8.5, abs=0.01)}
    by_host = client.get("/usage?by=host").json()
    assert by_host["rows"] == [
        {"host": "gpu-a", "jobs": 2, "attempts": 2, "run_hours": pytest.approx(6.0, abs=0.01),
         "gpu_hours": pytest.approx(8.0, abs=0.01)},
        {"host": "gpu-b", "jobs": 2, "attempts": 2, "run_hours": 1.5, "gpu_hours": 0.5},
    ]
    assert client.get("/usage").json()["by"] == "user"  # the default


def test_usage_since_counts_only_the_hours_after_it(server, client):
    now = time.time()
    old, recent = submit(client, "alice"), submit(client, "alice")
    run_attempt(server, old, "gpu-a", now - 30 * HOUR, now - 26 * HOUR)  # a day ago: left out
    run_attempt(server, recent, "gpu-a", now - 2 * HOUR, gpus=(0, 1))  # still running: its last hour counts
    since = dt.datetime.fromtimestamp(now - HOUR, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    answer = client.get(f"/usage?by=user&since={since}").json()
    assert answer["since"] == since
    assert answer["rows"] == [{"user": "alice", "jobs": 1, "attempts": 1, "run_hours": pytest.approx(1.0, abs=0.01),
                               "gpu_hours": pytest.approx(2.0, abs=0.02)}]
    # A date alone is midnight UTC; everything ran after 2000-01-01.
    assert client.get("/usage?since=2000-01-01").json()["total"]["jobs"] == 2


def test_usage_refuses_an_unknown_grouping_and_a_since_that_is_no_time(server, client):
    for query, field in (("by=team", "by"), ("since=yesterday", "since"), ("since=2026-13-01", "since")):
        answer = client.get(f"/usage?{query}")
        assert answer.status == 400, query
        assert answer.json()["error"] == "bad_request" and answer.json()["field"] == field


def test_usage_reads_an_ended_attempts_record_once_and_forgets_a_deleted_job(server, client):
    now = time.time()
    job_id = submit(client, "alice")
    entry = run_attempt(server, job_id, "gpu-a", now - HOUR, now)
    assert client.get("/usage?by=host").json()["rows"][0]["host"] == "gpu-a"
    # An ended attempt's record never changes; were it rewritten, the figures already read stand.
    server.spool.write_attempt(entry, "gpu-b", "agent-x", JobState.FINISHED)
    assert client.get("/usage?by=host").json()["rows"][0]["host"] == "gpu-a"
    assert client.delete(f"/job/{job_id}").status == 200
    assert client.get("/usage?by=host").json()["rows"] == []
    assert (job_id, entry.submit_ns, 1) not in server.jobs.ledger._ended


def test_a_restarted_server_reads_the_ended_attempts_again_for_its_first_usage(server, settings, client):
    now = time.time()
    job_ids = [submit(client, "alice") for _ in range(3)]
    for job_id in job_ids:
        run_attempt(server, job_id, "gpu-a", now - HOUR, now - HOUR / 2)
    server.close()
    restarted = Server(settings).start()
    try:
        assert not restarted.jobs.ledger._ended  # nothing is read ahead at start-up
        assert WsgiClient(restarted.app).get("/usage").json()["total"] == {"jobs": 3, "attempts": 3,
                                                                          "run_hours": 1.5, "gpu_hours": 0.0}
        assert len(restarted.jobs.ledger._ended) == 3
    finally:
        restarted.close()
