"""GET /logs: whole, tail, follow until the job ends, constant memory on big files."""

import os
import threading
import tracemalloc

from opeva_spool.logs import LOG_CHUNK, tail_offset

from .conftest import PYTHON, wait_for_status


def log_path(server, job_id):
    path = server.spool.folder(job_id).log
    os.makedirs(os.path.dirname(path), exist_ok=True)  # a queued job has no logs/ yet
    return path


def write_log(server, job_id, data):
    path = log_path(server, job_id)
    with open(path, "wb") as handle:
        handle.write(data)
    return path


def queued_job(client):
    return client.post("/run-simulation", json={"command": "true", "target_host": "gpu-a"}).json()["job_id"]


def test_tail_returns_the_last_lines(client, server):
    job_id = queued_job(client)
    write_log(server, job_id, b"".join(b"line %d\n" % i for i in range(1, 1001)))
    assert client.get(f"/logs/{job_id}?tail=3").text == "line 998\nline 999\nline 1000\n"
    assert client.get(f"/file-logs/{job_id}?tail=1").text == "line 1000\n"
    assert client.get(f"/logs/{job_id}?tail=0").text == ""
    assert client.get(f"/logs/{job_id}?tail=5000").text.count("\n") == 1000


def test_tail_across_block_boundaries_and_without_final_newline(tmp_path):
    path = tmp_path / "log"
    long_line = b"x" * (LOG_CHUNK + 10)
    path.write_bytes(b"first\n" + long_line + b"\nlast-no-newline")
    with open(path, "rb") as handle:
        handle.seek(tail_offset(handle, 2))
        assert handle.read() == long_line + b"\nlast-no-newline"
        handle.seek(tail_offset(handle, 3))
        assert handle.read().startswith(b"first\n")


def test_follow_streams_new_lines_until_the_job_ends(http, client):
    script = ("import time\nfor i in range(8):\n    print('tick', i, flush=True)\n    time.sleep(0.15)\n")
    job_id = client.post("/run-simulation", json={"command": [PYTHON, "-c", script]}).json()["job_id"]
    wait_for_status(client, job_id, ("running", "finished"))
    response = http.get(f"/logs/{job_id}?follow=1", timeout=30)  # returns only once the job ended
    assert response.status == 200
    assert [line for line in response.text.splitlines() if line.startswith("tick")] == [f"tick {i}" for i in range(8)]
    assert client.get(f"/status/{job_id}").json()["status"] == "finished"


def test_streaming_a_large_log_uses_constant_memory(client, server):
    job_id = queued_job(client)
    path = log_path(server, job_id)
    block = (b"0123456789" * 10 + b"\n") * 10_000  # ~1 MB
    with open(path, "wb") as handle:
        for _ in range(200):  # ~200 MB
            handle.write(block)
    size = os.path.getsize(path)
    tracemalloc.start()
    try:
        total = sum(len(chunk) for chunk in server.jobs.log_stream(job_id))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == size
    assert peak < 4 * LOG_CHUNK + 1_000_000, f"peak {peak} bytes while streaming {size} bytes"


def test_logs_of_unknown_job_is_404_and_of_unstarted_job_is_empty(client):
    assert client.get("/logs/nope").status == 404
    assert client.get(f"/logs/{queued_job(client)}").text == ""


def test_follow_of_a_queued_job_that_gets_canceled_ends(http, client):
    job_id = queued_job(client)
    result = {}
    reader = threading.Thread(target=lambda: result.update(r=http.get(f"/logs/{job_id}?follow=1", timeout=30)))
    reader.start()
    client.post(f"/stop/{job_id}")
    reader.join(20)
    assert not reader.is_alive() and result["r"].status == 200
