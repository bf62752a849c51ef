"""/health and /hosts: fast, truthful, and never failing for what is not configured."""

import os
import shutil

from opeva_spool.server import Server

from .clients import WsgiClient, free_port
from .conftest import make_settings, wait_for


def test_health_reports_unconfigured_dependencies_without_failing(client):
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["problems"] == []
    assert body["mongodb"] == {"status": "not_configured"} and body["docker"] == {"status": "not_configured"}


def test_health_reports_a_reachable_and_a_dead_mongodb(tmp_path, mongo_uri):
    for uri, expected in ((mongo_uri, "ok"), (f"mongodb://127.0.0.1:{free_port()}/", "unreachable")):
        server = Server(make_settings(tmp_path / expected, mongo_uri=uri, mongo_timeout_ms=300,
                                      embedded_worker=False))
        client = WsgiClient(server.app)
        assert client.get("/health").status == 200  # the check runs in the background: never blocks
        status = wait_for(lambda client=client: client.get("/health").json()["mongodb"]["status"] != "checking"
                          and client.get("/health").json()["mongodb"], message="mongodb check")
        assert status["status"] == expected


def test_health_is_503_when_the_shared_root_is_not_usable(tmp_path):
    server = Server(make_settings(tmp_path, embedded_worker=False))
    shutil.rmtree(server.spool.staging_dir)
    with open(server.spool.staging_dir, "w") as handle:  # a file where the staging dir must be
        handle.write("x")
    response = WsgiClient(server.app).get("/health")
    assert response.status == 503
    assert response.json()["error"] == "unavailable" and "not writable" in response.json()["detail"]


def describe(client, name):
    return next(host for host in client.get("/hosts").json()["hosts"] if host["host"] == name)


def test_hosts_keeps_available_hosts_and_describes_the_local_worker(client):
    local = wait_for(lambda: (lambda h: h if h["state"] == "online" else None)(describe(client, "local")),
                     message="local heartbeat")
    body = client.get("/hosts").json()
    assert body["available_hosts"] == ["gpu-a", "gpu-b", "local"]
    assert local["state"] == "online" and local["capacity"] == 2 and local["running"] == []
    assert local["seconds_since_seen"] is not None and local["draining"] is False
    gpu_a = next(host for host in body["hosts"] if host["host"] == "gpu-a")
    assert gpu_a["state"] in ("suspect", "offline") and gpu_a["seconds_since_seen"] is None


def test_drain_file_is_visible_in_hosts_and_stops_claims(client, server):
    server.spool.request_drain("local")
    wait_for(lambda: describe(client, "local")["draining"], message="drain to show")
    job = client.post("/run-simulation", json={"command": "true"}).json()
    server.agent.wake.set()
    assert client.get(f"/status/{job['job_id']}").json()["status"] == "queued"
    server.spool.request_drain("local", undo=True)
    server.agent.wake.set()
    wait_for(lambda: client.get(f"/status/{job['job_id']}").json()["status"] == "finished", message="undrained run")
    assert not os.path.exists(server.spool.drain_path("local"))


def test_health_answers_from_facts_refreshed_in_the_background_and_sees_a_broken_root_within_seconds(tmp_path):
    server = Server(make_settings(tmp_path, embedded_worker=False))
    client = WsgiClient(server.app)
    assert client.get("/health").status == 200  # the first probe computes the facts itself
    shutil.rmtree(server.spool.staging_dir)
    with open(server.spool.staging_dir, "w") as handle:  # a file where the staging dir must be
        handle.write("x")
    # Probes keep answering at once from the last facts; a refresh started by a stale probe reports the problem.
    response = wait_for(lambda: (lambda r: r if r.status == 503 else None)(client.get("/health")), timeout=10,
                        message="/health to report the unusable root")
    assert "not writable" in response.json()["detail"]
