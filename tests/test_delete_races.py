"""DELETE racing stops, other DELETEs, agents and the index's own feeds, on a real spool with real threads."""

import functools
import os
import threading
import time

from opeva_spool.server import Server

from .clients import WsgiClient
from .conftest import make_settings, wait_for, wait_for_status

RACED_JOBS = 12


def race(*calls):
    """Run the calls at the same moment, one thread each; their answers in call order."""
    barrier = threading.Barrier(len(calls))
    answers = [None] * len(calls)

    def run(position, call):
        barrier.wait(timeout=10)
        answers[position] = call()

    threads = [threading.Thread(target=run, args=item) for item in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return answers


def job_folders(server, job_ids):
    return [job_id for job_id in job_ids if os.path.exists(server.spool.folder(job_id).path)]


def test_a_stop_racing_a_forced_delete_never_brings_the_job_folder_back(tmp_path):
    server = Server(make_settings(tmp_path, capacity=RACED_JOBS)).start()
    client = WsgiClient(server.app)
    try:
        job_ids = [client.post("/run-simulation", json={"command": ["sleep", "30"]}).json()["job_id"]
                   for _ in range(RACED_JOBS)]
        for job_id in job_ids:
            wait_for_status(client, job_id, "running")
        for job_id in job_ids:
            stop, delete = race(functools.partial(client.post, f"/stop/{job_id}"),
                                functools.partial(client.delete, f"/job/{job_id}?force=1"))
            assert delete.status == 200, delete
            assert stop.status in (200, 404, 409), stop
        # The runners see their entries gone (or the stop), kill the jobs and record how they ended.
        wait_for(lambda: not server.agent.running_job_ids(), message="every runner to end")
        assert job_folders(server, job_ids) == []
        assert all(client.get(f"/status/{job_id}").status == 404 for job_id in job_ids)
    finally:
        server.close()


def test_concurrent_deletes_of_one_job_have_exactly_one_winner(client):
    for trial in range(30):
        job_id = client.post("/run-simulation", json={"command": "true", "target_host": "gpu-b"}).json()["job_id"]
        if trial % 2:
            assert client.post(f"/stop/{job_id}").json()["status"] == "canceled"
        answers = race(*[functools.partial(client.delete, f"/job/{job_id}")] * 4)
        assert sorted(answer.status for answer in answers) == [200, 404, 404, 404], answers
        assert client.get(f"/status/{job_id}").status == 404


def test_a_stopped_and_deleted_job_stays_gone_while_late_events_and_scans_arrive(client, server):
    job_ids = [client.post("/run-simulation", json={"command": "true", "target_host": "gpu-b"}).json()["job_id"]
               for _ in range(20)]
    for job_id in job_ids:
        assert client.post(f"/stop/{job_id}").json()["status"] == "canceled"
        assert client.delete(f"/job/{job_id}").status == 200
    # The cancels' inotify events and the next listings arrive after the deletes: none may revive a job.
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        revived = [job_id for job_id in job_ids if client.get(f"/status/{job_id}").status != 404]
        assert revived == []
        time.sleep(0.02)
    assert client.get("/jobs").json() == []
    assert job_folders(server, job_ids) == []
