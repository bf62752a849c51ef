"""Fair sharing: within a priority, the queue's order alternates between submitters (fairshare.py)."""

import sys

from opeva_spool.agent import Agent
from opeva_spool.fairshare import FairShare
from opeva_spool.runtimes import make_runtime
from opeva_spool.server import Server
from opeva_spool.spool import Entry

from .clients import WsgiClient
from .conftest import make_settings, wait_for

# Each run appends its job id to one file: the order jobs started in (one agent, one job at a time).
NOTE_START = "import os; open(os.environ['ORDER_FILE'], 'a').write(os.environ['OPEVA_JOB_ID'] + '\\n')"


def submit(client, submitter, **body):
    response = client.post("/run-simulation", json={"command": "true", "target_host": "gpu-a",
                                                    "submitted_by": submitter, **body})
    assert response.status == 200, response.text
    return response.json()["job_id"]


def queue_order(client):
    return [row["job_id"] for row in client.get("/queue").json()]


def test_a_burst_of_one_submitter_does_not_hold_another_submitters_job_behind_it(tmp_path):
    settings = make_settings(tmp_path, embedded_worker=False)
    server = Server(settings).start()
    order_file = tmp_path / "order"
    body = {"command": [sys.executable, "-c", NOTE_START], "env": {"ORDER_FILE": str(order_file)},
            "target_host": "local"}
    agent = None
    try:
        client = WsgiClient(server.app)
        alice = [submit(client, "alice", **body) for _ in range(20)]
        bob = submit(client, "bob", **body)
        agent_settings = make_settings(tmp_path, capacity=1)
        agent = Agent(agent_settings, server.spool, make_runtime(agent_settings), host="local").start()
        ran = wait_for(lambda: order_file.exists() and len(order_file.read_text().split()) >= 3 and
                       order_file.read_text().split(), timeout=20, message="three jobs to start")
    finally:
        if agent is not None:
            agent.shutdown(timeout=10)
        server.close()
    assert ran[0] == alice[0]
    assert bob in ran[1:3], f"bob's job ran after {ran.index(bob) if bob in ran else 'more than 2'} of alice's"


def test_two_bursts_alternate_and_priorities_still_come_first(server, client):
    alice = [submit(client, "alice") for _ in range(3)]
    bob = [submit(client, "bob") for _ in range(3)]
    urgent = submit(client, "bob", priority=1)
    anonymous = submit(client, "")  # no name counts as one submitter too
    assert queue_order(client) == [urgent, alice[0], bob[0], anonymous, alice[1], bob[1], alice[2], bob[2]]


def test_a_newcomer_queues_at_the_current_round_not_ahead_of_it(server, client):
    alice = [submit(client, "alice") for _ in range(4)]
    for job_id in alice[:2]:  # leaving the queue (here canceled) moves the virtual clock to their ranks
        assert client.post(f"/stop/{job_id}").json()["status"] == "canceled"
    bob = submit(client, "bob")
    assert queue_order(client) == [alice[2], bob, alice[3]]


def test_fair_ranks_are_rebuilt_when_the_server_restarts(tmp_path):
    settings = make_settings(tmp_path, embedded_worker=False)
    server = Server(settings).start()
    try:
        alice = [submit(WsgiClient(server.app), "alice") for _ in range(3)]
    finally:
        server.close()
    server = Server(settings).start()
    try:
        client = WsgiClient(server.app)
        later = submit(client, "alice")  # behind her own queued jobs, not at rank 1 again
        bob = submit(client, "bob")
        assert queue_order(client) == [alice[0], bob, alice[1], alice[2], later]
        ranks = {entry.job_id: entry.rank for entry in map(Entry.parse, server.jobs.queue.listing.names(fresh=True))}
        assert [ranks[job_id] for job_id in [*alice, later, bob]] == [1, 2, 3, 4, 1]
    finally:
        server.close()


def test_fair_share_ranks_follow_the_virtual_clock():
    fair = FairShare()
    assert fair.ranks(0, "alice", 3) == [1, 2, 3]
    assert fair.ranks(0, "bob") == [1]
    assert fair.ranks(5, "alice") == [1]  # each priority has its own clock and its own last ranks
    first = Entry(0, 1, "any", 1, "job-1", rank=1)
    fair.observe("job-1", first, "queued")
    fair.observe("job-1", first, "running")  # claimed: the clock of priority 0 moves to its rank
    assert fair.clock(0) == 1 and fair.clock(5) == 0
    assert fair.ranks(0, "carol") == [2]
    assert fair.ranks(0, "alice") == [4]
