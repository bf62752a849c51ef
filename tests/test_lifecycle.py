"""A job's life through the API with the process runtime and the embedded worker."""

import os

import pytest

from opeva_spool.server import Server
from opeva_spool.spool import Entry

from .clients import WsgiClient
from .conftest import PYTHON, demo_config, make_settings, wait_for, wait_for_status


def test_submitted_job_runs_to_finished_with_progress_and_result(client, server):
    response = client.post("/run-simulation", json={"config": demo_config(), "target_host": "local"})
    assert response.status == 200, response
    job = response.json()
    assert job["status"] == "queued" and job["host"] == "local" and job["job_name"] == "exp-r1"
    assert job["config_path"] == f"configs/{job['job_id']}.yaml"
    assert os.path.exists(os.path.join(server.spool.configs_dir, f"{job['job_id']}.yaml"))

    wait_for_status(client, job["job_id"], "finished")
    progress = client.get(f"/progress/{job['job_id']}").json()
    assert progress["status"] == "completed" and progress["progress_pct"] == 100
    assert progress["global_step"] == progress["global_step_total"] == 10
    result = client.get(f"/result/{job['job_id']}").json()
    assert result["status"] == "completed" and len(result["episode_rewards"]) == 2
    log = client.get(f"/logs/{job['job_id']}")
    assert log.headers["Content-Type"].startswith("text/plain")
    assert "episode 2/2" in log.text
    info = client.get(f"/job-info/{job['job_id']}").json()
    assert info["exit_code"] == 0 and info["status"] == "finished" and info["experiment_name"] == "exp"
    listed = client.get("/jobs").json()
    assert [item["job_id"] for item in listed] == [job["job_id"]]
    assert listed[0]["status"] == "finished" and listed[0]["job_info"]["job_name"] == "exp-r1"


def test_failing_command_ends_failed_with_exit_code_and_stderr_in_log(client):
    job = client.post("/run-simulation", json={
        "command": [PYTHON, "-c", "import sys; print('bad config', file=sys.stderr); sys.exit(3)"],
    }).json()
    wait_for_status(client, job["job_id"], "failed")
    info = client.get(f"/job-info/{job['job_id']}").json()
    assert info["exit_code"] == 3 and info["reason"] == "exit_code"
    assert "bad config" in client.get(f"/logs/{job['job_id']}").text


def test_demo_failure_writes_failed_result_and_job_fails(client):
    job = client.post("/run-simulation", json={"config": demo_config(fail_at_step=3)}).json()
    wait_for_status(client, job["job_id"], "failed")
    result = client.get(f"/result/{job['job_id']}").json()
    assert result["status"] == "failed" and result["error_type"] == "RuntimeError"


def test_stop_of_running_job_terminates_it_and_ends_stopped(client, server):
    job = client.post("/run-simulation", json={"config": demo_config(episodes=50, steps=50, step_seconds=0.05)}).json()
    wait_for(lambda: client.get(f"/progress/{job['job_id']}").json().get("status") == "running",
             message="progress to say running")
    response = client.post(f"/stop/{job['job_id']}")
    assert response.status == 200 and response.json()["stop_requested"] is True
    wait_for_status(client, job["job_id"], "stopped")
    info = client.get(f"/job-info/{job['job_id']}").json()
    assert info["reason"] == "stop_requested" and info["exit_code"] in (-15, 143)
    assert "stop_requested: stopped with SIGTERM" in client.get(f"/logs/{job['job_id']}").text
    # The answered request file is cleaned up by maintenance.
    wait_for(lambda: not server.spool.stop_requested(job["job_id"]), message="stop request cleanup")


@pytest.mark.parametrize("settings", [{"stop_grace": 0.5}], indirect=True)
def test_stop_escalates_to_sigkill_when_job_ignores_sigterm(client, settings):
    script = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
              "time.sleep(60)")
    job = client.post("/run-simulation", json={"command": [PYTHON, "-c", script]}).json()
    wait_for(lambda: "ready" in client.get(f"/logs/{job['job_id']}").text, message="job start")
    client.post(f"/stop/{job['job_id']}")
    wait_for_status(client, job["job_id"], "stopped", timeout=settings.stop_grace + 10)
    assert client.get(f"/job-info/{job['job_id']}").json()["exit_code"] == -9


def test_queued_job_is_canceled_at_once(client):
    # gpu-a is a known host with no agent: the job stays queued.
    job = client.post("/run-simulation", json={"command": "true", "target_host": "gpu-a"}).json()
    response = client.post(f"/stop/{job['job_id']}")
    assert response.status == 200 and response.json()["status"] == "canceled"
    assert client.get(f"/status/{job['job_id']}").json()["status"] == "canceled"


