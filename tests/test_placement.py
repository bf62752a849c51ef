"""GPU-aware placement: what an agent claims (queue.Dispatcher), why a queued job waits, GET /queue."""

import datetime as dt

from opeva_spool.queue import eligible_hosts, host_obstacle, waiting_reason
from opeva_spool.spool import Entry


def view(host, state="online", gpus=0, free=None, capacity=4, running=0, draining=False):
    """A host as LivenessMonitor.describe reports it."""
    ids = [str(i) for i in range(gpus)]
    return {"host": host, "state": state, "gpu_ids": ids, "free_gpus": ids if free is None else ids[:free],
            "capacity": capacity, "running": [f"job-{i}" for i in range(running)], "draining": draining}


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
