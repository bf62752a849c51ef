"""The examples/ folders, copied into a shared root, answer every job endpoint correctly."""

import os
import shutil

import pytest

from opeva_spool.server import Server

from .clients import WsgiClient
from .conftest import PROJECT_ROOT, make_settings, wait_for, wait_for_status

EXAMPLES = os.path.join(PROJECT_ROOT, "examples")
EXPECTED = {
    "example-finished": "finished",
    "example-failed": "failed",
    "example-stopped": "stopped",
    "example-running": "running",
    "example-queued": "queued",
}


@pytest.fixture
def example_server(tmp_path):
    settings = make_settings(tmp_path, hosts=("local", "gpu-node-1", "gpu-node-2"))
    shutil.copytree(os.path.join(EXAMPLES, "shared"), settings.shared_root)
    server = Server(settings).start()
    yield server
    server.close()


def test_every_example_reports_its_state_and_outputs(example_server):
    client = WsgiClient(example_server.app)
    for job_id, state in EXPECTED.items():
        assert client.get(f"/status/{job_id}").json()["status"] == state, job_id
        info = client.get(f"/job-info/{job_id}").json()
        assert info["job_id"] == job_id and info["job_name"] == "ev-charging-example"
        assert info["config_path"] == "configs/example.yaml"
    assert client.get("/result/example-finished").json()["status"] == "completed"
    assert client.get("/result/example-failed").json()["error_type"] == "RuntimeError"
    assert client.get("/result/example-queued").json() == {"status": "pending", "message": "Result not ready yet."}
    assert client.get("/progress/example-running").json()["progress_pct"] == pytest.approx(53.33)
    assert client.get("/progress/example-queued").json() == {"progress": "No updates yet."}
    assert "ERROR simulated failure" in client.get("/logs/example-failed").text
    assert client.get("/logs/example-finished?tail=1").text == "[demo] done: final reward 0.15\n"
    assert client.get("/job-info/example-stopped").json()["exit_code"] == 143
    assert client.get("/job-info/example-running").json()["container_name"] == "opeva-example-running-a1"


def test_examples_list_newest_first_and_filter(example_server):
    client = WsgiClient(example_server.app)
    listed = client.get("/jobs").json()
    assert [job["job_id"] for job in listed] == ["example-queued", "example-running", "example-stopped",
                                                 "example-failed", "example-finished"]
    assert [job["job_id"] for job in client.get("/jobs?status=running").json()] == ["example-running"]
    assert [job["job_id"] for job in client.get("/jobs?host=gpu-node-2").json()] == ["example-queued",
                                                                                     "example-stopped"]
    assert "gpu-node-1" in client.get("/hosts").json()["available_hosts"]
    assert client.get("/experiment-configs").json() == ["example.yaml"]


def test_example_transitions(example_server):
    client = WsgiClient(example_server.app)
    assert client.post("/stop/example-finished").status == 409
    assert client.post("/stop/example-queued").json()["status"] == "canceled"
    assert client.post("/stop/example-running").json()["stop_requested"] is True
    assert client.delete("/job/example-running").status == 409
    assert client.delete("/job/example-failed").status == 200
    assert client.get("/status/example-failed").status == 404


def test_example_inbox_folder_is_accepted_and_runs(example_server):
    client = WsgiClient(example_server.app)
    inbox = example_server.spool.inbox_dir
    shutil.copytree(os.path.join(EXAMPLES, "inbox", "example-drop"), os.path.join(inbox, ".example-drop"))
    os.rename(os.path.join(inbox, ".example-drop"), os.path.join(inbox, "example-drop"))
    wait_for(lambda: client.get("/status/example-drop").status == 200, message="inbox pickup")
    wait_for_status(client, "example-drop", "finished", timeout=30)
    assert client.get("/result/example-drop").json()["status"] == "completed"
    assert client.get("/job-info/example-drop").json()["job_name"] == "dropped-demo"
