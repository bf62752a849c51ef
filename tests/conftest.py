"""Shared fixtures: a shared root in a temp dir, a started Server, in-process and real HTTP clients."""

import os
import signal
import sys
import threading
import time

import pytest

from opeva_spool import fsio
from opeva_spool.server import Server
from opeva_spool.settings import Settings

from .clients import HttpClient, ThreadedServer, WsgiClient

# A suite started in the background by a shell without job control (`cmd &`) ignores SIGINT, and every
# process it starts inherits that: the CLI under test would never see the Ctrl-C its tests send. Tests
# run as from a terminal; a handler set here is reset to the default in each child at exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

pytest_plugins = ["tests.mongo_support", "tests.docker_support", "tests.browser_support", "tests.slurm_support"]

ENVIRONMENT_MARKS = ("docker", "mongo", "sshfs", "citylearn", "slow", "browser", "slurm")
# A test that uses one of these fixtures needs that part, whether or not its module says so.
MARK_OF_FIXTURE = {"docker_engine": "docker", "busybox_image": "docker", "mongo_uri": "mongo",
                   "mongo_client": "mongo", "lab_site": "mongo", "browser": "browser",
                   "slurm_cluster": "slurm"}


def pytest_collection_modifyitems(items):
    """Mark tests by the parts they need, and as ``core`` those that need none (``pytest -m core``)."""
    for item in items:
        for fixture in getattr(item, "fixturenames", ()):
            if fixture in MARK_OF_FIXTURE:
                item.add_marker(MARK_OF_FIXTURE[fixture])
        if not any(item.get_closest_marker(mark) for mark in ENVIRONMENT_MARKS):
            item.add_marker(pytest.mark.core)


PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_settings(tmp_path, **overrides):
    values = dict(
        shared_root=str(tmp_path / "share"),
        scan_interval=0.5,
        stop_grace=2.0,
        lock_dir=str(tmp_path / "locks"),
        heartbeat_interval=0.5,
        hosts=("local", "gpu-a", "gpu-b"),
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(tmp_path, request):
    """Test settings; a test may change some with ``@pytest.mark.parametrize("settings", [{...}], indirect=True)``."""
    return make_settings(tmp_path, **getattr(request, "param", {}))


@pytest.fixture
def server(settings):
    srv = Server(settings).start()
    yield srv
    srv.close()


@pytest.fixture
def serving(tmp_path):
    """serve(**settings) -> (server, port, HttpClient): a Server with its real HTTP stack
    (``Server.listen``/``serve_forever``) on 127.0.0.1; each one shut down at the end of the test."""
    servers = []

    def serve(**overrides):
        server = Server(make_settings(tmp_path, bind="127.0.0.1", **overrides)).start()
        port = server.listen(port=0)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread))
        return server, port, HttpClient(f"http://127.0.0.1:{port}")

    yield serve
    for server, thread in servers:
        server.shutdown()
        thread.join(30)


@pytest.fixture
def client(server):
    return WsgiClient(server.app)


@pytest.fixture
def http(server):
    with ThreadedServer(server.app) as http_client:
        yield http_client


def wait_for(predicate, timeout=15.0, interval=0.05, message="condition"):
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def wait_for_status(client, job_id, wanted, timeout=15.0):
    wanted = {wanted} if isinstance(wanted, str) else set(wanted)

    def check():
        status = client.get(f"/status/{job_id}").json()["status"]
        return status if status in wanted else None

    return wait_for(check, timeout, message=f"job {job_id} to reach {sorted(wanted)}")


def rejected(server):
    """The reason.json of everything set aside into spool/rejected/, each beside what was moved there."""
    reasons = []
    for name in fsio.listdir(server.spool.rejected_dir):
        reason = fsio.read_json_object(os.path.join(server.spool.rejected_dir, name, "reason.json"))
        if reason is not None:  # else still being set aside
            assert os.path.lexists(os.path.join(server.spool.rejected_dir, name, reason["name"]))
            reasons.append(reason)
    return reasons


def assert_one_line_error(result, exit_code=None):
    """A command that failed (with ``exit_code``, if given) saying so in one line and no traceback; the line."""
    assert result.returncode != 0 if exit_code is None else result.returncode == exit_code, (
        result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("opeva-spool: "), result.stderr
    return lines[0]


def demo_config(episodes=2, steps=5, step_seconds=0.01, **extra):
    config = {"experiment": {"name": "exp", "run_name": "r1"},
              "demo": {"episodes": episodes, "steps": steps, "step_seconds": step_seconds, **extra}}
    return config


PYTHON = sys.executable
