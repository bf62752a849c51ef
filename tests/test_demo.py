"""The quick start's demo: submitted to the embedded worker and narrated in the server's log."""

import logging
import os
import threading

from opeva_spool import demo
from opeva_spool.jobs import EMBEDDED_HOST

from .conftest import demo_config, wait_for_status


def test_demo_start_saves_its_config_and_queues_the_demo_job_for_the_embedded_worker(server, client):
    job = demo.start(server, EMBEDDED_HOST)
    assert os.path.exists(os.path.join(server.spool.configs_dir, demo.CONFIG_FILE))
    assert job["host"] == EMBEDDED_HOST and job["job_name"] == "demo-training"
    wait_for_status(client, job["job_id"], "running")


def test_narration_follows_the_job_to_its_result(server, client, caplog):
    body = {"config": demo_config(), "target_host": EMBEDDED_HOST}
    job_id = client.post("/run-simulation", json=body).json()["job_id"]
    with caplog.at_level(logging.INFO, logger=demo.__name__):
        demo.narrate(server.jobs, job_id, threading.Event())  # returns once the job ended
    lines = [record.getMessage() for record in caplog.records]
    assert lines[-2].startswith("demo job: finished, progress 100")
    assert lines[-1].startswith("demo job result: ") and '"status": "completed"' in lines[-1]
