"""Several deployments on one machine: the same-host locks are keyed by shared root and host name."""

import os

import pytest

from opeva_spool.agent import Agent
from opeva_spool.exceptions import Conflict
from opeva_spool.runtimes import make_runtime
from opeva_spool.server import Server
from opeva_spool.spool import Spool

from .clients import WsgiClient
from .conftest import PYTHON, make_settings, wait_for_status


@pytest.fixture
def two_servers(tmp_path):
    """Servers with embedded workers on two roots, sharing one lock_dir (as two quick starts do)."""
    started = []
    for name in ("a", "b"):
        settings = make_settings(tmp_path, shared_root=str(tmp_path / name))
        started.append(Server(settings).start())
    yield started
    for server in started:
        server.close()


def test_second_root_starts_beside_a_running_server_and_both_run_jobs(two_servers):
    for server in two_servers:
        client = WsgiClient(server.app)
        job_id = client.post("/run-simulation", json={"command": "true", "target_host": "local"}).json()["job_id"]
        wait_for_status(client, job_id, "finished")


def test_a_second_roots_worker_leaves_the_first_roots_running_job_alone(tmp_path):
    first = Server(make_settings(tmp_path, shared_root=str(tmp_path / "a"))).start()
    second = None
    try:
        client = WsgiClient(first.app)
        script = "import time; time.sleep(1.5); print('slept')"
        job_id = client.post("/run-simulation", json={"command": [PYTHON, "-c", script]}).json()["job_id"]
        wait_for_status(client, job_id, "running")
        # The second worker's start-up reaps what *its* predecessor left running: not this job.
        second = Server(make_settings(tmp_path, shared_root=str(tmp_path / "b"))).start()
        wait_for_status(client, job_id, ("finished", "failed"))
        assert client.get(f"/status/{job_id}").json()["status"] == "finished"
        assert "slept" in client.get(f"/logs/{job_id}").text
    finally:
        for server in (first, second):
            if server is not None:
                server.close()


def test_second_agent_for_the_same_root_and_host_is_refused_naming_the_first(tmp_path):
    settings = make_settings(tmp_path)
    spool = Spool(settings.shared_root)
    first = Agent(settings, spool, make_runtime(settings), host="gpu-a").start()
    try:
        # Another spelling of the same root is the same root.
        same_root = Spool(os.path.join(settings.shared_root, "spool", ".."))
        with pytest.raises(Conflict) as refused:
            Agent(settings, same_root, make_runtime(settings), host="gpu-a").start()
        detail = refused.value.detail
        assert f"pid {os.getpid()}" in detail and f"root {os.path.realpath(settings.shared_root)}" in detail
        assert "stop it first" in detail
        # Another host name on the same root is a different agent.
        other = Agent(settings, spool, make_runtime(settings), host="gpu-b").start()
        other.shutdown(timeout=5)
    finally:
        first.shutdown(timeout=5)
    # Released at shutdown: the next agent for the name starts.
    Agent(settings, spool, make_runtime(settings), host="gpu-a").start().shutdown(timeout=5)
