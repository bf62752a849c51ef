"""What /result, /progress, /job-info, /jobs and /logs serve from a job's folder.

An ended job never reads as unfinished; a file the server cannot read is a 503 naming it; a
job (root in its container, writing its own folder) cannot make the API serve anything
outside that folder through links or special files.
"""

import contextlib
import ctypes
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

import pytest

from opeva_spool import fsio
from opeva_spool.server import Server

from .clients import WsgiClient
from .conftest import PYTHON, demo_config, make_settings, wait_for, wait_for_status

SECRET = {"secret": "a JSON file on the server's host"}
NOBODY = 65534


def queued_job(client):
    """A job that stays queued: gpu-a is a known host with no agent."""
    return client.post("/run-simulation", json={"command": "true", "target_host": "gpu-a"}).json()["job_id"]


def job_file(server, job_id, name):
    """The path of ``name`` (job_info, progress, result, log) in the job's folder, its directory made."""
    path = getattr(server.spool.folder(job_id), name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def replace_with_link(path, target):
    if os.path.lexists(path):
        os.unlink(path)
    os.symlink(target, path)


@pytest.fixture
def secret(tmp_path):
    """A file beside the shared root, as /etc/passwd or any JSON on the server's host would be."""
    path = tmp_path / "outside" / "secret.json"
    path.parent.mkdir()
    path.write_text(json.dumps(SECRET))
    return path


def assert_refused(response, shown_path):
    assert response.status == 403, response
    body = response.json()
    assert body["error"] == "forbidden" and body["path"] == shown_path and shown_path in body["detail"]
    assert "secret" not in response.text


# ----- ended jobs are reported as ended (issue 7, §1.3) --------------------------------------


def test_job_that_failed_before_writing_a_result_answers_failed_not_pending(client):
    # As the real image does with an invalid config: exit 1, no result.json, no progress.json.
    script = "import sys; print('config invalid', file=sys.stderr); sys.exit(3)"
    job_id = client.post("/run-simulation", json={"command": [PYTHON, "-c", script]}).json()["job_id"]
    wait_for_status(client, job_id, "failed")
    for route in ("result", "progress"):
        body = client.get(f"/{route}/{job_id}").json()
        assert body["status"] == "failed" and body["exit_code"] == 3 and body["reason"] == "exit_code", body
        assert "failed" in body["message"] and "exit code 3" in body["message"]


def test_stopped_job_progress_and_result_say_stopped_not_running(client, server):
    job_id = client.post("/run-simulation", json={"config": demo_config(episodes=50, steps=50, step_seconds=0.05)}
                         ).json()["job_id"]
    wait_for(lambda: client.get(f"/progress/{job_id}").json().get("status") == "running", message="progress running")
    client.post(f"/stop/{job_id}")
    wait_for_status(client, job_id, "stopped")
    with open(server.spool.folder(job_id).progress) as handle:
        on_disk = json.load(handle)
    assert on_disk["status"] == "running"  # the job was killed: its file still says so

    progress = client.get(f"/progress/{job_id}").json()
    assert progress["status"] == "stopped" and progress["reason"] == "stop_requested"
    # The file's fields are kept: how far it got.
    assert {key: progress[key] for key in ("progress_pct", "episode", "global_step")} == \
        {key: on_disk[key] for key in ("progress_pct", "episode", "global_step")}
    assert "'running'" in progress["message"]
    result = client.get(f"/result/{job_id}").json()
    assert result["status"] == "stopped" and result["exit_code"] in (-15, 143) and result["message"]


def test_finished_job_whose_progress_stopped_at_running_says_finished(client):
    script = ("import json, os\n"
              "folder = os.path.join(os.environ['OPEVA_BASE_DIR'], 'jobs', os.environ['OPEVA_JOB_ID'], 'progress')\n"
              "os.makedirs(folder, exist_ok=True)\n"
              "json.dump({'status': 'running', 'progress_pct': 40.0, 'episode': 2},"
              " open(os.path.join(folder, 'progress.json'), 'w'))\n")
    job_id = client.post("/run-simulation", json={"command": [PYTHON, "-c", script]}).json()["job_id"]
    wait_for_status(client, job_id, "finished")
    progress = client.get(f"/progress/{job_id}").json()
    assert progress["status"] == "finished" and progress["exit_code"] == 0
    assert progress["progress_pct"] == 40.0 and progress["episode"] == 2


def test_finished_job_files_that_tell_the_ending_are_served_as_written(client):
    job_id = client.post("/run-simulation", json={"config": demo_config()}).json()["job_id"]
    wait_for_status(client, job_id, "finished")
    progress = client.get(f"/progress/{job_id}").json()
    assert progress["status"] == "completed" and "message" not in progress and "exit_code" not in progress
    assert client.get(f"/result/{job_id}").json()["status"] == "completed"


def test_unfinished_job_keeps_the_original_shapes(client, server):
    job_id = queued_job(client)
    assert client.get(f"/result/{job_id}").json() == {"status": "pending", "message": "Result not ready yet."}
    assert client.get(f"/progress/{job_id}").json() == {"progress": "No updates yet."}
    with open(job_file(server, job_id, "progress"), "w") as handle:
        json.dump({"status": "running", "progress_pct": 12.5}, handle)
    assert client.get(f"/progress/{job_id}").json() == {"status": "running", "progress_pct": 12.5, "percent": 12.5}


# ----- a file the server cannot read is a 503 naming it (issue 7, §1.5) ----------------------


@contextlib.contextmanager
def filesystem_user(uid):
    """This thread's file access as ``uid`` (setfsuid is per thread): what a server running as a
    service user meets, while the rest of the test process stays root."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.setfsgid(uid)
    libc.setfsuid(uid)
    try:
        yield
    finally:
        libc.setfsuid(0)
        libc.setfsgid(0)


@pytest.fixture
def service_user_server():
    """A server whose shared root is owned by a service user (uid 65534), outside pytest's 0700 temp dir."""
    base = Path(tempfile.mkdtemp(prefix="opeva-share-"))
    base.chmod(0o755)
    server = Server(make_settings(base)).start()
    try:
        yield server
    finally:
        server.close()
        shutil.rmtree(base)


def test_unreadable_progress_and_result_answer_503_with_path_and_reason(service_user_server):
    server, client = service_user_server, WsgiClient(service_user_server.app)
    job_id = queued_job(client)
    progress, result = job_file(server, job_id, "progress"), job_file(server, job_id, "result")
    for directory, _, files in os.walk(server.spool.root):
        for name in [directory, *(os.path.join(directory, file) for file in files)]:
            os.chown(name, NOBODY, NOBODY)
    # As a container's root writes them: owned by root, mode 0600.
    for path in (progress, result):
        with open(path, "w") as handle:
            json.dump({"status": "running"}, handle)
        os.chmod(path, 0o600)

    with filesystem_user(NOBODY):
        with pytest.raises(PermissionError):  # the premise: this thread really cannot read it
            open(progress).close()
        answers = {name: client.get(f"/{name}/{job_id}") for name in ("progress", "result")}
        os.unlink(result)  # a missing file is still the normal "not ready"
        missing = client.get(f"/result/{job_id}")
    for name, response in answers.items():
        shown = os.path.relpath(getattr(server.spool.folder(job_id), name), server.spool.root)
        assert response.status == 503, response
        body = response.json()
        assert body["error"] == "unavailable" and body["path"] == shown and body["reason"] == "Permission denied"
        assert shown in body["detail"] and "Permission denied" in body["detail"]
    assert missing.json() == {"status": "pending", "message": "Result not ready yet."}


# ----- nothing outside the job's folder is served (issue 7, §2.1) ----------------------------


def test_links_out_of_a_job_folder_are_refused_on_every_reading_route(client, http, server, secret):
    job_id = queued_job(client)
    shown = {}
    for name in ("progress", "result", "job_info", "log"):
        path = job_file(server, job_id, name)
        replace_with_link(path, secret)
        shown[name] = os.path.relpath(path, server.spool.root)

    assert_refused(client.get(f"/progress/{job_id}"), shown["progress"])
    assert_refused(client.get(f"/result/{job_id}"), shown["result"])
    assert_refused(client.get(f"/job-info/{job_id}"), shown["job_info"])
    assert_refused(http.get(f"/logs/{job_id}"), shown["log"])
    assert_refused(http.get(f"/file-logs/{job_id}?tail=5"), shown["log"])
    listing = http.get("/jobs")
    assert listing.status == 200 and "secret" not in listing.text
    assert [item["job_info"] for item in listing.json()] == [{}]


def test_a_linked_directory_or_job_folder_counts_as_outside(client, server, secret):
    job_id = queued_job(client)
    folder = server.spool.folder(job_id)
    os.symlink(secret.parent, os.path.join(folder.path, "results"))
    os.rename(secret, secret.parent / "result.json")
    assert_refused(client.get(f"/result/{job_id}"), f"jobs/{job_id}/results/result.json")

    (secret.parent / "job_info.json").write_text(json.dumps(SECRET))
    shutil.rmtree(folder.path)
    os.symlink(secret.parent, folder.path)
    assert_refused(client.get(f"/job-info/{job_id}"), f"jobs/{job_id}/job_info.json")


def test_a_link_that_stays_inside_the_job_folder_is_followed(client, server):
    job_id = queued_job(client)
    folder = server.spool.folder(job_id)
    with open(os.path.join(folder.path, "progress-latest.json"), "w") as handle:
        json.dump({"status": "running", "progress_pct": 50}, handle)
    replace_with_link(job_file(server, job_id, "progress"), "../progress-latest.json")
    log = job_file(server, job_id, "log")
    with open(os.path.join(os.path.dirname(log), "run.log"), "w") as handle:
        handle.write("hello\n")
    replace_with_link(log, "run.log")
    assert client.get(f"/progress/{job_id}").json() == {"status": "running", "progress_pct": 50, "percent": 50}
    assert client.get(f"/logs/{job_id}").text == "hello\n"


def test_a_fifo_planted_as_a_job_file_is_refused_without_blocking(client, server):
    job_id = queued_job(client)
    fifos = {name: job_file(server, job_id, name) for name in ("progress", "log")}
    for path in fifos.values():
        os.mkfifo(path)
    for route, name in (("progress", "progress"), ("logs", "log")):
        answer = {}
        reader = threading.Thread(target=lambda url, into: into.update(response=client.get(url)),
                                  args=(f"/{route}/{job_id}", answer))
        reader.start()
        reader.join(5)
        if reader.is_alive():  # blocked opening the FIFO: give it a writer so the thread ends, then fail
            os.close(os.open(fifos[name], os.O_WRONLY | os.O_NONBLOCK))
            reader.join(5)
            pytest.fail(f"/{route} blocked on a FIFO")
        assert_refused(answer["response"], os.path.relpath(fifos[name], server.spool.root))


def test_a_job_json_file_over_the_limit_is_refused_not_read_whole(tmp_path):
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "result.json").write_text(json.dumps({"pad": "x" * 100}))
    assert fsio.read_job_json(str(folder / "result.json"), str(folder), limit=1000)["pad"] == "x" * 100
    with pytest.raises(fsio.Refused, match="larger than 50 bytes"):
        fsio.read_job_json(str(folder / "result.json"), str(folder), limit=50)


def test_a_log_planted_as_a_link_is_never_written_through(client, server, tmp_path):
    """A job (root in its container) may replace its log by a link to a file of the host between
    attempts; the agent and the runtime must not append to that file."""
    outside = tmp_path / "authorized_keys"
    outside.write_text("untouched\n")
    server.spool.request_drain("local")  # hold the job back until the link is planted
    job_id = client.post("/run-simulation", json={"command": [PYTHON, "-c", "print('hi')"]}).json()["job_id"]
    os.symlink(outside, job_file(server, job_id, "log"))
    server.spool.request_drain("local", undo=True)
    wait_for_status(client, job_id, "failed")
    assert outside.read_text() == "untouched\n"
    assert client.get(f"/job-info/{job_id}").json()["reason"] == "start_failed"
