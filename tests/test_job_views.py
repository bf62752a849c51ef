"""What the dashboard and the CLI read about a job besides its status: the progress history the
agent keeps, the image's metrics.jsonl, every attempt, the config snapshot, an earlier attempt's
log, list filters, a resubmission, a drain over HTTP and where a config's YAML is wrong."""

import json
import os
from urllib.parse import urlencode

import pytest

from opeva_spool import fsio, progress
from opeva_spool.jobs import JobFolder
from opeva_spool.server import Server

from .clients import WsgiClient
from .conftest import demo_config, make_settings, wait_for, wait_for_status


def get(client, path, query):
    return client.get(f"{path}?{urlencode(query)}")


def finished_demo_job(client, **body):
    job_id = client.post("/run-simulation", json={"config": demo_config(episodes=2, steps=10, step_seconds=0.02),
                                                  **body}).json()["job_id"]
    wait_for_status(client, job_id, "finished")
    return job_id


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """(server, client, job id) of one finished demo job, shared by the tests that only read it."""
    server = Server(make_settings(tmp_path_factory.mktemp("views"))).start()
    client = WsgiClient(server.app)
    yield server, client, finished_demo_job(client)
    server.close()


def test_progress_history_keeps_every_version_the_agent_saw_in_order(finished):
    _, client, job_id = finished
    history = client.get(f"/progress/{job_id}/history").json()["history"]
    steps = [point["progress"]["global_step"] for point in history]
    # The demo rewrites progress.json every 20 ms and the runner samples every 200 ms: not every
    # version is seen, but the last one is, and each seen once, in order.
    assert len(steps) >= 3 and steps[-1] == 20 and steps == sorted(steps) and len(set(steps)) == len(steps)
    assert history[-1]["progress"]["status"] == "completed"
    times = [point["at"] for point in history]
    assert times == sorted(times) and len(set(times)) == len(times)


def test_progress_history_since_answers_only_later_points(finished):
    _, client, job_id = finished
    history = client.get(f"/progress/{job_id}/history").json()["history"]
    assert len(history) >= 3
    middle = history[1]["at"]
    later = get(client, f"/progress/{job_id}/history", {"since": middle}).json()["history"]
    assert later == history[2:]
    # A time without fraction or zone counts as UTC and compares as a time, not as text.
    whole_second = middle[:19]
    assert get(client, f"/progress/{job_id}/history", {"since": whole_second}).json()["history"][0]["at"] >= \
        whole_second


def test_bad_since_is_a_400(finished):
    _, client, job_id = finished
    response = get(client, f"/progress/{job_id}/history", {"since": "yesterday"})
    assert response.status == 400 and "since" in response.json()["detail"]


def test_history_of_a_job_without_progress_is_empty_and_unknown_job_404(client):
    job_id = client.post("/run-simulation", json={"command": "true", "target_host": "gpu-a"}).json()["job_id"]
    assert client.get(f"/progress/{job_id}/history").json() == {"job_id": job_id, "history": []}
    assert client.get("/progress/no-such-job/history").status == 404


def test_history_stays_bounded_and_keeps_the_newest_points(tmp_path, monkeypatch):
    monkeypatch.setattr(progress, "MAX_HISTORY_BYTES", 4096)
    folder = JobFolder(str(tmp_path), "job-1")
    os.makedirs(os.path.dirname(folder.progress))
    recorder = progress.ProgressRecorder(folder)
    for step in range(400):
        fsio.atomic_write_json(folder.progress, {"global_step": step, "progress_pct": step / 4}, durable=False)
        assert recorder.sample()
        assert not recorder.sample()  # unchanged: no point
    assert os.path.getsize(progress.history_path(folder)) <= 4096 + 200
    steps = [point["progress"]["global_step"] for point in progress.read_history(folder)]
    assert steps[0] == 0 and steps[-1] == 399 and steps == sorted(steps)
    assert steps[-10:] == list(range(390, 400))  # the newest points are all there


def test_restarted_recorder_does_not_repeat_the_last_point(tmp_path):
    folder = JobFolder(str(tmp_path), "job-1")
    os.makedirs(os.path.dirname(folder.progress))
    fsio.atomic_write_json(folder.progress, {"global_step": 1}, durable=False)
    assert progress.ProgressRecorder(folder).sample()
    assert not progress.ProgressRecorder(folder).sample()  # an agent restarted mid-run
    assert len(progress.read_history(folder)) == 1


def test_history_planted_as_a_link_is_not_written_through(tmp_path):
    folder = JobFolder(str(tmp_path / "jobs"), "job-1")
    os.makedirs(os.path.dirname(folder.progress))
    outside = tmp_path / "outside.txt"
    outside.write_text("host file\n")
    os.symlink(outside, progress.history_path(folder))
    fsio.atomic_write_json(folder.progress, {"global_step": 1}, durable=False)
    with pytest.raises(OSError):
        progress.ProgressRecorder(folder).sample()
    assert outside.read_text() == "host file\n"


