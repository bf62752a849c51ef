"""What survives a crash: accepted jobs survive kill -9; half-published ones never appear."""

import http.client
import os
import signal
import threading
import time

import pytest

from opeva_spool import fsio
from opeva_spool.jobs import build_spec
from opeva_spool.server import Server
from opeva_spool.spool import Entry

from .clients import WsgiClient
from .conftest import make_settings, wait_for
from .processes import start_server, stop

pytestmark = pytest.mark.slow


def test_jobs_accepted_before_kill_9_are_there_after_restart(tmp_path):
    root = tmp_path / "share"
    server, client = start_server(root, tmp_path, embedded_worker="false", hosts="local,gpu-a")
    accepted, lock = [], threading.Lock()
    killing = threading.Event()

    def submit_until_killed():
        while not killing.is_set():
            try:
                response = client.post("/run-simulation", json={"command": "true", "target_host": "gpu-a"}, timeout=5)
            except (OSError, http.client.HTTPException):
                return  # the server died under this request: it was never acknowledged
            if response.status == 200:
                with lock:
                    accepted.append(response.json()["job_id"])

    clients = [threading.Thread(target=submit_until_killed) for _ in range(4)]
    for thread in clients:
        thread.start()
    wait_for(lambda: len(accepted) >= 100, timeout=30, message="100 accepted submissions")
    server.send_signal(signal.SIGKILL)  # in the middle of the stream of submissions
    server.wait()
    killing.set()
    for thread in clients:
        thread.join()

    server, client = start_server(root, tmp_path, embedded_worker="false", hosts="local,gpu-a")
    try:
        for job_id in accepted:
            assert client.get(f"/status/{job_id}").json()["status"] == "queued", job_id
        listed = client.get("/jobs?limit=1000&status=queued")
        assert {job["job_id"] for job in listed.json()} >= set(accepted)
        # Whatever was half-published at the kill is either a whole queued job or gone.
        for name in fsio.listdir(os.path.join(root, "spool", "queued")):
            job_id = Entry.parse(name).job_id
            assert os.path.exists(os.path.join(root, "jobs", job_id, "job_info.json"))
    finally:
        stop(server)


def test_half_published_job_is_never_visible_and_is_cleaned_up(tmp_path):
    settings = make_settings(tmp_path, embedded_worker=False)
    server = Server(settings)
    spool = server.spool
    # A crash between the folder rename and the entry rename: a folder with no entry.
    orphan = build_spec({"command": "true", "target_host": "gpu-a"}, ["gpu-a"], job_id="orphan-1")
    os.makedirs(os.path.join(spool.jobs_dir, orphan.job_id, "logs"))
    fsio.atomic_write_json(spool.folder(orphan.job_id).job_info, orphan.job_info())
    # A crash while staging: a staging dir with a complete entry that was never renamed.
    stage = os.path.join(spool.staging_dir, "deadbeef")
    os.makedirs(stage)
    fsio.atomic_write_json(os.path.join(stage, "job_info.json"), {"job_id": "staged-1"})
    fsio.atomic_write_json(stage + ".entry", {"job_id": "staged-1"})
    assert WsgiClient(server.app).get("/status/orphan-1").status == 404
    old = time.time() - 3600
    for path in (spool.folder(orphan.job_id).path, stage, stage + ".entry"):
        os.utime(path, (old, old))

    restarted = Server(settings)  # recovery runs at start-up
    client = WsgiClient(restarted.app)
    assert client.get("/status/orphan-1").status == 404
    assert client.get("/status/staged-1").status == 404
    assert client.get("/jobs").json() == []
    assert not os.path.exists(spool.folder(orphan.job_id).path)
    assert fsio.listdir(spool.staging_dir) == []


def test_terminal_record_written_but_entry_not_moved_reads_terminal_and_is_completed(tmp_path):
    settings = make_settings(tmp_path, embedded_worker=False)
    server = Server(settings)
    job = WsgiClient(server.app).post("/run-simulation", json={"command": "true", "target_host": "gpu-a"}).json()
    spool = server.spool
    entry = Entry.parse(fsio.listdir(spool.queued_dir)[0])
    os.makedirs(spool.running_dir("gpu-a"))
    assert spool.claim(entry, "gpu-a", "agent-x")
    # The owner wrote its ending and died before the rename into done/.
    spool.write_attempt(entry, "gpu-a", "agent-x", "running")
    spool.write_attempt(entry, "gpu-a", "agent-x", "finished", exit_code=0)
    server.index.sync()
    client = WsgiClient(server.app)
    assert client.get(f"/status/{job['job_id']}").json()["status"] == "finished"
    spool.complete_finished("gpu-a")  # what the restarted agent does first
    server.index.sync()
    assert client.get(f"/status/{job['job_id']}").json()["status"] == "finished"
    assert fsio.listdir(spool.done_path("finished")) == [entry.name]
