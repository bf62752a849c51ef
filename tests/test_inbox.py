"""Job folders dropped onto the share are accepted like API submissions."""

import json
import os
import shutil
import time

from opeva_spool import fsio

from .conftest import wait_for, wait_for_status


def drop(server, folder, job=None, files=None, age=None):
    staging = os.path.join(server.spool.inbox_dir, "." + folder)  # hidden while being written
    os.makedirs(staging)
    if job is not None:
        with open(os.path.join(staging, "job.json"), "w") as handle:
            handle.write(job if isinstance(job, str) else json.dumps(job))
    for name, text in (files or {}).items():
        with open(os.path.join(staging, name), "w") as handle:
            handle.write(text)
    final = os.path.join(server.spool.inbox_dir, folder)
    os.rename(staging, final)
    if age:
        old = time.time() - age
        for path in [final] + [os.path.join(final, name) for name in os.listdir(final)]:
            os.utime(path, (old, old))
    return final


def test_dropped_folder_becomes_a_job_named_after_it_and_runs(client, server):
    drop(server, "dropped-job-1", {"command": "true", "target_host": "local", "job_name": "from-inbox"})
    wait_for(lambda: client.get("/status/dropped-job-1").status == 200, message="inbox pickup")
    wait_for_status(client, "dropped-job-1", "finished")
    info = client.get("/job-info/dropped-job-1").json()
    assert info["origin"] == "inbox" and info["job_name"] == "from-inbox"
    assert fsio.listdir(server.spool.inbox_dir) == []


def test_config_file_in_the_folder_is_saved_and_used(client, server):
    drop(server, "with-config", {"target_host": "gpu-a"},
         files={"config.yaml": "experiment: {name: inboxed, run_name: r}\n"})
    wait_for(lambda: client.get("/status/with-config").status == 200, message="inbox pickup")
    assert client.get("/job-info/with-config").json()["config_path"] == "configs/with-config.yaml"
    assert client.get("/experiment-configs/with-config.yaml").json()["config"]["experiment"]["name"] == "inboxed"


def test_invalid_folders_are_moved_aside_with_a_reason_and_do_not_block_others(client, server):
    drop(server, "bad-json", "{not json", age=60)
    drop(server, "bad-host", {"command": "true", "target_host": "../../etc"})
    drop(server, "no-job-file", None, files={"notes.txt": "hi"}, age=60)
    drop(server, "bad..name", {"command": "true"})
    drop(server, "good-one", {"command": "true", "target_host": "gpu-a"})
    wait_for(lambda: len(fsio.listdir(server.spool.rejected_dir)) == 4, message="rejections")
    assert client.get("/status/good-one").json()["status"] == "queued"
    reasons = {}
    for name in fsio.listdir(server.spool.rejected_dir):
        reason = fsio.read_json_object(os.path.join(server.spool.rejected_dir, name, "reason.json"))
        reasons[reason["folder"]] = reason["reason"]
    assert "not valid JSON" in reasons["bad-json"]
    assert "target_host" in reasons["bad-host"] or "host" in reasons["bad-host"]
    assert "job.json" in reasons["no-job-file"]
    assert "job_id" in reasons["bad..name"]
    assert fsio.listdir(server.spool.inbox_dir) == []


def test_a_folder_still_being_written_is_left_alone(server):
    folder = drop(server, "slow-copy", "{\"command\": \"tr")  # truncated, and fresh
    assert server.inbox.scan() == {}
    assert os.path.isdir(folder)


def test_ingesting_again_after_a_crash_does_not_duplicate_the_job(client, server):
    folder = drop(server, "once", {"command": "true", "target_host": "gpu-a"})
    backup = os.path.join(server.spool.root, "once.copy")  # outside the inbox
    shutil.copytree(folder, backup)
    wait_for(lambda: client.get("/status/once").status == 200, message="inbox pickup")
    # The server died after publishing but before removing the folder: it is there again.
    os.rename(backup, os.path.join(server.spool.inbox_dir, "once"))
    server.inbox.scan()
    assert fsio.listdir(server.spool.inbox_dir) == []
    assert [job["job_id"] for job in client.get("/jobs").json()] == ["once"]
    assert fsio.listdir(server.spool.rejected_dir) == []


def test_same_id_as_an_api_job_is_rejected_not_merged(client, server):
    client.post("/run-simulation", json={"command": "true", "target_host": "gpu-a"})
    existing = client.get("/jobs").json()[0]["job_id"]
    drop(server, existing, {"command": "false", "target_host": "gpu-a"})
    wait_for(lambda: fsio.listdir(server.spool.rejected_dir), message="rejection")
    assert client.get(f"/job-info/{existing}").json()["command"] == "true"