def test_job_metrics_pages_by_offset_and_waits_for_a_torn_line(finished):
    server, client, job_id = finished
    answer = client.get(f"/job-metrics/{job_id}").json()
    assert [m["global_step"] for m in answer["metrics"]] == list(range(1, 21))
    assert all(isinstance(m["loss"], float) for m in answer["metrics"])
    path = progress.metrics_path(server.spool.folder(job_id))
    assert answer["offset"] == os.path.getsize(path)
    with open(path, "a") as handle:
        handle.write('{"global_step": 21, "loss": 0.1}\n{"global_step": 2')  # the second line is being written
    more = get(client, f"/job-metrics/{job_id}", {"offset": answer["offset"]}).json()
    assert more["metrics"] == [{"global_step": 21, "loss": 0.1}]
    with open(path, "a") as handle:
        handle.write('2, "loss": 0.09}\nnot json\n')
    rest = get(client, f"/job-metrics/{job_id}", {"offset": more["offset"]}).json()
    assert rest["metrics"] == [{"global_step": 22, "loss": 0.09}] and rest["offset"] == os.path.getsize(path)
    assert get(client, f"/job-metrics/{job_id}", {"offset": "-1"}).status == 400


def test_job_info_lists_every_attempt_and_logs_serve_each_attempts_log(client, server):
    # No agent runs for gpu-a: the test plays its agent with the spool's own calls. Attempt 1 is
    # lost with its host and requeued (its record never gets an ending); attempt 2 fails.
    spool = server.spool
    job_id = client.post("/run-simulation", json={"command": "true", "target_host": "gpu-a"}).json()["job_id"]
    folder = spool.folder(job_id)
    first = server.jobs.lookup(job_id).entry
    os.makedirs(spool.running_dir("gpu-a"))  # as gpu-a's agent makes it when it starts
    assert spool.claim(first, "gpu-a", "agent-1")
    spool.write_attempt(first, "gpu-a", "agent-1", "running", started_at="2026-01-01T00:00:01Z")
    os.makedirs(os.path.dirname(folder.log), exist_ok=True)
    with open(folder.log, "w") as handle:
        handle.write("first attempt\n")
    second = spool.requeue(first, "gpu-a")
    server.index.resolve(job_id)
    # Attempt 2 has not started: attempt 1's log is still where the current log goes.
    assert get(client, f"/logs/{job_id}", {"attempt": "1"}).text == "first attempt\n"
    assert spool.claim(second, "gpu-a", "agent-2")
    os.replace(folder.log, folder.attempt_log(1))  # what a runner does before it starts attempt 2
    with open(folder.log, "w") as handle:
        handle.write("second attempt\n")
    assert spool.finish(second, "gpu-a", "agent-2", "failed", exit_code=3)
    server.index.resolve(job_id)
    info = client.get(f"/job-info/{job_id}").json()
    assert [a["attempt"] for a in info["attempts"]] == [1, 2]
    lost, failed = info["attempts"]
    assert lost["host"] == "gpu-a" and lost["state"] == "running" and lost["exit_code"] is None
    assert lost["claimed_at"] and lost["started_at"] == "2026-01-01T00:00:01Z" and lost["ended_at"] is None
    assert failed["state"] == "failed" and failed["exit_code"] == 3 and failed["ended_at"]
    assert get(client, f"/logs/{job_id}", {"attempt": "1"}).text == "first attempt\n"
    assert get(client, f"/logs/{job_id}", {"attempt": "2"}).text == "second attempt\n"
    assert client.get(f"/logs/{job_id}").text == "second attempt\n"
    assert get(client, f"/logs/{job_id}", {"attempt": "3"}).status == 404
    assert get(client, f"/logs/{job_id}", {"attempt": "x"}).status == 400


def test_job_config_serves_the_snapshot_not_the_edited_config(client):
    client.post("/experiment-configs/create", json={"file_name": "exp.yaml", "config": demo_config()})
    job_id = client.post("/run-simulation", json={"config_path": "exp.yaml", "target_host": "gpu-a"}).json()["job_id"]
    client.post("/experiment-configs/create", json={"file_name": "exp.yaml", "config": {"edited": True}})
    response = client.get(f"/job-config/{job_id}")
    assert response.status == 200 and response.headers["Content-Type"].startswith("text/yaml")
    assert "demo:" in response.text and "edited" not in response.text
    command_only = client.post("/run-simulation", json={"command": "true", "target_host": "gpu-a"}).json()["job_id"]
    missing = client.get(f"/job-config/{command_only}")
    assert missing.status == 404 and "no config snapshot" in missing.json()["detail"]