def test_illegal_transitions_answer_409_and_change_nothing(client):
    job = client.post("/run-simulation", json={"command": "true", "target_host": "gpu-a"}).json()
    client.post(f"/stop/{job['job_id']}")
    again = client.post(f"/stop/{job['job_id']}")
    assert again.status == 409
    assert again.json()["error"] == "illegal_transition" and again.json()["status"] == "canceled"
    assert client.get(f"/status/{job['job_id']}").json()["status"] == "canceled"

    done = client.post("/run-simulation", json={"command": "true"}).json()
    wait_for_status(client, done["job_id"], "finished")
    refused = client.post(f"/stop/{done['job_id']}")
    assert refused.status == 409 and refused.json()["status"] == "finished"
    assert client.get(f"/status/{done['job_id']}").json()["status"] == "finished"


def test_delete_refuses_running_job_unless_forced_and_leaves_no_entry(client, server):
    job = client.post("/run-simulation", json={"command": [PYTHON, "-c", "import time; time.sleep(60)"]}).json()
    wait_for_status(client, job["job_id"], "running")
    refused = client.delete(f"/job/{job['job_id']}")
    assert refused.status == 409 and refused.json()["status"] == "running"
    assert client.get(f"/status/{job['job_id']}").json()["status"] == "running"

    assert client.delete(f"/job/{job['job_id']}?force=1").status == 200
    assert client.get(f"/status/{job['job_id']}").status == 404
    assert not os.path.exists(server.spool.folder(job["job_id"]).path)
    on_disk = [entry.job_id for _, entry in server.spool.scan()]
    assert job["job_id"] not in on_disk
    # The owner notices its entry is gone and kills the process (no runner left).
    wait_for(lambda: not server.agent.running_job_ids(), message="runner to end")


def test_delete_of_queued_job_removes_it_from_the_queue(client, server):
    job = client.post("/run-simulation", json={"command": "true", "target_host": "gpu-b"}).json()
    assert client.delete(f"/job/{job['job_id']}").json()["previous_status"] == "queued"
    assert os.listdir(server.spool.queued_dir) == []
    assert client.get("/jobs").json() == []


def test_priority_orders_the_queue(client, server):
    low = client.post("/run-simulation", json={"command": "true", "target_host": "gpu-a", "priority": -5}).json()
    high = client.post("/run-simulation", json={"command": "true", "target_host": "gpu-a", "priority": 7}).json()
    mid = client.post("/run-simulation", json={"command": "true", "target_host": "gpu-a"}).json()
    order = [Entry.parse(name).job_id for name in sorted(os.listdir(server.spool.queued_dir))]
    assert order == [high["job_id"], mid["job_id"], low["job_id"]]


def test_job_runs_from_its_config_snapshot_with_its_name_id_and_env(client, server):
    script = ("import os; env = os.environ; "
              "print(env['OPEVA_JOB_ID'], env['OPEVA_JOB_NAME'], env['OPEVA_CONFIG_PATH'], env['MY_VAR']); "
              "print(open(env['OPEVA_CONFIG_PATH']).read(), end='')")
    client.post("/experiment-configs/create", json={"file_name": "e.yaml", "config": {"a": 1}})
    server.spool.request_drain("local")  # the job waits until the test has seen its snapshot
    job = client.post("/run-simulation", json={"command": [PYTHON, "-c", script], "config_path": "configs/e.yaml",
                                               "job_name": "my-run", "env": {"MY_VAR": "hello"}}).json()
    snapshot, live = server.spool.folder(job["job_id"]).config, f"{server.spool.configs_dir}/e.yaml"
    assert os.path.isfile(snapshot)
    with open(live, "w") as handle:
        handle.write("a: edited after the submission\n")
    server.spool.request_drain("local", undo=True)
    wait_for_status(client, job["job_id"], "finished")
    first, *config_seen = client.get(f"/logs/{job['job_id']}").text.splitlines()
    assert first == f"{job['job_id']} my-run {snapshot} hello"
    assert config_seen == ["a: 1"]


def test_a_command_template_naming_an_unknown_field_fails_the_job_as_bad_command(tmp_path):
    server = Server(make_settings(tmp_path, process_command="{python} run.py --seed {seed}")).start()
    try:
        client = WsgiClient(server.app)
        job = client.post("/run-simulation", json={"config": demo_config()}).json()
        wait_for_status(client, job["job_id"], "failed")
        assert client.get(f"/job-info/{job['job_id']}").json()["reason"] == "bad_command"
        log = client.get(f"/logs/{job['job_id']}").text
        assert "{seed}" in log and "it may use {job_id}" in log
    finally:
        server.close()
