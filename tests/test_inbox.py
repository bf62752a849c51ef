"""Job folders dropped onto the share are accepted like API submissions."""

import json
import os
import time

from opeva_spool import fsio
from opeva_spool.server import Server

from .clients import WsgiClient
from .conftest import make_settings, rejected, wait_for, wait_for_status


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


def rejections(server):
    """{folder: reason} of everything the inbox set aside."""
    return {reason["folder"]: reason["reason"] for reason in rejected(server)}


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
    wait_for(lambda: len(rejections(server)) == 4, message="rejections")
    wait_for(lambda: client.get("/status/good-one").status == 200, message="the good folder's pickup")
    assert client.get("/status/good-one").json()["status"] == "queued"
    reasons = rejections(server)
    assert "not valid JSON" in reasons["bad-json"]
    assert "target_host" in reasons["bad-host"] or "host" in reasons["bad-host"]
    assert "job.json" in reasons["no-job-file"]
    assert "job_id" in reasons["bad..name"]
    assert fsio.listdir(server.spool.inbox_dir) == []


def test_a_folder_still_being_written_is_left_alone(server):
    folder = drop(server, "slow-copy", "{\"command\": \"tr")  # truncated, and fresh
    assert server.inbox.scan() == {}
    assert os.path.isdir(folder)


def test_the_same_folder_found_again_after_a_crash_is_only_removed(tmp_path):
    server = Server(make_settings(tmp_path, embedded_worker=False))  # not started: this test is the only scanner
    client = WsgiClient(server.app)
    folder = drop(server, "once", {"command": "true", "target_host": "gpu-a"})
    assert server.inbox.scan() == {"once": "once"}
    # The server died after publishing but before removing the folder: the folder is back as it was then.
    [trashed] = [name for name in fsio.listdir(server.spool.trash_dir) if name.endswith("-once")]
    os.rename(os.path.join(server.spool.trash_dir, trashed), folder)
    assert server.inbox.scan() == {"once": "once"}
    assert fsio.listdir(server.spool.inbox_dir) == []
    assert [job["job_id"] for job in client.get("/jobs").json()] == ["once"]
    assert fsio.listdir(server.spool.rejected_dir) == []


def test_a_second_folder_with_a_taken_job_id_is_rejected_not_dropped(client, server):
    drop(server, "first", {"job_id": "shared", "command": "true", "target_host": "gpu-a"})
    wait_for(lambda: client.get("/status/shared").status == 200, message="inbox pickup")
    drop(server, "second", {"job_id": "shared", "command": "false", "target_host": "gpu-a"})
    wait_for(lambda: "second" in rejections(server), message="the second folder's rejection")
    assert "job id taken" in rejections(server)["second"]
    # A later folder of the same name as the accepted one is another submission, not a re-ingestion.
    drop(server, "first", {"job_id": "shared", "command": "false", "target_host": "gpu-a"})
    wait_for(lambda: "first" in rejections(server), message="the later same-named folder's rejection")
    assert "job id taken" in rejections(server)["first"]
    assert client.get("/job-info/shared").json()["command"] == "true"
    assert fsio.listdir(server.spool.inbox_dir) == []


def test_a_deeply_nested_folder_is_rejected_and_the_maintenance_round_goes_on(tmp_path):
    server = Server(make_settings(tmp_path, embedded_worker=False))  # maintain_once is called by the test
    client = WsgiClient(server.app)
    drop(server, "aaa-deep-json", "[" * 5000)
    drop(server, "bbb-deep-config", {"target_host": "gpu-a"}, files={"config.yaml": "[" * 5000})
    drop(server, "zzz-good", {"command": "true", "target_host": "gpu-a"})
    server.spool.request_stop("long-gone-job")  # a stop request nobody answers: maintenance clears it
    os.makedirs(os.path.join(server.spool.trash_dir, "deleted-folder"))
    server.maintain_once()
    reasons = rejections(server)
    assert "nested too deeply" in reasons["aaa-deep-json"]
    assert "bbb-deep-config" in reasons
    assert client.get("/status/zzz-good").json()["status"] == "queued"
    assert not server.spool.stop_requested("long-gone-job")
    assert fsio.listdir(server.spool.trash_dir) == []
    assert fsio.listdir(server.spool.inbox_dir) == []


def test_links_in_drop_folders_are_refused_and_nothing_outside_is_read(client, server, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "job.json").write_text(json.dumps({"command": "true", "target_host": "gpu-a"}))
    (outside / "secret.yaml").write_text("secret: 42\n")
    before = sorted(os.listdir(outside))
    inbox = server.spool.inbox_dir
    os.makedirs(os.path.join(inbox, ".link-job"))
    os.symlink(outside / "job.json", os.path.join(inbox, ".link-job", "job.json"))
    os.makedirs(os.path.join(inbox, ".link-config"))
    with open(os.path.join(inbox, ".link-config", "job.json"), "w") as handle:
        json.dump({"target_host": "gpu-a"}, handle)
    os.symlink(outside / "secret.yaml", os.path.join(inbox, ".link-config", "config.yaml"))
    for name in ("link-job", "link-config"):
        os.rename(os.path.join(inbox, "." + name), os.path.join(inbox, name))
    os.symlink(outside, os.path.join(inbox, "link-folder"))
    wait_for(lambda: len(rejections(server)) == 3, message="three rejections")
    for folder, reason in rejections(server).items():
        assert "link" in reason, (folder, reason)
    assert client.get("/jobs").json() == []
    assert fsio.listdir(server.spool.configs_dir) == []
    assert sorted(os.listdir(outside)) == before  # no reason.json written through the link
    assert fsio.listdir(inbox) == []


def test_same_id_as_an_api_job_is_rejected_not_merged(client, server):
    client.post("/run-simulation", json={"command": "true", "target_host": "gpu-a"})
    existing = client.get("/jobs").json()[0]["job_id"]
    drop(server, existing, {"command": "false", "target_host": "gpu-a"})
    wait_for(lambda: fsio.listdir(server.spool.rejected_dir), message="rejection")
    assert client.get(f"/job-info/{existing}").json()["command"] == "true"
