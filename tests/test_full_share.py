"""A full share (ENOSPC) answers 507 and a read-only one 503, for every write, with nothing half-published.

Each test mounts a small tmpfs of its own (size=) as the shared root: that needs root (we are root here and
in CI); without it the tests are skipped, saying why.
"""

import json
import os
import subprocess

import pytest

from opeva_spool.server import Server

from .clients import WsgiClient
from .conftest import make_settings

SHARE_SIZE = "4m"
FILL_CHUNK = 64 * 1024

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs of its own (the full share) needs root")


@pytest.fixture
def small_share(tmp_path):
    """(mount point, server, client): a server whose shared root is a tmpfs of SHARE_SIZE; unmounted at the end."""
    mount_point = tmp_path / "share"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SHARE_SIZE}", "tmpfs", str(mount_point)], check=True)
    try:
        server = Server(make_settings(tmp_path, embedded_worker=False, shared_root=str(mount_point)))
        yield mount_point, server, WsgiClient(server.app)
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def fill(mount_point):
    """Write a file until the share is full, to the last byte; returns its path (remove it to free the space)."""
    path = mount_point / "filler"
    with open(path, "ab", buffering=0) as handle:
        for size in (FILL_CHUNK, 4096, 1):
            try:
                while True:
                    handle.write(b"\0" * size)
            except OSError:
                pass
    return path


def tree(root):
    """Every path under ``root`` (files, folders, temp files included), for a before/after comparison.

    The audit trail is left out: it records refused writes too, which is its purpose (docs/security.md).
    """
    found = set()
    for directory, folders, files in os.walk(root):
        if directory == os.fspath(root) and "audit" in folders:
            folders.remove("audit")
        for name in folders + files:
            found.add(os.path.relpath(os.path.join(directory, name), root))
    return found


WRITES = [
    ("/run-simulation", {"command": "true", "target_host": "gpu-a"}),
    ("/run-simulation", {"config": {"experiment": {"name": "e", "run_name": "r"}, "demo": {"steps": 1}},
                         "target_host": "gpu-a"}),
    ("/experiment-configs/create", {"file_name": "exp.yaml", "config": {"a": 1}}),
    ("/sweeps", {"config": {"experiment": {"name": "e"}, "lr": 0.1}, "grid": {"lr": [0.1, 0.2, 0.3]},
                 "target_host": "gpu-a", "command": "true"}),
]


def test_a_full_share_answers_507_to_every_write_and_keeps_nothing_of_it(small_share):
    mount_point, _, client = small_share
    filler = fill(mount_point)
    before = tree(mount_point)
    for route, body in WRITES:
        response = client.post(route, json=body)
        assert response.status == 507, (route, response.status, response.text)
        answer = response.json()
        assert answer["error"] == "insufficient_storage" and "full" in answer["detail"], answer
        assert tree(mount_point) == before, route  # no staging, no entry, no folder, no temp file
    assert client.get("/jobs").json() == []

    os.unlink(filler)  # the operator frees space: the same requests succeed
    for route, body in WRITES:
        assert client.post(route, json=body).status in (200, 201, 202), route


def test_a_job_whose_config_snapshot_does_not_fit_leaves_neither_its_saved_config_nor_a_folder(small_share):
    """The inline config is saved under configs/ first; its snapshot in the job's folder then does not fit."""
    mount_point, _, client = small_share
    before = tree(mount_point)
    filler = fill(mount_point)
    os.truncate(filler, os.path.getsize(filler) - 64 * 1024)  # room for the saved config, not for its snapshot too
    big = {"experiment": {"name": "e", "run_name": "r"}, "blob": "x" * (40 * 1024)}
    response = client.post("/run-simulation", json={"config": big, "target_host": "gpu-a"})
    assert response.status == 507, response.text
    assert tree(mount_point) - before == {"filler"}


def test_a_commit_rename_that_fails_takes_the_job_folder_back(small_share):
    """The folder's rename into jobs/ succeeded, the entry's into queued/ failed: no folder stays behind.

    (A rename needs no space on tmpfs; a read-only bind mount over queued/ makes the commit rename fail.)
    """
    mount_point, _, client = small_share
    before = tree(mount_point)
    queued = str(mount_point / "spool" / "queued")
    subprocess.run(["mount", "--bind", queued, queued], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", queued], check=True)
        response = client.post("/run-simulation", json={"command": "true", "target_host": "gpu-a"})
        assert response.status >= 500 and response.json()["error"], response.text
        assert tree(mount_point) == before
        audited = [json.loads(line) for path in (mount_point / "audit").glob("*.jsonl")
                   for line in path.read_text().splitlines()]
        assert audited[-1]["status"] == response.status  # the audit trail says what the client was answered
    finally:
        subprocess.run(["umount", queued], check=True)
    assert client.post("/run-simulation", json={"command": "true", "target_host": "gpu-a"}).status == 200


def test_a_refused_write_is_audited_with_the_status_the_client_got(small_share):
    mount_point, _, client = small_share
    staging = str(mount_point / "spool" / "staging")
    subprocess.run(["mount", "--bind", staging, staging], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", staging], check=True)  # the rest of the share stays writable
        response = client.post("/run-simulation", json={"command": "true", "target_host": "gpu-a"})
        assert response.status == 503 and response.json()["reason"] == "EROFS", response.text
    finally:
        subprocess.run(["umount", staging], check=True)
    audited = [json.loads(line) for path in (mount_point / "audit").glob("*.jsonl")
               for line in path.read_text().splitlines()]
    assert audited[-1]["status"] == 503 and audited[-1]["route"] == "/run-simulation"


def test_a_read_only_share_answers_503_to_every_write_and_reads_still_work(small_share):
    mount_point, server, client = small_share
    job_id = client.post("/run-simulation", json={"command": "true", "target_host": "gpu-a"}).json()["job_id"]
    # The kernel refuses to remount read-only a filesystem with a file open for writing, such as the events
    # segment the server holds (reopened by the next event). A share that turns read-only under a server (an
    # export made ro, ext4's errors=remount-ro) does not ask; here the segment is closed first.
    server.events.journal.close()
    subprocess.run(["mount", "-o", "remount,ro", str(mount_point)], check=True)
    try:
        for route, body in WRITES:
            response = client.post(route, json=body)
            assert response.status == 503, (route, response.status, response.text)
            answer = response.json()
            assert answer["error"] == "unavailable" and "read-only" in answer["detail"], answer
        assert client.get(f"/status/{job_id}").json()["status"] == "queued"
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(mount_point)], check=True)
    assert client.post("/run-simulation", json={"command": "true", "target_host": "gpu-a"}).status == 200
