"""Entry names carry what dispatch needs (priority, fair rank, submit time, target, GPUs, attempt); the names
of the older format still parse, render back unchanged, and are upgraded in place by the server."""

import json
import os
import time

import pytest

from opeva_spool.fairshare import FairShare
from opeva_spool.jobs import JobSpec
from opeva_spool.server import Server
from opeva_spool.spool import GPUS_ALL, QUEUED, Entry

from .clients import WsgiClient
from .conftest import make_settings, wait_for_status


@pytest.mark.parametrize("entry", [
    Entry(5, 123, "any", 1, "a_b-c", rank=7, gpus=2),
    Entry(-100, 2**62, "node-1.lab", 999, "x" * 128, rank=10**12 - 1, gpus=GPUS_ALL),
    Entry(0, 1, "gpu-a", 2, "old_job.v1", legacy=True),
])
def test_entry_name_round_trips_and_target_is_read_without_parsing(entry):
    assert Entry.parse(entry.name) == entry
    assert Entry.target_of(entry.name) == entry.target
    assert len(entry.name) <= 255


def test_sorted_names_are_priority_then_rank_then_submit_time():
    entries = [Entry(0, 10, "any", 1, "late-rank", rank=3), Entry(0, 30, "any", 1, "tie-later", rank=2),
               Entry(0, 20, "any", 1, "tie-earlier", rank=2), Entry(1, 99, "any", 1, "higher-priority", rank=50)]
    order = [Entry.parse(name).job_id for name in sorted(entry.name for entry in entries)]
    assert order == ["higher-priority", "tie-earlier", "tie-later", "late-rank"]


@pytest.mark.parametrize("name", ["100_000000000001_0000000000000000001_any_2_001_x.json",
                                  "100_000000000001_1_any_1_001_x.json",
                                  "100_000000000001_0000000000000000001_any_02_001_.json",
                                  "100_000000000001_0000000000000000001_bad_host_02_001_x.json"])
def test_names_that_are_no_entry_do_not_parse(name):
    assert Entry.parse(name) is None


def test_a_burst_of_one_submitter_does_not_hold_another_submitters_job_behind_it():
    fair = FairShare()
    burst = fair.ranks(0, "alice", 1000)
    assert burst == list(range(1, 1001))
    [bob] = fair.ranks(0, "bob")
    assert bob == 1  # beside alice's first: equal ranks go by submit time, so it runs second
    fair.observe("a1", Entry(0, 1, "any", 1, "a1", rank=1), "running")  # alice's first job was claimed
    [carol] = fair.ranks(0, "carol")
    assert carol == 2
    assert fair.ranks(0, "alice") == [1001]  # alice's next job goes behind her own burst
    assert fair.ranks(5, "alice") == [1]  # each priority has its own line


def test_the_virtual_clock_survives_a_restart(tmp_path):
    fair = FairShare()
    queued = [Entry(0, i, "any", 1, f"q{i}", rank=10 + i) for i in range(3)]
    fair.restore([(Entry(0, 1, "any", 1, "ran", rank=9), "done"), *((entry, QUEUED) for entry in queued)],
                 lambda entry, kind: "alice")
    assert fair.ranks(0, "bob") == [10]
    assert fair.ranks(0, "alice") == [13]


def test_entries_of_the_older_format_are_upgraded_and_still_run(tmp_path):
    settings = make_settings(tmp_path)
    root = settings.shared_root
    os.makedirs(os.path.join(root, "spool", "queued"))
    os.makedirs(os.path.join(root, "jobs", "old-job"))
    spec = JobSpec(job_id="old-job", job_name="old", target_host="local", command="true",
                   submitted_at="2026-01-01T00:00:00Z")
    legacy = Entry(0, time.time_ns(), "local", 1, "old-job", legacy=True)
    with open(os.path.join(root, "jobs", "old-job", "job_info.json"), "w") as handle:
        json.dump(spec.job_info(), handle)
    with open(os.path.join(root, "spool", "queued", legacy.name), "w") as handle:
        json.dump(spec.to_dict(), handle)
    server = Server(settings).start()
    try:
        client = WsgiClient(server.app)
        wait_for_status(client, "old-job", "finished")
        [name] = os.listdir(server.spool.done_path("finished"))
        assert not Entry.parse(name).legacy and Entry.parse(name).submit_ns == legacy.submit_ns
    finally:
        server.close()
