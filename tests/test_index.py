"""The job index over a real spool directory: paging, filters, and staying true without events."""

import os

import pytest

from opeva_spool import fsio
from opeva_spool.index import JobIndex
from opeva_spool.jobs import build_spec
from opeva_spool.spool import DONE, QUEUED, RUNNING, Entry, Location, Spool
from opeva_spool.states import JobState


@pytest.fixture
def spool(tmp_path):
    spool = Spool(str(tmp_path / "share"))
    spool.ensure_layout()
    return spool


def publish(spool, count, target="gpu-a", prefix="j"):
    entries = []
    for i in range(count):
        spec = build_spec({"command": "true", "target_host": target}, [target], job_id=f"{prefix}{i:03d}")
        entries.append(spool.publish(spec))
    return entries


def test_pages_are_newest_first_and_cursor_continues_without_gaps(spool):
    entries = publish(spool, 25)
    index = JobIndex(spool)
    index.sync()
    seen, after = [], None
    for _ in range(5):  # 25 jobs in pages of 7: a cursor that never ends fails the test
        records, after, total = index.page(limit=7, after=after)
        assert total == 25
        seen.extend(record.entry.job_id for record in records)
        if after is None:
            break
    assert seen == [entry.job_id for entry in reversed(entries)]
    records, _, _ = index.page(limit=5, offset=20)
    assert [record.entry.job_id for record in records] == [entry.job_id for entry in reversed(entries[:5])]


def test_status_and_host_filters(spool):
    entries = publish(spool, 6)
    publish(spool, 2, target="gpu-b", prefix="b")
    os.makedirs(spool.running_dir("gpu-a"))
    assert spool.claim(entries[0], "gpu-a", "agent-1")  # dispatched (no running record yet)
    assert spool.claim(entries[1], "gpu-a", "agent-1")
    spool.write_attempt(entries[1], "gpu-a", "agent-1", JobState.RUNNING)
    assert spool.cancel_queued(entries[2])
    index = JobIndex(spool)
    index.sync()

    def ids(**filters):
        return sorted(record.entry.job_id for record in index.page(limit=100, **filters)[0])

    assert ids(status=JobState.RUNNING) == ["j001"]
    assert ids(status=JobState.DISPATCHED) == ["j000"]
    assert ids(status=JobState.CANCELED) == ["j002"]
    assert ids(status=JobState.QUEUED) == ["b000", "b001", "j003", "j004", "j005"]
    assert ids(status=JobState.QUEUED, host="gpu-b") == ["b000", "b001"]
    assert ids(host="gpu-a") == ["j000", "j001", "j002", "j003", "j004", "j005"]
    assert index.page(status=JobState.FINISHED)[0] == []


def test_moves_made_behind_the_index_are_found_without_events(spool):
    entry = publish(spool, 1)[0]
    index = JobIndex(spool)
    index.sync()
    os.makedirs(spool.running_dir("gpu-a"))
    spool.claim(entry, "gpu-a", "agent-1")  # no event reaches this index
    record = index.get(entry.job_id)  # get() notices the entry left queued/
    assert record.location == Location(RUNNING, "gpu-a")
    spool.write_attempt(entry, "gpu-a", "agent-1", JobState.RUNNING)
    spool.finish(entry, "gpu-a", "agent-1", JobState.FINISHED, exit_code=0)
    assert index.state_of(index.get(entry.job_id)) == JobState.FINISHED
    assert index.get(entry.job_id).location == Location(DONE, "finished")
    assert index.get(entry.job_id).host == "gpu-a"


def test_sync_drops_deleted_jobs_and_adds_new_ones(spool):
    first, second = publish(spool, 2)
    index = JobIndex(spool)
    index.sync()
    os.unlink(os.path.join(spool.queued_dir, first.name))
    third = publish(spool, 1, prefix="k")[0]
    index.sync(include_done=False)
    assert first.job_id not in index and second.job_id in index and third.job_id in index


def test_superseded_attempt_moving_late_does_not_override_the_requeued_entry(spool):
    entry = publish(spool, 1)[0]
    index = JobIndex(spool)
    index.sync()
    os.makedirs(spool.running_dir("gpu-a"))
    spool.claim(entry, "gpu-a", "agent-1")
    requeued = spool.requeue(entry, "gpu-a")
    index.place(Location(QUEUED), requeued)
    # The stale owner tries to finish attempt 1: its rename finds nothing to move.
    assert not spool.finish(entry, "gpu-a", "agent-1", JobState.FAILED)
    index.place(Location(DONE, "failed"), entry)  # a stale event for the old name
    record = index.get(entry.job_id)
    assert record.entry.attempt == 2 and index.state_of(record) == JobState.QUEUED


def test_entry_names_round_trip_and_sort_in_dispatch_order():
    entries = [Entry(5, 200, "any", 1, "late-high"), Entry(5, 100, "gpu-a", 2, "early-high.x_y"),
               Entry(-3, 50, "any", 1, "low"), Entry(0, 300, "node-1.lab", 1, "mid")]
    for entry in entries:
        assert Entry.parse(entry.name) == entry
    order = [Entry.parse(name).job_id for name in sorted(entry.name for entry in entries)]
    assert order == ["early-high.x_y", "late-high", "mid", "low"]
    for junk in ["x.json", "1_2_3.json", ".000_1_any_001_j.json", "000_1_any_001_../x.json", "000_a_any_001_j.json"]:
        assert Entry.parse(junk) is None


