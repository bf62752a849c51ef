"""Bad input on every endpoint gets a JSON 4xx, and nothing outside the shared root is touched."""

import json
import os

import pytest

from opeva_spool.api.app import Context, make_app
from opeva_spool.server import Server

from .clients import WsgiClient
from .conftest import make_settings

BAD_JOB_IDS = ["..", "../etc", "..%2F..%2Fetc", "%2Fetc%2Fpasswd", ".hidden", "a" * 200, "a%00b", "a..b",
               "job%20id", "~root"]
JOB_ID_ROUTES = [("GET", "/status/{}"), ("GET", "/result/{}"), ("GET", "/progress/{}"), ("GET", "/job-info/{}"),
                 ("GET", "/logs/{}"), ("GET", "/file-logs/{}"), ("POST", "/stop/{}"), ("DELETE", "/job/{}")]
BAD_CONFIG_NAMES = ["..", "../x.yaml", "x.txt", ".x.yaml", "%2Fetc%2Fpasswd.yaml", "a" * 200 + ".yaml", "x.yaml.sh"]


def tree_snapshot(tmp_dir):
    """Everything under the test's temp dir except the shared root (and the agent's lock dir)."""
    listing = []
    for directory, dirs, files in os.walk(tmp_dir):
        if directory == str(tmp_dir):
            dirs[:] = [name for name in dirs if name not in ("share", "locks")]
        listing.extend(os.path.join(directory, name) for name in dirs + files)
    return sorted(listing)


