"""The webhook on job end, against a real local HTTP receiver: retried with backoff, delivered, never in the way."""

import http.server
import json
import os
import threading
import time

import pytest

from opeva_spool.exceptions import SettingsError
from opeva_spool.server import Server
from opeva_spool.spool import Spool
from opeva_spool.webhook import WebhookSender

from .clients import free_port
from .conftest import PYTHON, make_settings, wait_for, wait_for_status


class Receiver:
    """An http.server in a thread that answers 500 to the first ``failures`` POSTs, then 204; keeps what arrived."""

    def __init__(self, failures=0):
        self.failures = failures
        self.tries = []  # (monotonic time, status answered)
        self.delivered = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = 500 if len(receiver.tries) < receiver.failures else 204
                receiver.tries.append((time.monotonic(), status))
                if status == 204:
                    receiver.delivered.append((self.headers["Content-Type"], json.loads(body)))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver():
    receivers = []

    def make(failures=0):
        receivers.append(Receiver(failures))
        return receivers[-1]

    yield make
    for one in receivers:
        one.close()


def test_webhook_is_retried_with_backoff_and_delivers_the_jobs_ending(serving, receiver):
    hook = receiver(failures=2)
    _, _, client = serving(webhook_url=hook.url)
    job_id = client.post("/run-simulation", json={"command": [PYTHON, "-c", "raise SystemExit(3)"]}).json()["job_id"]
    wait_for_status(client, job_id, "failed")
    wait_for(lambda: hook.delivered, timeout=15, message="the webhook to be delivered")
    content_type, payload = hook.delivered[0]
    assert content_type == "application/json"
    assert payload["job_id"] == job_id and payload["status"] == "failed"
    assert payload["exit_code"] == 3 and payload["reason"] == "exit_code"
    assert payload["host"] == "local" and payload["attempt"] == 1 and payload["ended_at"]
    assert [status for _, status in hook.tries] == [500, 500, 204]
    gaps = [later - earlier for (earlier, _), (later, _) in zip(hook.tries, hook.tries[1:], strict=False)]
    assert gaps[1] > gaps[0]  # backoff grows


def test_a_dead_webhook_url_leaves_the_server_unaffected(serving):
    server, _, client = serving(webhook_url=f"http://127.0.0.1:{free_port()}/nobody")
    job_ids = [client.post("/run-simulation", json={"command": "true"}).json()["job_id"] for _ in range(3)]
    for job_id in job_ids:
        wait_for_status(client, job_id, "finished")
    started = time.monotonic()
    assert client.get("/health", timeout=5).status == 200
    assert time.monotonic() - started < 1.0
    assert server.webhook.delivered == 0


def test_webhook_sender_gives_up_after_its_attempts(tmp_path):
    sender = WebhookSender(f"http://127.0.0.1:{free_port()}/", Spool(str(tmp_path)), attempts=2, first_backoff=0.05,
                           timeout=1)
    try:
        assert not sender._deliver(b"{}")
    finally:
        sender.close()


def test_a_webhook_url_that_is_no_http_url_stops_the_server_from_starting(tmp_path):
    with pytest.raises(SettingsError, match="webhook_url"):
        Server(make_settings(tmp_path, webhook_url="ftp://example.org/hook"))


def test_a_job_that_ended_while_the_server_was_down_is_notified_when_it_starts(serving, receiver):
    hook = receiver()
    server, _, client = serving(embedded_worker=False, webhook_url=hook.url)
    job_id = client.post("/run-simulation", json={"command": "true", "target_host": "gpu-a"}).json()["job_id"]
    server.shutdown()
    wait_for(lambda: server.stopping.is_set(), timeout=10, message="the server to stop")
    # gpu-a's agent claims and finishes the job while no server runs, through the spool protocol.
    spool = Spool(server.settings.shared_root)
    entry = next(entry for _, entry in spool.scan() if entry.job_id == job_id)
    os.makedirs(spool.running_dir("gpu-a"))  # as the agent makes it when it starts
    assert spool.claim(entry, "gpu-a", "gpu-a:agent")
    spool.write_attempt(entry, "gpu-a", "gpu-a:agent", "running", started_at="2026-12-07T12:00:00Z")
    assert spool.finish(entry, "gpu-a", "gpu-a:agent", "finished", exit_code=0)
    assert not hook.delivered
    serving(embedded_worker=False, webhook_url=hook.url)
    wait_for(lambda: hook.delivered, timeout=10, message="the webhook of the job that ended meanwhile")
    payload = hook.delivered[0][1]
    assert (payload["job_id"], payload["status"], payload["host"], payload["exit_code"]) == (
        job_id, "finished", "gpu-a", 0)
