"""Atomic writes, tolerant reads, exclusive creation, and the group-commit directory fsync."""

import os
import threading

import pytest

from opeva_spool import fsio


def test_atomic_write_replaces_whole_and_leaves_no_temp(tmp_path):
    path = tmp_path / "state.json"
    fsio.atomic_write_json(str(path), {"a": 1})
    fsio.atomic_write_json(str(path), {"a": 2}, durable=False)
    assert fsio.read_json(str(path)) == {"a": 2}
    assert os.listdir(tmp_path) == ["state.json"]


def test_atomic_create_refuses_an_existing_name_and_keeps_it(tmp_path):
    path = str(tmp_path / "x.yaml")
    fsio.atomic_create_bytes(path, b"first")
    with pytest.raises(FileExistsError):
        fsio.atomic_create_bytes(path, b"second")
    with open(path, "rb") as handle:
        assert handle.read() == b"first" and os.listdir(tmp_path) == ["x.yaml"]


@pytest.mark.parametrize("content", [b"", b"{", b"\xff", b"[1]"])
def test_reads_of_half_written_files_are_none_for_objects(tmp_path, content):
    path = tmp_path / "r.json"
    path.write_bytes(content)
    assert fsio.read_json_object(str(path)) is None
    assert fsio.read_json_object(str(tmp_path / "missing.json")) is None


def test_concurrent_group_commits_share_flushes_and_all_return(tmp_path):
    flushes = []
    gate = threading.Event()

    def slow_flush(paths):
        flushes.append(set(paths))
        gate.wait(5)  # hold the first flush so the other callers pile up behind it

    commit = fsio.GroupCommit(slow_flush)
    threads = [threading.Thread(target=commit.sync, args=([str(tmp_path / str(n))],)) for n in range(8)]
    for thread in threads:
        thread.start()
    gate.set()
    for thread in threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread in threads)
    # The first caller's flush, then one more for everyone who arrived while it ran (or a few).
    assert 2 <= len(flushes) < 8
    assert set().union(*flushes) == {str(tmp_path / str(n)) for n in range(8)}


def test_a_failed_group_commit_is_reported_to_its_callers(tmp_path):
    def broken(paths):
        raise OSError(5, "Input/output error")

    with pytest.raises(fsio.FlushError) as raised:
        fsio.GroupCommit(broken).sync([str(tmp_path)])
    assert raised.value.errno == 5