@pytest.fixture
def outside(tmp_path):
    """A directory beside the shared root: it must never change."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "secret.yaml").write_text("secret: true\n")
    return path


def assert_json_error(response, *statuses):
    assert response.status in statuses, response
    body = response.json()
    assert isinstance(body["error"], str) and isinstance(body["detail"], str)
    return body


@pytest.mark.parametrize("method,route", JOB_ID_ROUTES)
def test_bad_job_ids_are_refused_on_every_job_route(client, outside, method, route):
    before = tree_snapshot(outside.parent)
    for job_id in BAD_JOB_IDS:
        response = client.request(method, route.format(job_id))
        assert_json_error(response, 400, 404)
    assert tree_snapshot(outside.parent) == before


@pytest.mark.parametrize("method,route", [("GET", "/experiment-configs/{}"), ("DELETE", "/experiment-configs/{}"),
                                          ("GET", "/experiment-config/{}"), ("DELETE", "/experiment-config/{}")])
def test_bad_config_names_are_refused(client, outside, method, route):
    before = tree_snapshot(outside.parent)
    for name in BAD_CONFIG_NAMES:
        assert_json_error(client.request(method, route.format(name)), 400, 404)
    assert tree_snapshot(outside.parent) == before


def test_config_names_with_path_parts_cannot_be_created_or_submitted(client, outside, server):
    before = tree_snapshot(outside.parent)
    for name in ["../../outside/evil.yaml", "/tmp/evil.yaml", "sub/evil.yaml", "configs/../evil.yaml"]:
        created = client.post("/experiment-configs/create", json={"file_name": name, "config": {"a": 1}})
        assert_json_error(created, 400)
        submitted = client.post("/run-simulation", json={"config": {"a": 1}, "save_as": name})
        assert_json_error(submitted, 400)
        by_path = client.post("/run-simulation", json={"config_path": name})
        assert_json_error(by_path, 400)
    assert tree_snapshot(outside.parent) == before
    assert os.listdir(server.spool.queued_dir) == []


def test_symlink_planted_in_configs_cannot_be_read_or_used(client, server, outside):
    os.symlink(outside / "secret.yaml", os.path.join(server.spool.configs_dir, "leak.yaml"))
    read = client.get("/experiment-configs/leak.yaml")
    body = assert_json_error(read, 400)
    assert "outside" in body["detail"]
    assert_json_error(client.post("/run-simulation", json={"config_path": "leak.yaml"}), 400)


def test_bad_hosts_and_fields_in_submissions(client, server):
    cases = [
        {"command": "true", "target_host": "../x"},
        {"command": "true", "target_host": "nohost"},
        {"command": "true", "target_host": "queued"},
        {"command": "true", "priority": 1000},
        {"command": "true", "priority": "high"},
        {"command": "true", "env": {"BAD NAME": "x"}},
        {"command": "true", "env": ["A=1"]},
        {"command": "true", "gpus": -1},
        {"command": ""},
        {"command": ["ok", 3]},
        {"config": "not an object"},
        {"config": {"a": 1}, "config_path": "x.yaml"},
        {"config_path": "missing.yaml"},
        {},
        {"command": "true", "job_name": 12},
    ]
    for body in cases:
        assert_json_error(client.post("/run-simulation", json=body), 400)
    assert os.listdir(server.spool.queued_dir) == []
    assert os.listdir(server.spool.jobs_dir) == []


def test_malformed_and_non_object_json_bodies(client):
    for raw in [b"{", b"[1, 2]", b"\"text\"", b"\xff\xfe", b"{\"a\": }"]:
        assert_json_error(client.post("/run-simulation", body=raw), 400)
        assert_json_error(client.post("/experiment-configs/create", body=raw), 400)


def test_body_over_the_limit_gets_413(tmp_path):
    server = Server(make_settings(tmp_path, max_body_bytes=1000, embedded_worker=False))
    client = WsgiClient(server.app)
    big = {"command": "true", "env": {"X": "y" * 2000}}
    body = assert_json_error(client.post("/run-simulation", json=big), 413)
    assert "1000" in body["detail"]
    assert os.listdir(server.spool.queued_dir) == []


def test_unknown_routes_and_methods_answer_json(client):
    assert_json_error(client.get("/no/such/route"), 404)
    assert_json_error(client.put("/status/x"), 405)
    assert_json_error(client.get("/status/not-a-job"), 404)


def test_bad_query_parameters(client):
    assert_json_error(client.get("/jobs?limit=abc"), 400)
    assert_json_error(client.get("/jobs?limit=0"), 400)
    assert_json_error(client.get("/jobs?status=sleeping"), 400)
    assert_json_error(client.get("/jobs?host=..%2Fx"), 400)
    assert_json_error(client.get("/jobs?cursor=garbage"), 400)
    job = client.post("/run-simulation", json={"command": "true", "target_host": "gpu-a"}).json()
    assert_json_error(client.get(f"/logs/{job['job_id']}?tail=-1"), 400)


def test_token_is_required_on_mutating_endpoints_when_set(tmp_path):
    server = Server(make_settings(tmp_path, api_token="s3cret", embedded_worker=False))
    client = WsgiClient(server.app)
    body = {"command": "true", "target_host": "gpu-a"}
    assert_json_error(client.post("/run-simulation", json=body), 401)
    assert_json_error(client.post("/run-simulation", json=body, headers={"Authorization": "Bearer wrong"}), 401)
    accepted = client.post("/run-simulation", json=body, headers={"Authorization": "Bearer s3cret"})
    assert accepted.status == 200
    job_id = accepted.json()["job_id"]
    assert client.get(f"/status/{job_id}").status == 200  # reads need no token
    assert_json_error(client.delete(f"/job/{job_id}"), 401)
    assert_json_error(client.post("/experiment-configs/create", json={"file_name": "a.yaml", "config": {}}), 401)


def test_unexpected_exception_becomes_json_500_without_traceback(tmp_path):
    def install(app, ctx):
        @app.get("/boom")
        def boom():
            raise RuntimeError("secret internals")

    app = make_app(Context(make_settings(tmp_path)), [type("M", (), {"install": staticmethod(install)})])
    response = WsgiClient(app).get("/boom")
    assert response.status == 500
    body = json.loads(response.body)
    assert body["error"] == "internal_error" and "secret" not in response.text


def test_traversal_over_real_http_gets_json_4xx(http, outside):
    before = tree_snapshot(outside.parent)
    for path in ["/status/..%2F..%2Fetc%2Fpasswd", "/logs/%2e%2e", "/experiment-configs/..%2Foutside%2Fsecret.yaml",
                 "/job-info/a%00b", "/result/%2Fetc"]:
        response = http.get(path)
        assert_json_error(response, 400, 404)
        assert "secret: true" not in response.text  # the file's content never leaks
    assert tree_snapshot(outside.parent) == before
