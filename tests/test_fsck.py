"""opeva-spool fsck: every departure from docs/spool.md is reported, --repair fixes what is safe, and what
may be in flight (younger than --min-age) or has no safe fix is left alone."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from opeva_spool import fsck, fsio
from opeva_spool.server import Server
from opeva_spool.spool import Entry, Location
from opeva_spool.states import JobState

from .clients import WsgiClient
from .conftest import PROJECT_ROOT, make_settings

HOUR_AGO = time.time() - 3600


@pytest.fixture
def share(tmp_path):
    """A server (no worker) over a fresh root: (server, client)."""
    server = Server(make_settings(tmp_path, embedded_worker=False))
    return server, WsgiClient(server.app)


def submit(server, client, **body):
    job_id = client.post("/run-simulation", json={"command": "true", "target_host": "gpu-a", **body}).json()["job_id"]
    server.index.sync()
    return job_id, server.index.get(job_id).entry


def claim(spool, entry, host="gpu-a", state=JobState.RUNNING, beat=True):
    os.makedirs(spool.running_dir(host), exist_ok=True)
    assert spool.claim(entry, host, f"agent-{host}")
    if state != JobState.DISPATCHED:
        spool.write_attempt(entry, host, f"agent-{host}", JobState.RUNNING, started_at="2026-01-01T00:00:00Z")
    if beat:
        fsio.atomic_write_json(spool.heartbeat_path(host), {"host": host, "counter": 1})


def age(*paths):
    for path in paths:
        os.utime(path, (HOUR_AGO, HOUR_AGO), follow_symlinks=False)


def kinds(report, problems_only=True):
    return sorted(finding.kind for finding in (report.problems if problems_only else report.findings))


def run_cli(root, *args):
    env = {**os.environ, "PYTHONPATH": PROJECT_ROOT}
    env.pop("OPEVA_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "opeva_spool.cli", "fsck", "--root", str(root), *args],
                          capture_output=True, text=True, env=env, cwd=PROJECT_ROOT, timeout=60)


def test_a_root_with_jobs_in_every_place_is_clean_and_exits_0(share):
    server, client = share
    spool = server.spool
    submit(server, client)  # queued
    _, running = submit(server, client)
    claim(spool, running)
    _, ended = submit(server, client)
    claim(spool, ended, beat=False)
    spool.finish(ended, "gpu-a", "agent-gpu-a", JobState.FINISHED, exit_code=0)
    stopped, _ = submit(server, client)
    client.post(f"/stop/{stopped}")  # canceled while queued: done/canceled with no record
    assert fsck.check(spool.root, min_age=0).findings == []
    result = run_cli(spool.root, "--json", "--min-age", "0")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"root": spool.root, "clean": True, "jobs": 4, "entries": 4, "problems": 0,
                                         "findings": []}


def test_every_inconsistency_is_reported_and_repair_fixes_each_safely(share):
    server, client = share
    spool = server.spool
    # A folder whose submission never committed, a staging leftover, an undeleted trash item.
    orphan = os.path.join(spool.jobs_dir, "orphan-1")
    os.makedirs(os.path.join(orphan, "logs"))
    stage = os.path.join(spool.staging_dir, "0123abcd")
    os.makedirs(stage)
    trashed = os.path.join(spool.trash_dir, "x-old")
    os.makedirs(trashed)
    # An entry whose folder an OS crash lost.
    lost_folder, _ = submit(server, client)
    shutil.rmtree(spool.folder(lost_folder).path)
    # A stop request for a job that is gone; a file in queued/ whose name is no entry; a temp file of a dead writer.
    spool.request_stop("gone-job")
    junk = os.path.join(spool.queued_dir, "notes.txt")
    open(junk, "w").close()
    temp = os.path.join(spool.done_path("finished"), ".x.json.123.abcd.tmp")
    open(temp, "w").close()
    # An ending recorded whose move into done/ did not happen (the agent died in between).
    ended, ended_entry = submit(server, client)
    claim(spool, ended_entry)
    spool.write_attempt(ended_entry, "gpu-a", "agent-gpu-a", JobState.FINISHED, exit_code=0)
    # A retry recorded whose requeue did not happen.
    retried, retried_entry = submit(server, client, max_retries=1, retry_on_failure=True)
    claim(spool, retried_entry)
    spool.write_attempt(retried_entry, "gpu-a", "agent-gpu-a", JobState.FAILED, exit_code=1,
                        retry_at="2026-01-01T00:00:00.000000Z")
    # A job running on a host whose heartbeat stopped an hour ago (no server ran to notice).
    stranded, stranded_entry = submit(server, client, target_host="gpu-b")
    claim(spool, stranded_entry, host="gpu-b")
    # The server failed a lost host's job and died before recording it (fail_lost renames first).
    unrecorded, unrecorded_entry = submit(server, client, target_host="gpu-b")
    claim(spool, unrecorded_entry, host="gpu-b")
    os.rename(os.path.join(spool.running_dir("gpu-b"), unrecorded_entry.name),
              spool.entry_path(Location("done", "failed"), unrecorded_entry))
    age(orphan, stage, trashed, spool.stop_request_path("gone-job"), junk, temp, spool.heartbeat_path("gpu-b"),
        *(spool.folder(job).attempt_record(1) for job in (ended, retried, unrecorded)))

    report = fsck.check(spool.root, min_age=10, offline_after=30)
    assert kinds(report) == sorted([
        "folder_without_entry", "stale_staging", "stale_trash", "entry_without_folder", "stale_stop_request",
        "unparsable_name", "stale_temp_file", "ending_not_moved", "retry_not_requeued", "running_on_silent_host",
        "ending_not_recorded"])
    assert not any(finding.repaired for finding in report.findings)
    assert os.path.isdir(orphan)  # a check alone changes nothing

    repaired = fsck.check(spool.root, repair=True, min_age=10, offline_after=30)
    assert repaired.clean, [(finding.kind, finding.detail) for finding in repaired.problems]
    assert fsck.check(spool.root, min_age=0).clean
    server.index.sync(include_done=True)
    status = {job: client.get(f"/status/{job}").json() for job in (ended, retried, stranded, unrecorded)}
    assert status[ended]["status"] == "finished"
    assert (status[retried]["status"], status[retried]["attempt"]) == ("queued", 2)
    assert status[stranded]["status"] == "failed"  # max_retries 0: host_lost ends it
    assert client.get(f"/job-info/{stranded}").json()["reason"] == "host_lost"
    assert client.get(f"/job-info/{unrecorded}").json()["reason"] == "host_lost"
    assert fsio.read_json_object(spool.folder(lost_folder).job_info)["job_id"] == lost_folder
    assert not os.path.exists(orphan) and fsio.listdir(spool.staging_dir) == []
    assert not os.path.exists(spool.stop_request_path("gone-job"))
    assert [reason["reason"] for reason in map(fsio.read_json_object, (
        os.path.join(spool.rejected_dir, name, "reason.json") for name in fsio.listdir(spool.rejected_dir)))] == [
        "not an entry name"]


def test_what_may_be_in_flight_is_reported_pending_and_left_alone(share):
    server, client = share
    spool = server.spool
    orphan = os.path.join(spool.jobs_dir, "fresh-1")
    os.makedirs(orphan)  # a submission between its folder's rename and its commit, maybe
    _, entry = submit(server, client)
    claim(spool, entry)
    spool.write_attempt(entry, "gpu-a", "agent-gpu-a", JobState.FINISHED, exit_code=0)  # its agent moves it next
    report = fsck.check(spool.root, repair=True)  # default min_age: 60 s
    assert report.clean
    assert kinds(report, problems_only=False) == ["ending_not_moved", "folder_without_entry"]
    assert all(finding.pending and not finding.repaired for finding in report.findings)
    assert os.path.isdir(orphan)
    assert fsio.listdir(spool.running_dir("gpu-a")) == [entry.name]


def test_a_running_job_of_a_live_host_is_never_touched(share):
    server, client = share
    spool = server.spool
    _, entry = submit(server, client)
    claim(spool, entry)  # heartbeat just written
    age(spool.folder(entry.job_id).attempt_record(1))
    assert fsck.check(spool.root, repair=True, min_age=0, offline_after=30).findings == []
    assert fsio.listdir(spool.running_dir("gpu-a")) == [entry.name]


def test_two_entries_of_one_job_are_reported_never_repaired_and_fsck_exits_1(share):
    server, client = share
    spool = server.spool
    _, entry = submit(server, client)
    copy = spool.entry_path(Location("done", "finished"), entry)
    shutil.copy(spool.entry_path(Location("queued"), entry), copy)
    result = run_cli(spool.root, "--repair", "--min-age", "0")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "duplicate_entries" in result.stdout and "none, decide by hand" in result.stdout
    assert "1 problem remain" in result.stdout
    assert os.path.exists(copy) and os.path.exists(spool.entry_path(Location("queued"), entry))
    report = json.loads(run_cli(spool.root, "--json", "--min-age", "0").stdout)
    assert (report["clean"], [finding["kind"] for finding in report["findings"]]) == (False, ["duplicate_entries"])


def test_repair_says_what_it_did(share):
    server, _ = share
    stage = os.path.join(server.spool.staging_dir, "feedbeef.entry")
    open(stage, "w").close()
    age(stage)
    result = run_cli(server.spool.root, "--repair")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "stale_staging" in result.stdout and "repaired: remove it" in result.stdout and "1 repaired" in result.stdout
    assert not os.path.exists(stage)


def test_fsck_of_a_directory_that_is_no_shared_root_is_a_one_line_error(tmp_path):
    result = run_cli(tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "is not an initialised shared root" in result.stderr


def test_an_entry_name_on_a_directory_is_set_aside(share):
    server, client = share
    spool = server.spool
    _, entry = submit(server, client)
    bogus = spool.entry_path(Location("done", "failed"), Entry.parse(entry.name)._replace(job_id="planted"))
    os.mkdir(bogus)
    age(bogus)
    report = fsck.check(spool.root, repair=True, min_age=10)
    assert [(finding.kind, finding.repaired) for finding in report.findings] == [("entry_not_a_file", True)]
    assert not os.path.exists(bogus)


def test_a_dataset_build_whose_server_died_is_reported_and_repair_records_it_failed(share):
    server, _ = share
    datasets = server.spool.datasets_dir
    os.makedirs(os.path.join(datasets, ".staging", "lab15", "partial"))
    os.makedirs(os.path.join(datasets, ".builds"))
    status_path = os.path.join(datasets, ".builds", "lab15.json")
    fsio.atomic_write_json(status_path, {"name": "lab15", "state": "building", "progress_pct": 40.0})
    # Still within the store's own staleness (600 s): maybe a build in progress whose status is slow to move.
    age(status_path)  # an hour
    assert kinds(fsck.check(server.spool.root)) == ["dataset_build_interrupted"]
    os.utime(status_path)
    report = fsck.check(server.spool.root, repair=True)
    assert report.clean and report.findings[0].pending
    age(status_path)
    assert fsck.check(server.spool.root, repair=True).clean
    assert not os.path.exists(os.path.join(datasets, ".staging", "lab15"))
    status = fsio.read_json_object(status_path)
    assert status["state"] == "failed" and "interrupted" in status["error"]


def test_an_earlier_attempt_s_missing_log_is_reported(share):
    server, client = share
    spool = server.spool
    job_id, entry = submit(server, client, max_retries=1)
    claim(spool, entry)
    second = spool.requeue(entry, "gpu-a")
    claim(spool, second)
    folder = spool.folder(job_id)
    os.makedirs(os.path.dirname(folder.attempt_log(1)), exist_ok=True)
    open(folder.attempt_log(1), "w").close()
    assert fsck.check(spool.root, min_age=0).findings == []
    os.unlink(folder.attempt_log(1))
    report = fsck.check(spool.root, repair=True, min_age=0)
    assert [(finding.kind, finding.path) for finding in report.problems] == [
        ("attempt_log_missing", f"jobs/{job_id}/logs/{job_id}.attempt-1.log")]
