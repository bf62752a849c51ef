"""GPU-aware placement: what an agent claims (queue.Dispatcher), why a queued job waits, GET /queue."""

import datetime as dt
import os
import sys
import time

import pytest

from opeva_spool import fsio
from opeva_spool.agent import Agent, GpuPool
from opeva_spool.jobs import build_spec
from opeva_spool.queue import MTIME_SETTLE_NS, Dispatcher, QueueListing, eligible_hosts, host_obstacle, waiting_reason
from opeva_spool.runtimes import make_runtime
from opeva_spool.spool import Entry, Spool

from .conftest import make_settings, wait_for, wait_for_status
from .processes import start_agent, start_server, stop


def view(host, state="online", gpus=0, free=None, capacity=4, running=0, draining=False):
    """A host as LivenessMonitor.describe reports it."""
    ids = [str(i) for i in range(gpus)]
    return {"host": host, "state": state, "seconds_since_seen": 0.4, "gpu_ids": ids,
            "free_gpus": ids if free is None else ids[:free], "capacity": capacity,
            "running": [f"job-{i}" for i in range(running)], "draining": draining}


def queued(target="any", attempt=1):
    return Entry(0, 1, target, attempt, "job-1")


# ----- waiting reasons (pure logic over host views) ---------------------------------------------

def test_waiting_reason_names_every_host_that_lacks_free_gpus():
    views = {"gpu-node-1": view("gpu-node-1", gpus=2, free=1), "gpu-node-2": view("gpu-node-2", gpus=2, draining=True)}
    reason = waiting_reason(queued(), 2, ["gpu-node-1", "gpu-node-2"], views, ahead=0)
    assert reason == "no host with 2 free GPUs: gpu-node-1 has 1 free, gpu-node-2 is draining"


def test_waiting_reason_of_a_job_for_one_host_is_that_hosts_obstacle():
    views = {"gpu-node-1": view("gpu-node-1", state="offline", gpus=2)}
    assert waiting_reason(queued("gpu-node-1"), 1, ["gpu-node-1"], views, ahead=4) == "gpu-node-1 is offline"
    # A host that never reported has no view: it is offline too.
    assert waiting_reason(queued("gpu-node-9"), 0, ["gpu-node-9"], {}, ahead=0) == "gpu-node-9 is offline"


def test_waiting_reason_counts_the_jobs_ahead_when_a_host_could_take_it():
    views = {"a": view("a", gpus=2), "b": view("b", state="offline")}
    assert waiting_reason(queued(), 1, ["a", "b"], views, ahead=3) == "3 jobs ahead"
    assert waiting_reason(queued(), 1, ["a", "b"], views, ahead=1) == "1 job ahead"
    assert waiting_reason(queued(), 1, ["a", "b"], views, ahead=0).startswith("next in line")


def test_waiting_reason_of_a_retry_in_backoff_says_when_it_may_run():
    now = dt.datetime(2026, 12, 7, 13, 0, tzinfo=dt.timezone.utc)
    views = {"a": view("a")}
    later = now + dt.timedelta(seconds=40)
    assert (waiting_reason(queued(attempt=3), 0, ["a"], views, 0, retry_at=later, now=now)
            == "retry 2 not before 2026-12-07T13:00:40Z")
    # Once the backoff is over, the usual reasons apply.
    assert waiting_reason(queued(attempt=3), 0, ["a"], views, 2, retry_at=now, now=now) == "2 jobs ahead"


def test_waiting_reason_without_gpus_names_full_and_suspect_hosts():
    views = {"a": view("a", capacity=2, running=2), "b": view("b", state="suspect")}
    assert waiting_reason(queued(), 0, ["a", "b"], views, 0) == "no host with room: a is full (2 of 2 jobs running), " \
                                                                "b is suspect"


def test_waiting_reason_for_all_gpus_and_for_hosts_with_too_few():
    views = {"a": view("a", gpus=4, free=3), "b": view("b")}
    assert waiting_reason(queued(), "all", ["a", "b"], views, 0) == "no host with all its GPUs free: a has 3 free, " \
                                                                    "b has no GPUs"
    assert host_obstacle(view("a", gpus=1), 2) == "a has 1 GPU"


