"""Several agent processes over one spool: every job runs exactly once, none is lost."""

import os

import pytest

from opeva_spool import fsio
from opeva_spool.jobs import build_spec
from opeva_spool.spool import Spool

from .conftest import wait_for
from .processes import start_agent, stop

pytestmark = pytest.mark.slow

JOBS = 300
# Each run appends the host that ran it: a job run twice would leave two lines.
MARK = 'echo "$OPEVA_HOST $OPEVA_ATTEMPT" >> "$OPEVA_BASE_DIR/jobs/$OPEVA_JOB_ID/ran"'


def test_racing_agents_run_every_job_exactly_once(tmp_path):
    root = tmp_path / "share"
    spool = Spool(str(root))
    spool.ensure_layout()
    job_ids = []
    for i in range(JOBS):
        spec = build_spec({"command": ["sh", "-c", MARK], "target_host": "any"}, ["any"], job_id=f"race-{i:04d}")
        spool.publish(spec)
        job_ids.append(spec.job_id)
    # Four agent processes, one per host, exclude each other only through the rename.
    # Polling observers, as on NFS.
    hosts = ("node-a", "node-b", "node-c", "node-d")
    agents = [start_agent(root, tmp_path, host, capacity=6, observer="polling", scan_interval=0.2) for host in hosts]
    try:
        finished = wait_for(lambda: len(fsio.listdir(spool.done_path("finished"))) == JOBS or None, timeout=120,
                            message="all jobs to finish")
    finally:
        for agent in agents:
            stop(agent)
    assert finished
    ran_on = {}
    for job_id in job_ids:
        with open(os.path.join(spool.jobs_dir, job_id, "ran")) as handle:
            lines = handle.read().split("\n")[:-1]
        assert len(lines) == 1, f"{job_id} ran {len(lines)} times: {lines}"
        ran_on[job_id] = lines[0].split()[0]
        record = fsio.read_json_object(spool.folder(job_id).attempt_record(1))
        assert record["state"] == "finished" and record["host"] == ran_on[job_id]
    entries = [entry.job_id for _, entry in spool.scan()]
    assert sorted(entries) == sorted(job_ids)  # one entry per job, all in done/finished
    assert fsio.listdir(spool.queued_dir) == []
    assert len(set(ran_on.values())) >= 3  # the work really was shared


def test_a_second_agent_for_the_same_host_on_one_machine_refuses_to_start(tmp_path):
    root = tmp_path / "share"
    first = start_agent(root, tmp_path, "node-a")
    try:
        wait_for(lambda: os.path.exists(Spool(str(root)).heartbeat_path("node-a")), message="first agent")
        second = start_agent(root, tmp_path, "node-a")
        assert second.wait(20) == 2  # refused: it would take the first one's jobs for a dead predecessor's
        assert first.poll() is None
    finally:
        stop(first)
