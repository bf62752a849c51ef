"""GET /events on a real server: job transitions and host changes as Server-Sent Events, resumed with
Last-Event-ID after a reconnect and after a server restart, and never holding the request threads."""

import http.client
import itertools
import json
import os
import socket
import time

import pytest

from opeva_spool import events as events_module
from opeva_spool import fsio
from opeva_spool.events import EventBus, EventJournal
from opeva_spool.server import WAITRESS_THREADS
from opeva_spool.spool import QUEUED, Entry, Location, Spool

from .conftest import demo_config, wait_for

TERMINAL = ("finished", "failed", "stopped", "canceled")


class SseClient:
    """Reads one /events stream line by line; every read is bounded by the socket's timeout."""

    def __init__(self, port, last_event_id=None, query="", accept=True, timeout=10):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        headers = {"Accept": "text/event-stream"} if accept else {}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        self.connection.request("GET", "/events" + query, headers=headers)
        self.response = self.connection.getresponse()
        self.comments = []

    def next_event(self):
        """The next event as (event type, id or None, data dict)."""
        fields = {}
        while True:
            line = self.response.readline()
            if not line:
                raise EOFError("the stream ended")
            line = line.decode().rstrip("\n")
            if not line:
                if "data" in fields:
                    return fields.get("event"), fields.get("id"), json.loads(fields["data"])
                continue
            if line.startswith(":"):
                self.comments.append(line)
                continue
            name, _, value = line.partition(": ")
            fields[name] = int(value) if name == "id" else value

    def events_until(self, predicate, timeout=20.0):
        """Every event's data (job and host) until one satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            kind, event_id, data = self.next_event()
            assert event_id == data["id"] and kind == data["type"]
            seen.append(data)
            if predicate(data, seen):
                return seen
        pytest.fail(f"no matching event within {timeout}s; saw {seen}")

    def job_events_until(self, job_id, predicate, timeout=20.0):
        """This job's events until one satisfies ``predicate``."""
        seen = self.events_until(lambda data, _: data.get("job_id") == job_id and predicate(data), timeout)
        return [data for data in seen if data.get("job_id") == job_id]

    def close(self):
        self.connection.close()


def submit_demo(client, seconds=2.0, **body):
    steps = 10
    config = demo_config(episodes=1, steps=steps, step_seconds=seconds / steps)
    return client.post("/run-simulation", json={"config": config, **body}).json()["job_id"]