def test_waiting_reason_names_at_most_five_hosts():
    hosts = [f"h{i}" for i in range(8)]
    views = {host: view(host, state="offline") for host in hosts}
    reason = waiting_reason(queued(), 0, hosts, views, 0)
    assert reason == "no host with room: h0 is offline, h1 is offline, h2 is offline, h3 is offline, h4 is offline, " \
                     "and 3 more"
    assert waiting_reason(queued(), 0, [], {}, 0) == "no worker host has reported yet"


def test_eligible_hosts_are_the_target_its_list_or_every_known_host():
    assert eligible_hosts("a", [], ["a", "b", "c"]) == ["a"]
    assert eligible_hosts("any", ["b", "c"], ["a", "b", "c"]) == ["b", "c"]
    assert eligible_hosts("any", [], ["a", "b", "c"]) == ["a", "b", "c"]


# ----- what an agent offers to claim (queue.Dispatcher over a real spool) ------------------------

HOSTS = ["local", "gpu-a", "gpu-b", "gpu-c"]


class Clock:
    """A hand-moved clock for the reservation rule's waiting time."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def publish(spool, job_id, target="any", gpus=0, rank=1, priority=0):
    spec = build_spec({"command": "true", "target_host": target, "gpus": gpus, "priority": priority}, HOSTS,
                      job_id=job_id)
    return spool.publish(spec, rank=rank)


def offered(dispatcher, free=0):
    return [entry.job_id for entry, _spec in dispatcher.candidates(lambda: free)]


@pytest.fixture
def spool(tmp_path):
    spool = Spool(str(tmp_path / "share"))
    spool.ensure_layout()
    return spool


def dispatcher_for(spool, host="gpu-a", gpus=2, clock=None):
    return Dispatcher(spool, host, [str(i) for i in range(gpus)], reserve_after=60.0, max_listing_age=5.0,
                      clock=clock or Clock())


def test_dispatcher_offers_its_own_and_any_jobs_in_dispatch_order(spool):
    publish(spool, "for-b", target="gpu-b", rank=1)
    publish(spool, "for-a", target="gpu-a", rank=2)
    publish(spool, "urgent", priority=5, rank=9)
    publish(spool, "listed-without-a", target=["gpu-b", "gpu-c"], rank=1)
    publish(spool, "listed-with-a", target=["gpu-c", "gpu-a"], rank=3)
    publish(spool, "anywhere", rank=4)
    dispatcher = dispatcher_for(spool)
    assert offered(dispatcher) == ["urgent", "for-a", "listed-with-a", "anywhere"]
    assert offered(dispatcher_for(spool, host="gpu-b")) == ["urgent", "for-b", "listed-without-a", "anywhere"]
    assert offered(dispatcher) == ["urgent", "for-a", "listed-with-a", "anywhere"]  # from what it learned


def test_dispatcher_fits_gpus_from_the_name_and_backfills_until_the_reservation_rule(spool):
    publish(spool, "wide", gpus=2, rank=1)
    publish(spool, "narrow", gpus=1, rank=2)
    publish(spool, "cpu", rank=3)
    clock = Clock()
    dispatcher = dispatcher_for(spool, clock=clock)
    assert offered(dispatcher, free=2) == ["wide", "narrow", "cpu"]  # the caller takes no GPUs here
    # One GPU free: the 2-GPU job is blocked, the 1-GPU job behind it may take the GPU (backfill).
    assert offered(dispatcher, free=1) == ["narrow", "cpu"]
    assert dispatcher.reserved_for is None
    clock.now += 59.0
    assert offered(dispatcher, free=1) == ["narrow", "cpu"]
    # Blocked for gpu_reserve_after: no GPU job behind it is claimed; jobs without GPUs still are.
    clock.now += 1.0
    assert offered(dispatcher, free=1) == ["cpu"]
    assert dispatcher.reserved_for == "wide"
    assert offered(dispatcher, free=2) == ["wide", "narrow", "cpu"]
    assert dispatcher.reserved_for is None


def test_dispatcher_counts_free_gpus_again_after_each_claim(spool):
    for n in range(3):
        publish(spool, f"one-{n}", gpus=1, rank=n + 1)
    pool = GpuPool(["0", "1"])
    claimed = []
    for entry, spec in dispatcher_for(spool).candidates(lambda: len(pool.free())):
        assert pool.take(spec.gpus) is not None
        claimed.append(entry.job_id)
    assert claimed == ["one-0", "one-1"]


def test_dispatcher_never_holds_gpus_for_a_job_this_host_cannot_run(spool):
    publish(spool, "too-wide", gpus=4, rank=1)
    publish(spool, "all-of-them", gpus="all", rank=2)
    publish(spool, "narrow", gpus=1, rank=3)
    clock = Clock()
    dispatcher = dispatcher_for(spool, clock=clock)
    assert offered(dispatcher, free=1) == ["narrow"]
    clock.now += 3600
    # "all" on a 2-GPU host needs both: it is the one waited for; 4 GPUs never fit here.
    assert offered(dispatcher, free=1) == []
    assert dispatcher.reserved_for == "all-of-them"
    assert offered(dispatcher_for(spool, gpus=0), free=0) == []  # a host without GPUs runs no GPU job


def test_dispatcher_reads_the_gpus_of_an_older_name_from_its_spec(spool):
    entry = publish(spool, "old-style", gpus=2, rank=1)
    legacy = entry._replace(rank=0, gpus=0, legacy=True)
    os.rename(os.path.join(spool.queued_dir, entry.name), os.path.join(spool.queued_dir, legacy.name))
    assert offered(dispatcher_for(spool), free=1) == []
    assert offered(dispatcher_for(spool), free=2) == ["old-style"]


def running_entry(spool, job_id, host="gpu-a"):
    return next(entry for entry in map(Entry.parse, os.listdir(spool.running_dir(host))) if entry.job_id == job_id)


def test_dispatcher_skips_a_retry_until_its_backoff_ends_and_says_when_it_is_due(spool):
    fsio.makedirs(spool.running_dir("gpu-a"))
    for job_id in ("flaky", "steady"):
        entry = publish(spool, job_id, rank=1)
        assert spool.claim(entry, "gpu-a", "gpu-a:test")
    # Both attempts failed asking for a retry (what a runner does with retry_on_failure): one in 30 s, one now.
    flaky = spool.retry(running_entry(spool, "flaky"), "gpu-a", "gpu-a:test", delay=30.0)
    steady = spool.retry(running_entry(spool, "steady"), "gpu-a", "gpu-a:test", delay=0.0)
    assert (flaky.attempt, steady.attempt) == (2, 2)
    clock = Clock()
    dispatcher = dispatcher_for(spool, clock=clock)
    assert offered(dispatcher) == ["steady"]
    assert 29.0 < dispatcher.retry_due - clock.now <= 30.0


def test_queue_listing_sees_an_entry_that_arrives_just_after_a_look(spool):
    listing = QueueListing(spool.queued_dir, max_age=60.0)
    publish(spool, "first", rank=1)
    assert len(listing.names()) == 1
    # In the same tick of the directory's mtime as the look above: the listing must not be reused.
    publish(spool, "second", rank=2)
    assert [Entry.parse(name).job_id for name in listing.names()] == ["first", "second"]
    version = listing.version
    time.sleep(MTIME_SETTLE_NS / 1e9 + 0.05)  # the next look lists once, then the stat suffices
    listing.names()
    assert listing.names() and listing.version == version + 1


# ----- GET /queue and /status of a queued job (in-process server) --------------------------------

def submit(client, **body):
    response = client.post("/run-simulation", json={"command": "true", **body})
    assert response.status == 200, response.text
    return response.json()["job_id"]


def test_queue_is_a_bare_array_in_dispatch_order_with_why_each_job_waits(client):
    alice = [submit(client, target_host="gpu-a", submitted_by="alice", job_name=f"a{n}") for n in range(3)]
    bob = submit(client, target_host="gpu-a", submitted_by="bob")
    urgent = submit(client, target_host=["gpu-a", "gpu-b"], submitted_by="alice", priority=10, gpus=1)
    response = client.get("/queue")
    assert response.status == 200 and response.headers["X-Total-Count"] == "5"
    rows = response.json()
    assert isinstance(rows, list)
    assert [row["job_id"] for row in rows] == [urgent, alice[0], bob, alice[1], alice[2]]
    assert [row["position"] for row in rows] == [1, 2, 3, 4, 5]
    first, second = rows[0], rows[1]
    assert first["target_host"] == "any" and first["target_hosts"] == ["gpu-a", "gpu-b"]
    assert (first["priority"], first["gpus"], first["submitted_by"], first["attempt"]) == (10, 1, "alice", 1)
    assert first["waiting_reason"] == "no host with 1 free GPU: gpu-a is offline, gpu-b is offline"
    assert second["target_hosts"] == [] and second["submitted_at"]
    assert second["waiting_reason"] == "gpu-a is offline"
    assert [row["job_id"] for row in client.get("/queue?limit=2").json()] == [urgent, alice[0]]
    bad = client.get("/queue?limit=0")
    assert bad.status == 400 and bad.json()["error"] == "bad_request"


def test_status_of_a_queued_job_tells_its_place_and_why_it_waits(client):
    ahead = submit(client, target_host="gpu-b")
    job_id = submit(client, target_host="gpu-b")
    status = client.get(f"/status/{job_id}").json()
    assert status["status"] == "queued" and status["queue_position"] == 2
    assert status["waiting_reason"] == "gpu-b is offline"
    assert client.get(f"/status/{ahead}").json()["queue_position"] == 1
    done = submit(client, target_host="local")
    wait_for_status(client, done, "finished")
    assert "queue_position" not in client.get(f"/status/{done}").json()


@pytest.mark.parametrize("settings", [{"retry_backoff": 30.0}], indirect=True)
def test_a_retry_in_its_backoff_stays_queued_and_says_until_when(server, client):
    job_id = submit(client, command=["sh", "-c", "exit 3"], target_host="local", retry_on_failure=True, max_retries=1)

    def retried():
        status = client.get(f"/status/{job_id}").json()
        return status if status["status"] == "queued" and status["attempt"] == 2 else None
    status = wait_for(retried, message="the failed attempt to be queued for a retry")
    assert status["queue_position"] == 1
    assert status["waiting_reason"].startswith("retry 1 not before 20")  # an ISO time about 30 s from now
    # The embedded worker looked at it, left it queued, and will look again when it is due.
    due = wait_for(lambda: server.agent.dispatcher.retry_due, message="the worker to skip the retry")
    assert 25 < due - time.monotonic() <= 30
    assert client.get(f"/status/{job_id}").json()["status"] == "queued"
    assert client.get("/queue").json()[0]["waiting_reason"] == status["waiting_reason"]


def test_waiting_reason_follows_the_gpus_a_real_agent_reports(server, client, tmp_path):
    settings = make_settings(tmp_path, host="gpu-a", gpu_ids=("0", "1"), capacity=4)
    agent = Agent(settings, server.spool, make_runtime(settings), host="gpu-a").start()
    try:
        wait_for(lambda: server.jobs.host_gpu_counts().get("gpu-a") == 2, message="gpu-a's heartbeat")
        sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
        holder = submit(client, command=sleeper, target_host="gpu-a", gpus=1)
        wait_for_status(client, holder, "running")
        wide = submit(client, command=sleeper, target_host=["gpu-a", "gpu-b"], gpus=2)

        def reason():
            said = client.get(f"/status/{wide}").json()["waiting_reason"]
            return said if "has 1 free" in said else None
        assert wait_for(reason, message="the reason to see gpu-a's free GPU") == (
            "no host with 2 free GPUs: gpu-a has 1 free, gpu-b is offline")
        refused = client.post("/run-simulation", json={"command": "true", "target_host": "gpu-a", "gpus": 3})
        assert refused.status == 400
        assert refused.json()["detail"] == "no host this job may run on has 3 GPUs: gpu-a has 2"
    finally:
        agent.shutdown(timeout=10)


# ----- two real agent processes with 2 GPUs each ------------------------------------------------

# Each job sleeps RUN_SECONDS and then writes when it started and ended (one writer per file).
SPAN_JOB = r"""
import os, time
start = time.time()
time.sleep(float(os.environ["RUN_SECONDS"]))
folder = os.path.join(os.environ["OPEVA_BASE_DIR"], "jobs", os.environ["OPEVA_JOB_ID"])
with open(os.path.join(folder, "span"), "w") as out:
    out.write("%f %f" % (start, time.time()))
