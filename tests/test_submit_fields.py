"""What a submission may now say: a list of target hosts, GPUs checked against what hosts have,
dependencies (the job waits), retries; and what it may not."""

import os

import pytest

from opeva_spool import fsio
from opeva_spool.spool import Entry

from .conftest import wait_for_status


def report_gpus(server, host, count):
    """A heartbeat on the share, as host's agent leaves it (it stays there while the agent is down)."""
    fsio.makedirs(server.spool.running_dir(host))
    fsio.atomic_write_json(server.spool.heartbeat_path(host), {"host": host, "gpu_ids": [str(i) for i in range(count)]})


def test_a_job_more_gpus_than_any_host_it_may_run_on_has_is_refused_naming_them(client, server):
    report_gpus(server, "gpu-a", 2)
    report_gpus(server, "gpu-b", 1)
    server.jobs.known_hosts("new")  # the heartbeats are re-read at once, not after the cache's second
    refused = client.post("/run-simulation", json={"command": "true", "target_host": ["gpu-a", "gpu-b"], "gpus": 3})
    assert refused.status == 400
    assert "gpu-a has 2" in refused.json()["detail"] and "gpu-b has 1" in refused.json()["detail"]
    assert client.post("/run-simulation", json={"command": "true", "target_host": "gpu-b", "gpus": 2}).status == 400
    fits = client.post("/run-simulation", json={"command": "true", "target_host": ["gpu-a", "gpu-b"], "gpus": 2})
    assert fits.status == 200
    [name] = [name for name in os.listdir(server.spool.queued_dir) if fits.json()["job_id"] in name]
    entry = Entry.parse(name)
    assert entry.target == "any" and entry.gpus == 2
    info = client.get(f"/job-info/{entry.job_id}").json()
    assert info["target_hosts"] == ["gpu-a", "gpu-b"] and info["target_host"] == "any"


@pytest.mark.parametrize("body", [
    {"target_host": []}, {"target_host": ["gpu-a", "nowhere"]}, {"target_host": [1, 2]}, {"target_host": {"a": 1}},
    {"after": "not-a-list"}, {"after": ["../x"]}, {"after_any": [1]}, {"retry_on_failure": "yes"},
])
def test_malformed_targets_dependencies_and_retry_flags_are_400(client, body):
    answer = client.post("/run-simulation", json={"command": "true", **body})
    assert answer.status == 400 and answer.json()["error"]


def test_a_job_after_unknown_jobs_is_400_naming_them(client):
    answer = client.post("/run-simulation", json={"command": "true", "after": ["no-such-job"]})
    assert answer.status == 400 and "no-such-job" in answer.json()["detail"]


def test_a_job_after_another_waits_in_its_own_folder_and_stopping_it_cancels_it(client, server):
    first = client.post("/run-simulation", json={"command": "sleep 30"}).json()
    waiting = client.post("/run-simulation", json={"command": "true", "after": [first["job_id"]]}).json()
    assert waiting["status"] == "waiting"
    assert client.get(f"/status/{waiting['job_id']}").json()["status"] == "waiting"
    assert [entry.job_id for entry in map(Entry.parse, os.listdir(server.spool.waiting_dir))] == [waiting["job_id"]]
    listed = client.get("/jobs?status=waiting").json()
    assert [item["job_id"] for item in listed] == [waiting["job_id"]]
    assert client.post(f"/stop/{waiting['job_id']}").json()["status"] == "canceled"
    wait_for_status(client, waiting["job_id"], "canceled")
    client.post(f"/stop/{first['job_id']}")
