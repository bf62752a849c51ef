"""GPU-aware placement: what an agent claims (queue.Dispatcher), why a queued job waits, GET /queue."""

import datetime as dt
import os
import sys

import pytest

from opeva_spool import fsio
from opeva_spool.queue import eligible_hosts, host_obstacle, waiting_reason
from opeva_spool.spool import Entry, Spool

from .conftest import wait_for
from .processes import start_agent, start_server, stop


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
