"""Readers tolerate missing, half-written and corrupt files: "not ready", never a 500."""

import os

import pytest

from opeva_spool import fsio

BROKEN_CONTENTS = [b"", b"{", b'{"status": "comp', b"\x00\x00\x00", b"[1, 2, 3]", b"null", b"\xff\xfe{}"]


@pytest.fixture
def queued_job(client, server):
    job = client.post("/run-simulation", json={"command": "true", "target_host": "gpu-a"}).json()
    return server.spool.folder(job["job_id"])


@pytest.fixture
def output_dirs(queued_job):
    for sub in ("progress", "results", "logs"):
        os.makedirs(os.path.join(queued_job.path, sub))
    return queued_job


@pytest.mark.parametrize("content", BROKEN_CONTENTS)
def test_half_written_result_reads_as_pending(client, queued_job, output_dirs, content):
    with open(queued_job.result, "wb") as handle:
        handle.write(content)
    response = client.get(f"/result/{queued_job.job_id}")
    assert response.status == 200
    assert response.json() == {"status": "pending", "message": "Result not ready yet."}


@pytest.mark.parametrize("content", BROKEN_CONTENTS)
def test_half_written_progress_reads_as_no_updates(client, queued_job, output_dirs, content):
    with open(queued_job.progress, "wb") as handle:
        handle.write(content)
    response = client.get(f"/progress/{queued_job.job_id}")
    assert response.status == 200 and response.json() == {"progress": "No updates yet."}


def test_missing_output_folders_read_as_not_ready(client, queued_job):
    # A queued job has no output folders yet: its runner makes them.
    for sub in ("progress", "results", "logs"):
        assert not os.path.exists(os.path.join(queued_job.path, sub))
    assert client.get(f"/progress/{queued_job.job_id}").json() == {"progress": "No updates yet."}
    assert client.get(f"/result/{queued_job.job_id}").json()["status"] == "pending"
    assert client.get(f"/logs/{queued_job.job_id}").text == ""


def test_corrupt_job_info_falls_back_to_the_spool_entry(client, queued_job):
    with open(queued_job.job_info, "wb") as handle:
        handle.write(b'{"job_id": "x", "merged_by_ima')
    info = client.get(f"/job-info/{queued_job.job_id}")
    assert info.status == 200
    assert info.json()["job_id"] == queued_job.job_id and info.json()["target_host"] == "gpu-a"
    listed = client.get("/jobs").json()
    assert listed[0]["job_id"] == queued_job.job_id and listed[0]["status"] == "queued"


def test_job_info_fields_merged_by_the_image_are_kept(client, queued_job):
    info = fsio.read_json_object(queued_job.job_info)
    info["mlflow_run_id"] = "abc123"
    fsio.atomic_write_json(queued_job.job_info, info)
    assert client.get(f"/job-info/{queued_job.job_id}").json()["mlflow_run_id"] == "abc123"


def test_complete_result_is_returned_as_written(client, queued_job, output_dirs):
    with open(queued_job.result, "w") as handle:
        handle.write('{"status": "completed", "kpis": {"cost": 1.5}}')
    assert client.get(f"/result/{queued_job.job_id}").json() == {"status": "completed", "kpis": {"cost": 1.5}}


def test_stray_files_in_spool_directories_are_ignored(client, server, queued_job):
    for directory in (server.spool.queued_dir, server.spool.done_path("finished")):
        for name in ("README", ".tmp-partial.json", "000_1_x_001_bad id.json", "not_an_entry.json"):
            with open(os.path.join(directory, name), "w") as handle:
                handle.write("junk")
    server.index.sync()
    listed = client.get("/jobs").json()
    assert [item["job_id"] for item in listed] == [queued_job.job_id]
