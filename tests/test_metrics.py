"""GET /metrics on a real server, parsed with prometheus_client's own parser and checked against what was done."""

import os

from prometheus_client.parser import text_string_to_metric_families

from opeva_spool import fsio

from .conftest import PYTHON, wait_for, wait_for_status


def scrape(client):
    response = client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_parse_and_count_what_was_submitted_claimed_and_heartbeaten(serving):
    server, _, client = serving()
    submit = {"command": "true"}
    for _ in range(3):
        client.post("/run-simulation", json={**submit, "target_host": "gpu-a"})
    canceled = client.post("/run-simulation", json={**submit, "target_host": "gpu-b"}).json()["job_id"]
    client.post(f"/stop/{canceled}")
    client.post("/run-simulation", json={**submit, "target_host": "gpu-b"})
    finished = client.post("/run-simulation", json=submit).json()["job_id"]  # the embedded worker runs it
    wait_for_status(client, finished, "finished")
    # gpu-a's agent, as its heartbeat tells: 4 GPUs, 2 free.
    fsio.makedirs(server.spool.running_dir("gpu-a"))
    fsio.atomic_write_json(server.spool.heartbeat_path("gpu-a"), {
        "host": "gpu-a", "boot_id": "b", "counter": 1, "interval": 60, "gpu_ids": ["0", "1", "2", "3"],
        "free_gpus": ["1", "3"]})
    # Two dataset builds' status files, as DatasetStore writes them.
    builds = os.path.join(server.settings.shared_root, "datasets", ".builds")
    fsio.makedirs(builds)
    fsio.atomic_write_json(os.path.join(builds, "a.json"), {"state": "ready"})
    fsio.atomic_write_json(os.path.join(builds, "b.json"), {"state": "failed"})
    client.get("/hosts")  # the server looks at heartbeats now

    samples = scrape(client)
    jobs = {state: samples[("opeva_jobs", (("state", state),))]
            for state in ("queued", "dispatched", "running", "finished", "failed", "stopped", "canceled")}
    assert jobs == {"queued": 4, "dispatched": 0, "running": 0, "finished": 1, "failed": 0, "stopped": 0,
                    "canceled": 1}
    assert samples[("opeva_jobs_queued_by_target", (("target", "gpu-a"),))] == 3
    assert samples[("opeva_jobs_queued_by_target", (("target", "gpu-b"),))] == 1
    assert samples[("opeva_jobs_running_by_host", (("host", "local"),))] == 0
    assert samples[("opeva_host_up", (("host", "gpu-a"),))] == 1
    assert samples[("opeva_host_up", (("host", "gpu-b"),))] == 0  # no heartbeat ever
    assert 0 <= samples[("opeva_host_heartbeat_age_seconds", (("host", "gpu-a"),))] < 30
    assert samples[("opeva_gpu_slots_total", (("host", "gpu-a"),))] == 4
    assert samples[("opeva_gpu_slots_free", (("host", "gpu-a"),))] == 2
    assert samples[("opeva_dataset_builds", (("state", "ready"),))] == 1
    assert samples[("opeva_dataset_builds", (("state", "failed"),))] == 1
    # Only the embedded worker claimed a job: one submit -> claim observation, and a short one.
    assert samples[("opeva_submit_to_claim_seconds_count", ())] == 1
    assert 0 < samples[("opeva_submit_to_claim_seconds_sum", ())] < 10
    assert samples[("opeva_events_last_id", ())] >= 7


def test_metrics_show_a_running_job_on_its_host(serving):
    _, _, client = serving()
    job_id = client.post("/run-simulation", json={"command": [PYTHON, "-c", "import time; time.sleep(30)"]}).json()[
        "job_id"]
    wait_for_status(client, job_id, "running")
    try:
        wait_for(lambda: scrape(client)[("opeva_jobs_running_by_host", (("host", "local"),))] == 1, timeout=10,
                 message="the running job counted on its host")
        samples = scrape(client)
        assert samples[("opeva_jobs", (("state", "running"),))] == 1
        assert samples[("opeva_jobs", (("state", "queued"),))] == 0
    finally:
        client.post(f"/stop/{job_id}")
