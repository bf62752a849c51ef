"""Stopping `serve` and `agent` as systemd and Ctrl-C do, and two deployments side by side: real processes."""

import http.client
import os
import signal
import socket

import pytest

from opeva_spool import fsio
from opeva_spool.spool import Spool

from .conftest import PYTHON, wait_for
from .processes import start_agent, start_server, stop

pytestmark = pytest.mark.slow

LONG_JOB = [PYTHON, "-c", "import time; print('started', flush=True); time.sleep(120)"]


def port_of(client):
    return int(client.base_url.rsplit(":", 1)[1])


def output_of(tmp_path, pattern):
    return "".join(path.read_text(errors="replace") for path in tmp_path.glob(pattern))


def wait_running(client, job_id):
    wait_for(lambda: client.get(f"/status/{job_id}").json()["status"] == "running", message=f"{job_id} running")


def job_pid(root, job_id):
    """The pid its runner recorded for the job's first attempt (the guard leading its process group)."""
    return fsio.read_json_object(Spool(str(root)).folder(job_id).attempt_record(1))["pid"]


def gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_sigterm_stops_serve_with_exit_0_answering_requests_in_flight_and_stopping_its_jobs(tmp_path):
    root = tmp_path / "share"
    proc, client = start_server(root, tmp_path, hosts="local,gpu-a")
    try:
        running = client.post("/run-simulation", json={"command": LONG_JOB, "target_host": "local"}).json()["job_id"]
        wait_running(client, running)
        pid = job_pid(root, running)
        # A job nobody runs, with a log big enough that reading it is still going on at the signal.
        quiet = client.post("/run-simulation", json={"command": "true", "target_host": "gpu-a"}).json()["job_id"]
        log_path = Spool(str(root)).folder(quiet).log
        os.makedirs(os.path.dirname(log_path))
        with open(log_path, "wb") as handle:
            for _ in range(64):
                handle.write(b"x" * (1024 * 1024 - 1) + b"\n")
        size = os.path.getsize(log_path)

        reader = http.client.HTTPConnection("127.0.0.1", port_of(client), timeout=30)
        reader.request("GET", f"/logs/{quiet}")
        response = reader.getresponse()
        first = response.read(64 * 1024)
        follower = http.client.HTTPConnection("127.0.0.1", port_of(client), timeout=30)
        follower.request("GET", f"/logs/{running}?follow=1")
        followed = follower.getresponse()
        assert followed.read(7) == b"started"

        proc.send_signal(signal.SIGTERM)
        assert len(first) + len(response.read()) == size  # the request in flight was answered in full
        followed.read()  # the follow ends with the server, cleanly (a chunked end, no reset)
        assert proc.wait(30) == 0
    finally:
        stop(proc)
    output = output_of(tmp_path, "server-*.log")
    assert "Traceback" not in output and "Bad file descriptor" not in output
    assert gone(pid), "the embedded worker's job outlived the server"
    with pytest.raises(OSError):  # nothing listens any more
        socket.create_connection(("127.0.0.1", port_of(client)), timeout=2)


def test_sigint_stops_serve_with_exit_0(tmp_path):
    proc, _ = start_server(tmp_path / "share", tmp_path)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0
    assert "Traceback" not in output_of(tmp_path, "server-*.log")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_agent_stops_with_exit_0_and_its_job_ends(signum, tmp_path):
    root = tmp_path / "share"
    server, client = start_server(root, tmp_path, hosts="gpu-a", embedded_worker="false")
    agent = start_agent(root, tmp_path, "gpu-a")
    try:
        job_id = client.post("/run-simulation", json={"command": LONG_JOB, "target_host": "gpu-a"}).json()["job_id"]
        wait_running(client, job_id)
        pid = job_pid(root, job_id)
        agent.send_signal(signum)
        assert agent.wait(30) == 0
        assert gone(pid)
    finally:
        stop(agent)
        stop(server)
    assert "Traceback" not in output_of(tmp_path, "agent-gpu-a-*.log")


def test_two_serve_on_different_roots_run_side_by_side(tmp_path):
    # Both quick starts on one machine, with one lock dir: each has its own embedded 'local' worker.
    first, first_client = start_server(tmp_path / "root-a", tmp_path)
    try:
        second, second_client = start_server(tmp_path / "root-b", tmp_path)
        try:
            for client in (first_client, second_client):
                job_id = client.post("/run-simulation", json={"command": "true", "target_host": "local"}).json()
                wait_for(lambda c=client, j=job_id["job_id"]: c.get(f"/status/{j}").json()["status"] == "finished",
                         message="a job on each root")
        finally:
            stop(second)
    finally:
        stop(first)
    assert first.returncode == 0 and second.returncode == 0


@pytest.mark.parametrize("command", ["serve", "agent"])
def test_a_burst_of_signals_still_stops_with_exit_0(command, tmp_path):
    """Ctrl-C pressed twice, systemd's SIGTERM beside a wrapper's: a handler interrupted by the next signal
    must not deadlock (a lock taken in a handler is held by the handler it interrupted)."""
    root = tmp_path / "share"
    server, _ = start_server(root, tmp_path, hosts="gpu-a")
    proc = server if command == "serve" else start_agent(root, tmp_path, "gpu-a")
    # Up, with its handlers installed: its heartbeat is on the share.
    wait_for(lambda: os.path.exists(Spool(str(root)).heartbeat_path("gpu-a" if command == "agent" else "local")),
             message=f"{command} up")
    try:
        for _ in range(200):
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        stop(proc, signal.SIGKILL)
        stop(server)
