"""OPEVA's HTTP worker protocol (docs/worker-protocol.md) on top of the spool.

The protocol calls go over real HTTP to a real server on 127.0.0.1; the end-to-end tests run the example worker
(examples/http-worker/worker.py) as its own process with real Docker containers (busybox). Heartbeat and offline
settings are short, so a silent worker is judged lost within seconds.
"""

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import docker
import pytest

from opeva_spool import fsio

from .clients import WsgiClient
from .conftest import PROJECT_ROOT, PYTHON, wait_for, wait_for_status

WORKER = os.path.join(PROJECT_ROOT, "examples", "http-worker", "worker.py")
FAST_WORKER = {"WORKER_HEARTBEAT_INTERVAL": "0.3", "POLL_INTERVAL": "0.2", "STATUS_POLL_INTERVAL": "0.3",
               "RUNNING_REPORT_INTERVAL": "0.3", "CONTAINER_POLL_INTERVAL": "0.2"}
OFFLINE_AFTER = 2.0


def start_worker(tmp_path, port, worker_id, docker_host, **env):
    """The example worker as its own process, once its first heartbeat registered it."""
    environment = {**os.environ, "OPEVA_SERVER": f"http://127.0.0.1:{port}", "WORKER_ID": worker_id,
                   "OPEVA_SHARED_DIR": str(tmp_path / "share"), "DOCKER_HOST": docker_host, **FAST_WORKER, **env}
    beat_path = tmp_path / "share" / "spool" / worker_id / "heartbeat.json"
    seen = beat_path.stat().st_mtime_ns if beat_path.exists() else None
    with open(tmp_path / f"worker-{worker_id}-{time.monotonic_ns()}.log", "ab") as log:
        proc = subprocess.Popen([PYTHON, WORKER], env=environment, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    wait_for(lambda: (beat_path.exists() and beat_path.stat().st_mtime_ns != seen) or proc.poll() is not None,
             message=f"worker {worker_id}'s first heartbeat")
    assert proc.poll() is None, worker_log(tmp_path)
    return proc


def stop_worker(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def containers_of(client, label):
    """The containers carrying ``label`` (the SDK inspects each after listing them all: one the worker removes in
    between is left out, not an error)."""
    return client.containers.list(all=True, filters={"label": label}, ignore_removed=True)


def remove_containers(docker_engine, worker_id):
    client = docker_engine[1]
    for container in containers_of(client, f"opeva.worker_id={worker_id}"):
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass  # the worker removed it meanwhile


def worker_log(tmp_path):
    return "".join(path.read_text(errors="replace") for path in tmp_path.glob("worker-*.log"))


def submit(client, command, **fields):
    response = client.post("/run-simulation", json={"command": command, **fields})
    assert response.status == 200, response.text
    return response.json()["job_id"]


def beat(client, worker_id, **info):
    response = client.post("/api/agent/heartbeat", json={"worker_id": worker_id, "info": info})
    assert response.status == 200, response.text
    return response.json()


def next_job(client, worker_id):
    response = client.post("/api/agent/next-job", json={"worker_id": worker_id})
    assert response.status in (200, 204), response.text
    return response.json() if response.status == 200 else None


def report(client, worker_id, job_id, status, **fields):
    return client.post("/api/agent/job-status", json={"worker_id": worker_id, "job_id": job_id, "status": status,
                                                      **fields})


def status_of(client, job_id):
    return client.get(f"/status/{job_id}").json()


# ----- the protocol over HTTP, driven by the test ------------------------------------------------------------

def test_late_status_of_a_superseded_attempt_is_refused_and_changes_nothing(serving):
    server, _, client = serving(embedded_worker=False, offline_after=OFFLINE_AFTER)
    beat(client, "w1", heartbeat_interval=0.2)
    job_id = submit(client, "sleep 60", target_host="w1", max_retries=1)
    first = next_job(client, "w1")
    assert first["job_id"] == job_id and first["attempt"] == 1
    assert report(client, "w1", job_id, "running", attempt=1).status == 200

    # The worker goes silent: past offline_after the server requeues its attempt (max_retries 1).
    wait_for(lambda: status_of(client, job_id)["attempt"] == 2, timeout=15, message="the attempt requeued")
    assert status_of(client, job_id)["status"] == "queued"
    second = next_job(client, "w1")  # the same worker, back, gets the new attempt
    assert second["job_id"] == job_id and second["attempt"] == 2
    folder = server.spool.folder(job_id)
    records = {n: Path(folder.attempt_record(n)).read_bytes() for n in (1, 2)}

    for status in ("running", "finished", "failed"):
        late = report(client, "w1", job_id, status, attempt=1, exit_code=0)
        assert late.status == 409 and late.json()["error"] == "conflict", late.text
        assert "superseded" in late.json()["detail"]
    assert {n: Path(folder.attempt_record(n)).read_bytes() for n in (1, 2)} == records
    assert status_of(client, job_id)["status"] == "dispatched"

    assert report(client, "w1", job_id, "running", attempt=2, container_id="c2").status == 200
    done = report(client, "w1", job_id, "finished", attempt=2, exit_code=0)
    assert done.status == 200 and done.json()["status"] == "finished"
    again = report(client, "w1", job_id, "finished", attempt=2, exit_code=0)  # a retry of the same report
    assert again.status == 200 and again.json()["unchanged"] is True
    ended = Path(folder.attempt_record(2)).read_bytes()
    assert report(client, "w1", job_id, "failed", attempt=2, exit_code=1).status == 409
    assert report(client, "w1", job_id, "running", attempt=2).status == 409
    assert Path(folder.attempt_record(2)).read_bytes() == ended
    info = client.get(f"/job-info/{job_id}").json()
    assert info["status"] == "finished" and info["host"] == "w1" and info["container_id"] == "c2"
    assert [a["state"] for a in info["attempts"]] == ["running", "finished"]


def test_a_silent_worker_goes_offline_in_hosts_and_its_job_fails_without_retries_left(serving):
    _, _, client = serving(embedded_worker=False, offline_after=OFFLINE_AFTER)
    beat(client, "w1", heartbeat_interval=0.2, version="test-1", capacity=2)
    host = next(h for h in client.get("/hosts").json()["hosts"] if h["host"] == "w1")
    assert host["state"] == "online" and host["runtime"] == "http" and host["version"] == "test-1"
    job_id = submit(client, "sleep 60", target_host="w1")
    assert next_job(client, "w1")["job_id"] == job_id
    assert report(client, "w1", job_id, "running").status == 200
    wait_for_status(client, job_id, "failed", timeout=15)
    # The server moves a lost attempt to failed/, then writes its record (Spool.fail_lost).
    wait_for(lambda: client.get(f"/job-info/{job_id}").json()["reason"] == "host_lost", message="reason host_lost")
    assert next(h for h in client.get("/hosts").json()["hosts"] if h["host"] == "w1")["state"] == "offline"
    assert report(client, "w1", job_id, "finished", exit_code=0).status == 409  # its late ending changes nothing
    assert status_of(client, job_id)["status"] == "failed"


def test_a_spool_agent_and_an_http_worker_racing_never_get_the_same_attempt(serving):
    server, _, client = serving(offline_after=30.0, capacity=4)  # the embedded spool agent of host local runs too
    beat(client, "w1", heartbeat_interval=0.2)
    job_ids = [submit(client, ["true"], target_host="any", target_hosts=["local", "w1"]) for _ in range(40)]
    handed, refused, stop = [], [], threading.Event()

    def http_worker():
        while not stop.is_set():
            payload = next_job(client, "w1")
            if payload is None:
                time.sleep(0.01)
                continue
            handed.append(payload["job_id"])
            ended = report(client, "w1", payload["job_id"], "finished", attempt=payload["attempt"], exit_code=0)
            if ended.status != 200:
                refused.append(ended.text)

    threads = [threading.Thread(target=http_worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: all(status_of(client, job_id)["status"] == "finished" for job_id in job_ids), timeout=60,
                 message="every job finished")
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert len(handed) == len(set(handed)), "a job was handed out twice"
    assert not refused
    for job_id in job_ids:
        record = fsio.read_json_object(server.spool.folder(job_id).attempt_record(1))
        assert status_of(client, job_id)["attempt"] == 1
        assert (record["host"] == "w1") == (job_id in handed)
        assert record["agent_id"].startswith("http:w1" if job_id in handed else "local:")
    assert handed and len(handed) < len(job_ids), "both kinds of worker should have taken some"


def test_a_stop_shows_stop_requested_until_the_worker_reports_stopped_and_a_queued_stop_cancels(serving):
    _, _, client = serving(embedded_worker=False)
    beat(client, "w1")
    queued = submit(client, "sleep 60", target_host="gpu-a")
    assert client.post(f"/stop/{queued}").json()["status"] == "canceled"
    assert status_of(client, queued)["status"] == "canceled"

    job_id = submit(client, "sleep 60", target_host="w1")
    assert next_job(client, "w1")["job_id"] == job_id
    assert report(client, "w1", job_id, "running").json()["stop_requested"] is False
    assert client.post(f"/stop/{job_id}").status == 200
    shown = status_of(client, job_id)
    assert shown["status"] == "stop_requested" and shown["stop_requested"] is True
    info = client.get(f"/job-info/{job_id}").json()
    assert info["status"] == "running" and info["stop_requested"] is True  # the dashboard's badge stays a state
    assert report(client, "w1", job_id, "running").json()["stop_requested"] is True
    assert report(client, "w1", job_id, "stopped", exit_code=143).status == 200
    assert status_of(client, job_id)["status"] == "stopped"
    assert client.get(f"/job-info/{job_id}").json()["reason"] == "stop_requested"


def test_next_job_hands_out_the_config_snapshot_relative_to_the_share_and_the_container_name(serving):
    _, _, client = serving(embedded_worker=False)
    beat(client, "w1")
    assert next_job(client, "w1") is None
    job_id = client.post("/run-simulation", json={"config": {"demo": {"episodes": 1}}, "target_host": "w1",
                                                  "job_name": "Grid Search #1", "image": "busybox"}).json()["job_id"]
    payload = next_job(client, "w1")
    assert payload["config_path"] == f"jobs/{job_id}/config.yaml"
    assert payload["container_name"] == f"job_w1_grid_search_1_{job_id[:8]}"
    assert payload["image"] == "busybox" and f"/data/jobs/{job_id}/config.yaml" in payload["command"]
    assert payload["env"]["OPEVA_JOB_ID"] == job_id and payload["attempt"] == 1
    assert status_of(client, job_id)["status"] == "dispatched"


def test_unknown_and_invalid_worker_ids_and_bad_reports_get_clear_json_errors(client):
    def post(path, body):
        response = client.post(path, json=body)
        assert set(response.json()) >= {"error", "detail"}, response.text
        return response.status, response.json()["error"]

    assert post("/api/agent/next-job", {"worker_id": "nobody"}) == (404, "not_found")
    assert post("/api/agent/job-status", {"worker_id": "nobody", "job_id": "j1", "status": "running"})[0] == 404
    assert post("/api/agent/next-job", {}) == (400, "bad_request")
    assert post("/api/agent/next-job", {"worker_id": "../etc"}) == (400, "invalid_name")
    assert post("/api/agent/heartbeat", {"worker_id": "any"}) == (400, "invalid_name")
    assert post("/api/agent/heartbeat", {"worker_id": 7}) == (400, "invalid_name")
    assert post("/api/agent/heartbeat", {"worker_id": "w1", "info": "x"}) == (400, "bad_request")
    assert post("/api/agent/heartbeat", {"worker_id": "local"}) == (409, "conflict")  # the embedded spool agent
    assert post("/api/agent/job-status", {"worker_id": "gpu-a", "job_id": "j1", "status": "done"}) == \
        (400, "bad_request")
    assert post("/api/agent/job-status", {"worker_id": "gpu-a", "job_id": "j1", "status": "failed",
                                          "exit_code": "one"}) == (400, "bad_request")
    assert post("/api/agent/job-status", {"worker_id": "gpu-a", "job_id": "j1", "status": "failed",
                                          "attempt": 0}) == (400, "bad_request")
    assert post("/api/agent/job-status", {"worker_id": "gpu-a", "job_id": "../x", "status": "failed"}) == \
        (400, "invalid_name")
    assert post("/api/agent/job-status", {"worker_id": "gpu-a", "job_id": "j1", "status": "failed"}) == \
        (409, "conflict")  # a configured host, but no such attempt of it
    malformed = client.post("/api/agent/next-job", body=b"{", headers={"Content-Type": "application/json"})
    assert malformed.status == 400 and malformed.json()["error"] == "bad_request"
    assert client.post("/api/agent/next-job", json={"worker_id": "gpu-a"}).status == 204  # configured: known


# ----- the example worker as its own process, with Docker -------------------------------------------------------

def test_the_example_worker_runs_a_job_in_docker_and_reports_it_finished_with_its_log(
        serving, tmp_path, docker_engine, busybox_image):
    _, port, client = serving(embedded_worker=False, offline_after=OFFLINE_AFTER)
    worker = start_worker(tmp_path, port, "w1", docker_engine[0])
    try:
        job_id = submit(client, "sh -c 'echo hello-from-$OPEVA_HOST; ls /data/jobs/$OPEVA_JOB_ID'",
                        target_host="w1", image=busybox_image, job_name="hello")
        wait_for_status(client, job_id, "finished", timeout=60)
        info = client.get(f"/job-info/{job_id}").json()
        assert info["host"] == "w1" and info["exit_code"] == 0
        assert info["container_name"] == f"job_w1_hello_{job_id[:8]}" and info["container_id"]
        wait_for(lambda: "hello-from-w1" in client.get(f"/logs/{job_id}").text, message="the job's log")
        host = next(h for h in client.get("/hosts").json()["hosts"] if h["host"] == "w1")
        assert host["state"] == "online" and host["runtime"] == "http"
        failing = submit(client, "sh -c 'exit 3'", target_host="w1", image=busybox_image)
        wait_for_status(client, failing, "failed", timeout=60)
        assert client.get(f"/job-info/{failing}").json()["exit_code"] == 3
    finally:
        stop_worker(worker)
        remove_containers(docker_engine, "w1")
    assert "Traceback" not in worker_log(tmp_path)


def test_the_example_worker_sees_stop_requested_and_ends_the_job_stopped(
        serving, tmp_path, docker_engine, busybox_image):
    _, port, client = serving(embedded_worker=False, offline_after=OFFLINE_AFTER)
    worker = start_worker(tmp_path, port, "w1", docker_engine[0])
    try:
        # As PID 1 the shell must trap SIGTERM itself (else Docker's stop waits its timeout, then kills).
        job_id = submit(client, "sh -c 'trap \"exit 143\" TERM; sleep 600 & wait'", target_host="w1",
                        image=busybox_image)
        wait_for_status(client, job_id, "running", timeout=60)
        assert client.post(f"/stop/{job_id}").status == 200
        wait_for_status(client, job_id, "stopped", timeout=60)
        info = client.get(f"/job-info/{job_id}").json()
        assert info["reason"] == "stop_requested" and info["exit_code"] == 143
        wait_for(lambda: not containers_of(docker_engine[1], f"opeva.job_id={job_id}"),
                 message="the stopped container removed")
    finally:
        stop_worker(worker)
        remove_containers(docker_engine, "w1")


def test_a_worker_killed_mid_job_has_its_jobs_requeued_or_failed_per_max_retries_once_silent(
        serving, tmp_path, docker_engine, busybox_image):
    _, port, client = serving(embedded_worker=False, offline_after=OFFLINE_AFTER)
    worker = start_worker(tmp_path, port, "w1", docker_engine[0], WORKER_CAPACITY="2")
    # Attempt 1 sleeps long (the worker is killed under it); a later attempt ends at once.
    command = "sh -c 'if [ \"$OPEVA_ATTEMPT\" = 1 ]; then sleep 600; fi; echo attempt-$OPEVA_ATTEMPT'"
    try:
        retried = submit(client, command, target_host="w1", image=busybox_image, max_retries=1)
        lost = submit(client, command, target_host="w1", image=busybox_image)
        for job_id in (retried, lost):
            wait_for_status(client, job_id, "running", timeout=60)
        worker.kill()  # SIGKILL: no goodbye; its containers keep running (nothing on its machine guards them)
        worker.wait(10)
        wait_for(lambda: status_of(client, retried)["attempt"] == 2, timeout=20, message="the retried job requeued")
        assert status_of(client, retried)["status"] == "queued"
        wait_for_status(client, lost, "failed", timeout=20)
        wait_for(lambda: client.get(f"/job-info/{lost}").json()["reason"] == "host_lost", message="reason host_lost")

        # A new worker under the same name removes the containers of the attempts given away and runs attempt 2.
        worker = start_worker(tmp_path, port, "w1", docker_engine[0])
        wait_for_status(client, retried, "finished", timeout=60)
        assert client.get(f"/job-info/{retried}").json()["attempt"] == 2
        wait_for(lambda: "attempt-2" in client.get(f"/logs/{retried}").text, message="attempt 2's log")
        wait_for(lambda: not containers_of(docker_engine[1], f"opeva.job_id={lost}"),
                 message="the lost attempt's container removed")
        assert status_of(client, lost)["status"] == "failed"
    finally:
        stop_worker(worker)
        remove_containers(docker_engine, "w1")


@pytest.mark.parametrize("settings", [{"embedded_worker": False}], indirect=True)
def test_draining_an_http_worker_hands_it_nothing(server):
    client = WsgiClient(server.app)
    beat(client, "w1")
    submit(client, "true", target_host="w1")
    assert client.post("/hosts/w1/drain").status == 200
    assert next_job(client, "w1") is None and beat(client, "w1")["draining"] is True
    assert client.delete("/hosts/w1/drain").status == 200
    assert next_job(client, "w1") is not None


@pytest.mark.parametrize("settings", [{"embedded_worker": False, "retry_backoff": 0.0}], indirect=True)
def test_a_failed_report_of_a_job_with_retry_on_failure_queues_its_next_attempt(server):
    client = WsgiClient(server.app)
    beat(client, "w1")
    job_id = submit(client, "false", target_host="w1", retry_on_failure=True, max_retries=1)
    assert next_job(client, "w1")["attempt"] == 1
    retried = report(client, "w1", job_id, "failed", attempt=1, exit_code=1).json()
    assert retried["status"] == "queued" and retried["attempt"] == 2
    assert next_job(client, "w1")["attempt"] == 2
    assert report(client, "w1", job_id, "failed", attempt=2, exit_code=1).json()["status"] == "failed"
    info = client.get(f"/job-info/{job_id}").json()
    assert info["status"] == "failed" and info["reason"] == "exit_code" and info["exit_code"] == 1


@pytest.mark.parametrize("settings", [{"embedded_worker": False}], indirect=True)
def test_an_http_worker_gets_gpu_jobs_only_for_the_gpus_it_reports_and_never_one_id_twice(server):
    client = WsgiClient(server.app)
    beat(client, "w1", gpu_ids=["0", "1"])
    jobs = [submit(client, "true", target_host="w1", gpus=1) for _ in range(3)]
    first, second = next_job(client, "w1"), next_job(client, "w1")
    assert {first["job_id"], second["job_id"]} == set(jobs[:2])
    assert sorted(first["gpus"] + second["gpus"]) == ["0", "1"]
    assert first["env"]["NVIDIA_VISIBLE_DEVICES"] == first["gpus"][0]
    assert next_job(client, "w1") is None  # both GPUs held
    assert report(client, "w1", first["job_id"], "finished", attempt=1, exit_code=0).status == 200
    third = next_job(client, "w1")
    assert third["job_id"] == jobs[2] and third["gpus"] == first["gpus"]


def test_an_http_worker_cannot_take_the_name_of_a_live_spool_agent(server):
    client = WsgiClient(server.app)
    fsio.makedirs(server.spool.running_dir("gpu-a"))
    fsio.atomic_write_json(server.spool.heartbeat_path("gpu-a"),
                           {"host": "gpu-a", "agent_id": "gpu-a:node:1:abc", "counter": 1, "interval": 0.5})
    server.monitor.observe()
    refused = client.post("/api/agent/heartbeat", json={"worker_id": "gpu-a"})
    assert refused.status == 409 and "spool agent" in refused.json()["detail"]
    assert client.post("/api/agent/next-job", json={"worker_id": "gpu-a"}).status == 409
