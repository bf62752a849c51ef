"""Group commit of submissions (Spool.publish, fsio.GroupCommit): concurrent submits share their flushes,
none is answered before a flush that began after its entry's commit rename has ended, a failed flush fails
every request of its batch with a JSON error and leaves nothing, and a server killed in the middle of
batches loses no submit it answered.

The in-process tests serve the server's app with waitress on 127.0.0.1 and wrap the spool's real flush in a
hook that records what each flush covered (the entries in queued/ when it began) and can hold it or make
it fail; the crash tests kill a real server process (kill -9 from outside, or OPEVA_CRASH_AT).
"""

import errno
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from opeva_spool import fsio
from opeva_spool.server import Server
from opeva_spool.spool import Spool

from .clients import ThreadedServer
from .conftest import make_settings, wait_for
from .processes import PROJECT_ROOT, spool_env, start_server, stop

CLIENTS = 8
BODY = {"command": "true", "target_host": "gpu-a", "submitted_by": "ada"}


class FlushHook:
    """Wraps a spool's real flushes (of files: before the commit rename; of directories: after it): records each
    flush (its kind, the entries in queued/ when it began, when it ended), holds flushes while ``gate`` is clear,
    and raises ``failure`` from the flushes of the kind ``fails`` names."""

    def __init__(self, spool):
        self.spool = spool
        self.gate = threading.Event()
        self.gate.set()
        self.failure = None
        self.fails = None
        self.flushes = []
        spool._files_commit = fsio.GroupCommit(lambda paths: self.flush("files", spool._flush_files, paths))
        spool._dirs_commit = fsio.GroupCommit(lambda paths: self.flush("dirs", fsio.fsync_each, paths))

    def flush(self, kind, real, paths):
        queued = set(os.listdir(self.spool.queued_dir))
        assert self.gate.wait(30)
        if self.failure is not None and self.fails == kind:
            raise self.failure
        real(paths)
        self.flushes.append({"kind": kind, "queued": queued, "ended": time.monotonic()})