def test_claim_after_an_ambiguous_rename_is_decided_by_the_attempt_record(spool):
    first, second = publish(spool, 2)
    os.makedirs(spool.running_dir("gpu-a"))
    # Another agent of this host claimed first: the source is gone, the target exists with its record.
    assert spool.claim(first, "gpu-a", "agent-1")
    assert not spool.claim(first, "gpu-a", "agent-2")
    # A rename whose reply was lost (NFS) moved it but reported ENOENT: no record yet, so it is ours.
    os.rename(os.path.join(spool.queued_dir, second.name), os.path.join(spool.running_dir("gpu-a"), second.name))
    assert spool.claim(second, "gpu-a", "agent-2")
    assert fsio.read_json_object(spool.folder(second.job_id).attempt_record(1))["agent_id"] == "agent-2"


def test_an_ended_attempt_record_is_never_rewritten(spool):
    entry = publish(spool, 1)[0]
    os.makedirs(spool.running_dir("gpu-a"))
    spool.claim(entry, "gpu-a", "agent-1")
    spool.write_attempt(entry, "gpu-a", "agent-1", JobState.RUNNING)
    spool.finish(entry, "gpu-a", "agent-1", JobState.FINISHED, exit_code=0)
    with pytest.raises(Exception) as raised:
        spool.write_attempt(entry, "gpu-a", "probe", JobState.FAILED, reason="late probe")
    assert raised.value.status == 409
    assert fsio.read_json_object(spool.folder(entry.job_id).attempt_record(1))["state"] == "finished"


def test_a_requeue_seen_only_as_a_departure_keeps_the_job_visible(spool):
    spec = build_spec({"command": "true", "target_host": "gpu-a", "max_retries": 1}, ["gpu-a"],
                      job_id="retry-1")
    entry = spool.publish(spec)
    index = JobIndex(spool)
    index.sync()
    os.makedirs(spool.running_dir("gpu-a"))
    spool.claim(entry, "gpu-a", "agent-1")
    index.place(Location(RUNNING, "gpu-a"), entry)
    location, requeued = spool.recover_lost(entry, "gpu-a", "host_lost")
    assert location == Location(QUEUED) and requeued.attempt == 2
    # Only the "left running/" event arrives; the one for queued/ is late or lost.
    index.vacate(Location(RUNNING, "gpu-a"), entry)
    record = index.get("retry-1")
    assert record is not None and record.location == Location(QUEUED) and record.entry.attempt == 2
    # Attempt 2 is lost too: max_retries is spent, so the job ends failed (host_lost).
    spool.claim(requeued, "gpu-a", "agent-2")
    location, failed = spool.recover_lost(requeued, "gpu-a", "host_lost")
    assert location == Location(DONE, "failed") and failed == requeued
    assert fsio.read_json_object(spool.folder("retry-1").attempt_record(2))["reason"] == "host_lost"


def test_host_filter_finds_ended_any_jobs_by_the_host_that_ran_them_after_a_restart(spool):
    entry = publish(spool, 1, target="any")[0]
    os.makedirs(spool.running_dir("gpu-b"))
    spool.claim(entry, "gpu-b", "agent-b")
    spool.write_attempt(entry, "gpu-b", "agent-b", JobState.RUNNING)
    spool.finish(entry, "gpu-b", "agent-b", JobState.FINISHED, exit_code=0)
    index = JobIndex(spool)  # a fresh server: it never saw the job run
    index.sync()
    assert [r.entry.job_id for r in index.page(host="gpu-b")[0]] == [entry.job_id]
    assert index.page(host="any")[0] == []


def test_a_late_event_of_an_earlier_attempt_never_takes_a_requeued_job_back(spool):
    [entry] = publish(spool, 1)
    index = JobIndex(spool)
    index.sync()
    fsio.makedirs(spool.running_dir("gpu-a"))
    assert spool.claim(entry, "gpu-a", "agent-a")
    requeued = spool.requeue(entry, "gpu-a")
    index.place(Location(QUEUED), requeued)
    held = index.get(entry.job_id)  # what a request is about to read
    index.place(Location(RUNNING, "gpu-a"), entry)  # the claim's event, delivered only now
    index.sync()  # a listing cannot take it back either
    assert held.entry == requeued and index.status_of(held).entry.attempt == 2
    assert index.get(entry.job_id).location == Location(QUEUED)


def test_a_sync_lists_an_entry_directory_again_only_when_its_mtime_moved(spool):
    first, second = publish(spool, 2)
    for entry in (first, second):
        assert spool.cancel_queued(entry)
    done = spool.done_path(JobState.CANCELED.value)
    old = os.stat(done).st_mtime - 60
    os.utime(done, (old, old))  # older than the settling time: its mtime is trusted
    index = JobIndex(spool)
    index.sync()

    os.unlink(os.path.join(done, first.name))  # behind the index's back, and the mtime put back
    os.utime(done, (old, old))
    index.sync()
    assert first.job_id in index  # not listed again: nothing moved its mtime

    os.unlink(os.path.join(done, second.name))  # a real change moves it
    index.sync()
    assert first.job_id not in index and second.job_id not in index