def test_resubmit_runs_the_same_snapshot_again_with_overrides(client):
    client.post("/experiment-configs/create", json={"file_name": "exp.yaml", "config": demo_config()})
    first = finished_demo_job(client, job_name="lr-1", submitted_by="ana")
    client.post("/experiment-configs/create", json={"file_name": "exp.yaml", "config": {"edited": True}})
    again = client.post(f"/resubmit/{first}", json={"priority": 7})
    assert again.status == 200, again.text
    body = again.json()
    assert body["resubmitted_from"] == first and body["job_id"] != first and body["priority"] == 7
    wait_for_status(client, body["job_id"], "finished")
    info = client.get(f"/job-info/{body['job_id']}").json()
    assert info["job_name"] == "lr-1" and info["submitted_by"] == "ana"
    assert client.get(f"/job-config/{body['job_id']}").text == client.get(f"/job-config/{first}").text
    refused = client.post(f"/resubmit/{first}", json={"image": "evil"})
    assert refused.status == 400 and "image" in refused.json()["detail"]
    assert client.post("/resubmit/nope").status == 404


def test_jobs_filter_by_submitter_and_text_and_rows_carry_list_fields(client):
    ids = {}
    for name, who in (("alpha-run", "ana"), ("beta-run", "bo"), ("alpha-two", "bo")):
        ids[name] = client.post("/run-simulation", json={"command": "true", "target_host": "gpu-a", "job_name": name,
                                                         "submitted_by": who}).json()["job_id"]
    by_bo = get(client, "/jobs", {"submitter": "bo"}).json()
    assert {row["job_name"] for row in by_bo} == {"beta-run", "alpha-two"}
    alpha = get(client, "/jobs", {"q": "ALPHA"}).json()
    assert {row["job_name"] for row in alpha} == {"alpha-run", "alpha-two"}
    both = get(client, "/jobs", {"q": "alpha", "submitter": "bo"}).json()
    assert [row["job_id"] for row in both] == [ids["alpha-two"]]
    by_id = get(client, "/jobs", {"q": ids["beta-run"][:8]}).json()
    assert ids["beta-run"] in [row["job_id"] for row in by_id]
    row = both[0]
    assert row["status"] == "queued" and row["target_host"] == "gpu-a" and row["submitted_by"] == "bo"
    assert row["progress_pct"] is None and row["attempt"] == 1 and row["started_at"] is None
    assert row["job_info"]["job_name"] == "alpha-two"  # the original field is kept


def test_jobs_list_paging_with_a_filter_walks_every_match_once(client):
    for index in range(7):
        client.post("/run-simulation", json={"command": "true", "target_host": "gpu-a", "job_name": f"sweep-{index}",
                                             "submitted_by": "ana" if index % 2 else "bo"})
    seen, cursor = [], None
    while True:
        query = {"submitter": "ana", "limit": "2", **({"cursor": cursor} if cursor else {})}
        response = get(client, "/jobs", query)
        seen += [row["job_name"] for row in response.json()]
        cursor = response.headers.get("X-Next-Cursor")
        if not cursor:
            break
    assert seen == ["sweep-5", "sweep-3", "sweep-1"]


def test_finished_job_row_has_times_and_full_progress(finished):
    _, client, job_id = finished
    row = next(r for r in client.get("/jobs").json() if r["job_id"] == job_id)
    assert row["progress_pct"] == 100.0 and row["started_at"] and row["ended_at"]


def test_drain_over_http_reaches_the_agent_and_unknown_host_is_404(client, server):
    assert client.post("/hosts/local/drain").json() == {
        "host": "local", "draining": True, "message": client.post("/hosts/local/drain").json()["message"]}
    wait_for(lambda: next(h for h in client.get("/hosts").json()["hosts"] if h["host"] == "local")["draining"],
             message="the agent's heartbeat to say it drains")
    job_id = client.post("/run-simulation", json={"command": "true"}).json()["job_id"]
    assert client.get(f"/status/{job_id}").json()["status"] == "queued"
    assert client.delete("/hosts/local/drain").json()["draining"] is False
    wait_for_status(client, job_id, "finished")
    assert client.post("/hosts/nowhere/drain").status == 404
    assert client.post("/hosts/..%2Fetc/drain").status in (400, 404)
    assert not os.path.exists(os.path.join(server.spool.spool_dir, "nowhere"))


def test_config_with_broken_yaml_names_the_line(client):
    text = "experiment:\n  name: demo\n  run_name: [unclosed\nalgorithm: {}\n"
    response = client.post("/experiment-configs/create", json={"file_name": "bad.yaml", "config": text})
    assert response.status == 400
    body = response.json()
    assert body["line"] == 4 and body["column"] >= 1 and "not valid YAML" in body["detail"]
    assert json.loads(client.get("/experiment-configs").text) == []