"""
GPU_AGENT = dict(observer="polling", scan_interval=0.2, heartbeat_interval=0.3, offline_after=3.0, stop_grace=1.0)
RESERVE_AFTER = 1.0


@pytest.mark.slow
def test_two_gpu_agents_never_double_book_and_the_two_gpu_job_is_not_starved(tmp_path):
    """A 2-GPU job queued among 1-GPU jobs on two 2-GPU hosts: without a rule, the 1-GPU jobs behind it
    would take every GPU that frees (one at a time, never both of a host at once) until the queue ran
    dry. With gpu_reserve_after, the agents stop claiming GPU jobs behind it once it waited that long."""
    root = tmp_path / "share"
    server, http = start_server(root, tmp_path, hosts="gpu-a,gpu-b", embedded_worker="false", **GPU_AGENT)
    agents = [start_agent(root, tmp_path, host, gpu_ids="0,1", capacity=4, gpu_reserve_after=RESERVE_AFTER,
                          **GPU_AGENT) for host in ("gpu-a", "gpu-b")]
    spool = Spool(str(root))
    try:
        def reported():
            hosts = {view["host"]: view for view in http.get("/hosts").json()["hosts"]}
            return all(hosts.get(host, {}).get("gpu_ids") == ["0", "1"] and hosts[host]["state"] == "online"
                       for host in ("gpu-a", "gpu-b"))
        wait_for(reported, timeout=15, message="both agents to report 2 GPUs")

        def submit(gpus, seconds, name):
            response = http.post("/run-simulation", json={
                "command": [sys.executable, "-c", SPAN_JOB], "target_host": "any", "gpus": gpus,
                "env": {"RUN_SECONDS": str(seconds)}, "job_name": name, "submitted_by": "lab"})
            assert response.status == 200, response.text
            return response.json()["job_id"]

        # Staggered lengths: GPUs free one at a time, never both of a host in the same moment.
        before = [submit(1, seconds, f"before-{i}") for i, seconds in enumerate((1.0, 1.6, 1.3, 1.9))]
        wide = submit(2, 1.0, "wide")
        behind = [submit(1, 1.0 + 0.15 * (i % 4), f"behind-{i}") for i in range(12)]
        too_wide = http.post("/run-simulation", json={"command": ["true"], "target_host": "any", "gpus": 3})
        assert too_wide.status == 400 and "3 GPUs" in too_wide.json()["detail"], too_wide.text

        every = [*before, wide, *behind]
        wait_for(lambda: all(os.path.exists(os.path.join(spool.jobs_dir, job_id, "span")) for job_id in every)
                 and all(http.get(f"/status/{job_id}").json()["status"] == "finished" for job_id in every),
                 timeout=90, message="every job to finish")
    finally:
        for proc in agents:
            stop(proc)
        stop(server)

    runs = {}
    for job_id in every:
        with open(os.path.join(spool.jobs_dir, job_id, "span")) as handle:
            start, end = map(float, handle.read().split())
        record = fsio.read_json_object(spool.folder(job_id).attempt_record(1))
        runs[job_id] = (record["host"], set(record["gpus"]), start, end)
    assert len(runs[wide][1]) == 2 and all(len(runs[job_id][1]) == 1 for job_id in every if job_id != wide)
    # No double booking: on each host, attempts that overlapped in time held disjoint GPU ids.
    for first in every:
        for second in every:
            host_1, gpus_1, start_1, end_1 = runs[first]
            host_2, gpus_2, start_2, end_2 = runs[second]
            if first < second and host_1 == host_2 and start_1 < end_2 and start_2 < end_1:
                assert not gpus_1 & gpus_2, f"{first} and {second} shared GPUs {gpus_1 & gpus_2} on {host_1}"
    # Not starved: most jobs queued behind the 2-GPU job started after it, and an agent said why.
    started_later = [job_id for job_id in behind if runs[job_id][2] > runs[wide][2]]
    assert len(started_later) >= 6, (runs[wide], [runs[job_id] for job_id in behind])
    logs = "".join(path.read_text() for path in tmp_path.glob("agent-*.log"))
    assert f"keeps its GPUs free for job {wide}" in logs
