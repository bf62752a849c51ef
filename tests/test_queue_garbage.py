"""Garbage planted in spool/queued/ under entry-like names is set aside, reported, and never stalls a worker."""

import json
import os
import time

from opeva_spool.spool import Entry

from .conftest import rejected, wait_for, wait_for_status


def plant(server, job_id, target, content=None, age=60):
    """A file (or, for content None, a directory) in queued/ named like an entry, modified ``age`` s ago."""
    path = os.path.join(server.spool.queued_dir, Entry(0, time.time_ns(), target, 1, job_id).name)
    if content is None:
        os.mkdir(path)
    else:
        with open(path, "w") as handle:
            handle.write(content)
    old = time.time() - age
    os.utime(path, (old, old))
    return path


def set_aside(server):
    """{job id: reason} of the entries set aside into rejected/, each there beside its reason.json."""
    reasons = rejected(server)
    assert all(reason["source"] == "queued" for reason in reasons)
    return {reason["job_id"]: reason["reason"] for reason in reasons}


def test_unreadable_entries_in_the_queue_are_set_aside_reported_and_never_block_the_worker(client, server):
    planted = {
        "garbage-text": plant(server, "garbage-text", "local", "not json at all"),
        "garbage-dir": plant(server, "garbage-dir", "gpu-b"),
        "garbage-deep": plant(server, "garbage-deep", "local", "[" * 5000),
        "garbage-other": plant(server, "garbage-other", "gpu-b", json.dumps({"job_id": "someone-else"})),
    }
    fresh = plant(server, "garbage-fresh", "gpu-b", "{}", age=0)  # could be a reader's stale view: left for now
    reasons = wait_for(lambda: len(set_aside(server)) == len(planted) and set_aside(server), timeout=10,
                       message="the planted entries to be set aside")
    assert sorted(reasons) == sorted(planted)
    assert not any(os.path.lexists(path) for path in planted.values())
    assert os.path.exists(fresh)
    for job_id in planted:
        assert client.get(f"/status/{job_id}").status == 404
        assert client.delete(f"/job/{job_id}").status == 404
    assert "not a regular file" in reasons["garbage-dir"]
    assert "not valid JSON" in reasons["garbage-text"] and "not valid JSON" in reasons["garbage-deep"]
    assert "not a job spec" in reasons["garbage-other"]
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["rejected"]["count"] == 4
    assert len(health["rejected"]["newest"]) == 4
    # The embedded worker read past the garbage meant for it and still runs real jobs.
    job = client.post("/run-simulation", json={"command": "true"}).json()
    wait_for_status(client, job["job_id"], "finished")
