"""Log followers on a real waitress: they never hold the request threads, leave when their client does,
and one client cannot hold more than its share."""

import json
import socket

from opeva_spool.server import WAITRESS_THREADS
from opeva_spool.streams import is_stream

from .conftest import PYTHON, wait_for, wait_for_status


def open_follow(port, job_id, source="127.0.0.1"):
    """A follower's connection: the request sent, the response left unread."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    sock.sendall(f"GET /logs/{job_id}?follow=1 HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    return sock


def read_response(sock):
    """Status and body of a complete (Content-Length) response on ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    headers = dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:])
    length = int(headers[b"content-length"])
    while len(body) < length:
        body += sock.recv(4096)
    return int(head.split()[1]), json.loads(body)


def running_job(client, seconds=60):
    job_id = client.post("/run-simulation", json={
        "command": [PYTHON, "-c", f"import time; print('started', flush=True); time.sleep({seconds})"],
    }).json()["job_id"]
    wait_for_status(client, job_id, "running")
    return job_id


def test_thirty_followers_leave_health_answering_and_go_when_their_clients_do(serving):
    server, port, client = serving()
    job_id = running_job(client)
    followers = [open_follow(port, job_id) for _ in range(30)]
    try:
        assert len(followers) > WAITRESS_THREADS
        wait_for(lambda: server.streams.open_streams() == 30, timeout=10, message="30 open streams")
        # Each follower used to hold one of the 8 request threads: /health then got no answer at all.
        assert client.get("/health", timeout=5).status == 200
        assert client.get(f"/status/{job_id}", timeout=5).json()["status"] == "running"
    finally:
        for sock in followers:
            sock.close()
    # Gone clients are noticed without anything to write to them (the job's log is quiet).
    wait_for(lambda: server.streams.open_streams() == 0, timeout=3, message="the streams of gone clients to end")


def test_a_client_over_its_stream_share_gets_429_and_a_full_server_503(serving):
    server, port, client = serving(max_streams=3, max_streams_per_client=2)
    job_id = running_job(client)
    held = [open_follow(port, job_id), open_follow(port, job_id)]
    try:
        wait_for(lambda: server.streams.open_streams() == 2, timeout=10, message="2 open streams")
        status, body = read_response(open_follow(port, job_id))
        assert status == 429 and body["error"] == "too_many_streams" and "max_streams_per_client" in body["detail"]
        # Another client address (all of 127.0.0.0/8 is this machine) still gets the last slot ...
        held.append(open_follow(port, job_id, source="127.0.0.2"))
        wait_for(lambda: server.streams.open_streams() == 3, timeout=10, message="3 open streams")
        # ... and beyond the server's total, everyone gets 503.
        status, body = read_response(open_follow(port, job_id, source="127.0.0.3"))
        assert status == 503 and body["error"] == "unavailable" and "max_streams" in body["detail"]
        # Ordinary requests are not streams and not counted.
        assert client.get(f"/logs/{job_id}", timeout=5).status == 200
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: server.streams.open_streams() == 0, timeout=3, message="the streams to end")


def test_what_counts_as_a_stream():
    assert is_stream("/logs/abc", "follow=1", "")
    assert is_stream("/file-logs/abc", "tail=5&follow=true", "")
    assert not is_stream("/logs/abc", "tail=5", "")
    assert not is_stream("/logs/abc", "follow=0", "")
    assert not is_stream("/status/abc", "follow=1", "")
    assert is_stream("/events", "", "text/event-stream")