def test_sse_client_sees_a_demo_job_go_queued_running_finished_with_increasing_ids(serving):
    _, port, client = serving()
    stream = SseClient(port)
    try:
        job_id = submit_demo(client)
        events = stream.job_events_until(job_id, lambda event: event["to"] in TERMINAL)
    finally:
        stream.close()
    path = [event["to"] for event in events]
    assert path[0] == "queued" and events[0]["from"] is None
    assert "running" in path and path[-1] == "finished", path
    assert [event["from"] for event in events[1:]] == path[:-1]  # each event starts where the last ended
    ids = [event["id"] for event in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(event["host"] == "local" and event["attempt"] == 1 and event["at"].endswith("Z") for event in events)


def test_sse_resume_with_last_event_id_after_a_reconnect_gets_exactly_the_missed_events(serving):
    _, port, client = serving()
    watcher = SseClient(port)  # connected throughout: what a client that never left saw
    first = SseClient(port)
    try:
        job_a = submit_demo(client, seconds=0.2)
        last_seen = first.job_events_until(job_a, lambda event: event["to"] == "queued")[-1]["id"]
        first.close()  # gone while job A runs and job B is submitted and ends
        job_b = submit_demo(client, seconds=0.2)

        def both_finished(_, seen):
            return {(data.get("job_id"), data["to"]) for data in seen} >= {(job_a, "finished"), (job_b, "finished")}

        missed = [data for data in watcher.events_until(both_finished) if data["id"] > last_seen]
        resumed = SseClient(port, last_event_id=last_seen)
        got = [resumed.next_event()[2] for _ in missed]
        resumed.close()
    finally:
        watcher.close()
    assert got == missed
    assert [data["id"] for data in got] == list(range(last_seen + 1, last_seen + 1 + len(got)))


def test_sse_client_resumes_after_server_restart_without_gaps(serving, tmp_path):
    server, port, client = serving(embedded_worker=False)
    stream = SseClient(port)
    job_id = client.post("/run-simulation", json={"command": "true", "target_host": "gpu-a"}).json()["job_id"]
    gone_id = client.post("/run-simulation", json={"command": "true", "target_host": "gpu-a"}).json()["job_id"]
    seen = stream.job_events_until(gone_id, lambda event: event["to"] == "queued")
    last_id = seen[-1]["id"]
    stream.close()
    server.shutdown()
    wait_for(lambda: server.stopping.is_set(), timeout=10, message="the server to stop")

    # While no server runs: one job is canceled and another removed, straight on the share.
    spool = Spool(server.settings.shared_root)
    entries = {entry.job_id: entry for location, entry in spool.scan() if location == Location(QUEUED)}
    assert spool.cancel_queued(entries[job_id])
    os.unlink(spool.entry_path(Location(QUEUED), entries[gone_id]))

    _, port2, client2 = serving(embedded_worker=False)
    resumed = SseClient(port2, last_event_id=last_id)
    try:
        first = resumed.next_event()
        second = resumed.next_event()
        new_job = client2.post("/run-simulation", json={"command": "true", "target_host": "gpu-b"}).json()["job_id"]
        third = resumed.job_events_until(new_job, lambda event: event["to"] == "queued")[-1]
    finally:
        resumed.close()
    by_job = {first[2]["job_id"]: first[2], second[2]["job_id"]: second[2]}
    assert by_job[job_id]["from"] == "queued" and by_job[job_id]["to"] == "canceled"
    assert by_job[gone_id]["from"] == "queued" and by_job[gone_id]["to"] == "deleted"
    assert sorted([first[1], second[1]]) == [last_id + 1, last_id + 2]  # ids go on from the journal
    assert third["id"] == last_id + 3


def test_a_host_whose_heartbeat_stops_produces_online_then_offline_events(serving):
    server, port, _ = serving(offline_after=1.5)
    stream = SseClient(port)
    spool = server.spool
    fsio.makedirs(spool.running_dir("gpu-a"))
    try:
        for counter in range(3):  # a few beats: the server sees the heartbeat change
            fsio.atomic_write_json(spool.heartbeat_path("gpu-a"),
                                   {"host": "gpu-a", "boot_id": "b", "counter": counter, "interval": 0.2})
            time.sleep(0.25)
        changes = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (not changes or changes[-1]["to"] != "offline"):
            kind, _, data = stream.next_event()
            if kind == "host" and data["host"] == "gpu-a":
                changes.append(data)
    finally:
        stream.close()
    assert changes[0]["to"] == "online" and changes[-1]["to"] == "offline", changes
    assert all(later["from"] == earlier["to"] for earlier, later in itertools.pairwise(changes))


def test_three_hundred_open_event_streams_leave_health_answering_on_the_request_threads(serving):
    server, port, client = serving(max_streams=400, max_streams_per_client=400)
    sockets = []
    try:
        for number in range(300):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            # Half as a browser asks, half as a plain curl does (no Accept): both are streams.
            accept = "Accept: text/event-stream\r\n" if number % 2 else ""
            sock.sendall(f"GET /events HTTP/1.1\r\nHost: test\r\n{accept}\r\n".encode())
            sockets.append(sock)
        wait_for(lambda: server.streams.open_streams() == 300, timeout=30, message="300 open event streams")
        assert len(sockets) > WAITRESS_THREADS
        started = time.monotonic()
        assert client.get("/health", timeout=5).status == 200
        assert time.monotonic() - started < 1.0
        job_id = client.post("/run-simulation", json={"command": "true"}).json()["job_id"]
        # Every stream gets the job's first event.
        for sock in sockets[:20]:
            data = b""
            while job_id.encode() not in data:
                chunk = sock.recv(65536)
                assert chunk, "stream closed"
                data += chunk
    finally:
        for sock in sockets:
            sock.close()
    wait_for(lambda: server.streams.open_streams() == 0, timeout=5, message="the streams of gone clients to end")


def test_events_narrowed_to_one_job_and_bad_resume_ids_refused(serving):
    _, port, client = serving(embedded_worker=False)
    submitted = [client.post("/run-simulation", json={"command": "true", "target_host": "gpu-a"}).json()["job_id"]
                 for _ in range(3)]
    stream = SseClient(port, query=f"?job={submitted[1]}&last_event_id=0")
    try:
        client.post(f"/stop/{submitted[1]}")
        first, second = stream.next_event(), stream.next_event()
    finally:
        stream.close()
    assert [(kind, data["job_id"], data["to"]) for kind, _, data in (first, second)] == [
        ("job", submitted[1], "queued"), ("job", submitted[1], "canceled")]
    refused = client.get("/events?last_event_id=abc")
    assert refused.status == 400 and refused.json()["error"] == "bad_request"
    assert client.get("/events", headers={"Last-Event-ID": "-3"}).status == 400
    assert client.get("/events?job=../etc").status == 400


def test_resume_from_before_the_kept_journal_gets_a_reset_then_what_is_kept(tmp_path):
    bus = EventBus(EventJournal(str(tmp_path / "events"), segment_bytes=400, keep_segments=2))
    for number in range(40):
        bus.publish("job", job_id=f"job-{number}", **{"from": None, "to": "queued"}, host="h", attempt=1)
    bus.close()
    reopened = EventBus(EventJournal(str(tmp_path / "events"), segment_bytes=400, keep_segments=2))
    assert len(reopened.journal.segments()) <= 3  # old segments pruned (2 kept, plus the one being written)
    events, lost = reopened.since(0)
    assert lost and events[0]["id"] > 1 and events[-1]["id"] == 40
    assert [event["id"] for event in events] == list(range(events[0]["id"], 41))
    chunks = list(reopened.stream(0, gone=lambda: True))
    assert chunks[1].startswith(b"event: reset\n")
    assert chunks[2].startswith(f"id: {events[0]['id']}\n".encode())
    assert reopened.since(40) == ([], False)
    assert reopened.since(99) == ([], True)  # a client ahead of the journal (events an OS crash lost)


def test_journal_cuts_a_torn_last_line_and_continues_the_ids(tmp_path):
    directory = str(tmp_path / "events")
    bus = EventBus(EventJournal(directory))
    for number in range(3):
        bus.publish("host", host=f"h{number}", **{"from": None, "to": "online"})
    bus.close()
    segment = EventJournal(directory).segments()[-1][1]
    with open(segment, "ab") as handle:
        handle.write(b'{"id":4,"type":"ho')  # a crash mid-append
    again = EventBus(EventJournal(directory))
    assert again.last_id == 3
    event = again.publish("host", host="h9", **{"from": "online", "to": "offline"})
    again.close()
    assert event["id"] == 4
    with open(segment, "rb") as handle:
        lines = handle.read().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [1, 2, 3, 4]


def test_a_job_submitted_while_the_server_was_down_appears_from_null_at_start(serving):
    server, _, client = serving(embedded_worker=False)
    first = client.post("/run-simulation", json={"command": "true", "target_host": "gpu-a"}).json()["job_id"]
    server.shutdown()
    wait_for(lambda: server.stopping.is_set(), timeout=10, message="the server to stop")
    last_id = EventJournal(os.path.join(server.spool.spool_dir, "events")).last_id
    # As another publisher would: a job's entry appears in queued/ while no server runs.
    entry = Entry(0, time.time_ns(), "gpu-a", 1, "dropped-job")
    spool = Spool(server.settings.shared_root)
    fsio.makedirs(spool.folder(entry.job_id).path)
    with open(spool.entry_path(Location(QUEUED), entry), "w") as handle:
        json.dump({"job_id": entry.job_id, "job_name": "x", "target_host": "gpu-a"}, handle)
    _, port2, client2 = serving(embedded_worker=False)
    stream = SseClient(port2, last_event_id=last_id)
    try:
        _, event_id, data = stream.next_event()
    finally:
        stream.close()
    assert (data["job_id"], data["from"], data["to"], event_id) == ("dropped-job", None, "queued", last_id + 1)
    assert client2.get(f"/status/{first}").json()["status"] == "queued"


def test_an_idle_stream_sends_keepalive_comments_and_ends_when_its_client_is_gone(tmp_path, monkeypatch):
    monkeypatch.setattr(events_module, "KEEPALIVE_SECONDS", 0.1)
    monkeypatch.setattr(events_module, "GONE_CHECK_SECONDS", 0.05)
    bus = EventBus(EventJournal(str(tmp_path / "events")))
    leaves_at = time.monotonic() + 0.5
    chunks = list(bus.stream(None, gone=lambda: time.monotonic() > leaves_at))
    bus.close()
    assert chunks[0] == b"retry: 2000\n\n"
    assert 2 <= chunks.count(b": keepalive\n\n") <= 6
    assert bus.streams == 0