def submit_concurrently(port, count=CLIENTS):
    """Start ``count`` threads, each POSTing one submission on its own connection; returns (threads, answers):
    answers gets (status, body, monotonic time the answer arrived) per thread as they come."""
    answers = []

    def one():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("POST", "/run-simulation", body=json.dumps(BODY), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        body = json.loads(response.read())
        answers.append((response.status, body, time.monotonic()))
        conn.close()

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads, answers


def start_clients(port, answered, stop_event):
    """CLIENTS threads submitting until the server dies or ``stop_event`` is set."""
    threads = [threading.Thread(target=submit_until_killed, args=(port, answered, stop_event))
               for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    return threads


def join_all(threads):
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)


@pytest.fixture(params=["syncfs"])
def served(tmp_path, request):
    """(server, port, HttpClient): a Server without its embedded worker (``commit_flush`` as parametrized: syncfs
    unless a test says otherwise), its app served by waitress on 127.0.0.1."""
    server = Server(make_settings(tmp_path, embedded_worker=False, commit_flush=request.param)).start()
    try:
        with ThreadedServer(server.app) as http_client:
            yield server, port_of(http_client), http_client
    finally:
        server.close()


@pytest.mark.parametrize("served", ["syncfs", "fsync"], indirect=True)
def test_a_batch_is_answered_only_after_a_flush_that_covers_its_entries(served):
    server, port, http_client = served
    hook = FlushHook(server.spool)
    hook.gate.clear()  # the first flush holds: every other submission queues behind it
    threads, answers = submit_concurrently(port)
    # Every submission has built its folder and waits on a flush (of files, or with commit_flush fsync of its
    # commit rename); none is answered.
    wait_for(lambda: len(fsio.listdir(server.spool.jobs_dir)) == CLIENTS, message="8 folders built")
    if server.settings.commit_flush == "fsync":
        wait_for(lambda: len(fsio.listdir(server.spool.queued_dir)) == CLIENTS, message="8 entries committed")
    time.sleep(0.2)  # a request that wrongly skipped the flush would answer now
    assert answers == []
    if server.settings.commit_flush == "syncfs":
        assert fsio.listdir(server.spool.queued_dir) == []  # no entry is committed before its data is flushed
    hook.gate.set()
    join_all(threads)

    assert [status for status, _, _ in answers] == [200] * CLIENTS
    queued = os.listdir(server.spool.queued_dir)
    for _, body, answered_at in answers:
        [entry_name] = [name for name in queued if name.endswith(f"_{body['job_id']}.json")]
        assert any(flush["kind"] == "dirs" and entry_name in flush["queued"] and flush["ended"] <= answered_at
                   for flush in hook.flushes), (
            f"job {body['job_id']} was answered before any flush that began after its commit had ended")
    # Shared: a flush per submission if each had its own, far fewer when they wait together. (With commit_flush
    # fsync each submission fsyncs its own files: no flush of files passes through the group commit.)
    files = len([flush for flush in hook.flushes if flush["kind"] == "files"])
    assert files < CLIENTS if server.settings.commit_flush == "syncfs" else files == 0
    assert len([flush for flush in hook.flushes if flush["kind"] == "dirs"]) < CLIENTS
    assert http_client.get("/health").status == 200


@pytest.mark.parametrize(("code", "status", "error"), [
    (errno.ENOSPC, 507, "insufficient_storage"),
    (errno.EROFS, 503, "unavailable"),
    (errno.EIO, 503, "unavailable"),
])
@pytest.mark.parametrize("which", ["before the commit", "after the commit"])
def test_a_failed_flush_gives_every_request_of_its_batch_the_json_error_and_publishes_nothing(
        served, code, status, error, which):
    server, port, http_client = served
    spool = server.spool
    hook = FlushHook(spool)
    hook.failure = OSError(code, os.strerror(code))
    # The flush of files covers the staged entries (before the commit rename), that of directories the commit.
    hook.fails = "files" if which == "before the commit" else "dirs"
    hook.gate.clear()
    threads, answers = submit_concurrently(port)
    wait_for(lambda: len(fsio.listdir(spool.jobs_dir)) == CLIENTS, message="8 folders built")
    hook.gate.set()
    join_all(threads)

    assert [answer[0] for answer in answers] == [status] * CLIENTS
    for _, body, _ in answers:
        assert body["error"] == error and errno.errorcode[code] in json.dumps(body), body
        assert "durable" in body["detail"] or "nothing was written" in body["detail"], body
    # Nothing of any of them stays: no entry, no folder, nothing staged, nothing listed.
    assert fsio.listdir(spool.queued_dir) == []
    assert fsio.listdir(spool.jobs_dir) == []
    assert fsio.listdir(spool.staging_dir) == []
    # A committed entry taken back may have been seen in queued/ by the watcher: its departure event follows.
    wait_for(lambda: http_client.get("/jobs").json() == [], message="no job listed")
    # The share works again: the next submission is published and answered.
    hook.failure = None
    assert http_client.post("/run-simulation", json=BODY).status == 200


# ----- crashes: a real server process ----------------------------------------------------------------------

FAST = dict(scan_interval=0.5, embedded_worker="false", hosts="gpu-a")


def submit_until_killed(port, answered, stop_event):
    """Submit in a loop on one connection; record each answered job id; return when the server is gone."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while not stop_event.is_set():
        try:
            conn.request("POST", "/run-simulation", body=json.dumps(BODY),
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            body = json.loads(response.read())
        except (OSError, http.client.HTTPException, ValueError):
            return  # the server died with this request in flight: it was never answered
        assert response.status == 200, body
        answered.append(body["job_id"])
    conn.close()


def check_answered_jobs_survived(root, tmp_path, answered):
    """Restart the server on ``root``: every answered job is queued, whole (folder, job_info, entry); no job is
    half there; fsck finds the tree consistent."""
    proc, http_client = start_server(root, tmp_path, **FAST)
    try:
        spool = Spool(str(root))
        listed = {entry.job_id for _, entry in spool.scan()}
        for job_id in answered:
            assert job_id in listed, f"answered job {job_id} is lost"
            status = http_client.get(f"/status/{job_id}").json()
            assert status["status"] == "queued", status
            assert os.path.exists(os.path.join(spool.folder(job_id).path, "job_info.json"))
        for job_id in listed:  # what is listed is whole, answered or not
            assert os.path.isdir(spool.folder(job_id).path), job_id
    finally:
        stop(proc)
    checked = subprocess.run([sys.executable, "-m", "opeva_spool.cli", "fsck", "--json"], capture_output=True,
                             text=True, env=spool_env(root, tmp_path, **FAST), cwd=PROJECT_ROOT, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.slow
@pytest.mark.parametrize("commit_flush", ["syncfs", "fsync"])
def test_a_server_killed_in_the_middle_of_batches_loses_no_answered_submit(tmp_path, commit_flush):
    root = tmp_path / "share"
    proc, http_client = start_server(root, tmp_path, commit_flush=commit_flush, **FAST)
    port = port_of(http_client)
    answered, stop_event = [], threading.Event()
    threads = start_clients(port, answered, stop_event)
    try:
        wait_for(lambda: len(answered) >= 300, timeout=60, message="300 answered submits")
        proc.send_signal(signal.SIGKILL)  # while 8 submissions are in flight, in some phase of their batch
        proc.wait(10)
    finally:
        stop_event.set()
        join_all(threads)
        stop(proc)
    check_answered_jobs_survived(root, tmp_path, answered)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["commit.flushing", "commit.flushed"])
def test_a_server_killed_at_a_flush_answers_none_of_its_batch_and_leaves_no_half_job(tmp_path, point):
    root = tmp_path / "share"
    proc, http_client = start_server(root, tmp_path, crash_at=point, commit_flush="syncfs", **FAST)
    port = port_of(http_client)
    answered, stop_event = [], threading.Event()
    threads = start_clients(port, answered, stop_event)
    try:
        proc.wait(30)  # the first flush kills it
    finally:
        stop_event.set()
        join_all(threads)
        stop(proc)
    assert proc.returncode == -signal.SIGKILL
    assert answered == []  # a flush is reached before any answer: nobody was told yes
    check_answered_jobs_survived(root, tmp_path, answered)



def port_of(http_client):
    return int(http_client.base_url.rsplit(":", 1)[1])
