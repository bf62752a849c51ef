"""Several agent processes over one spool: every job runs exactly once, none is lost."""

import os

from opeva_spool import fsio
from opeva_spool.jobs import build_spec
from opeva_spool.spool import Spool

from .conftest import wait_for
from .processes import start_agent, stop

JOBS = 300
# Each run appends the host that ran it: a job run twice would leave two lines.
MARK = 'echo "$OPEVA_HOST $OPEVA_ATTEMPT" >> "$OPEVA_BASE_DIR/jobs/$OPEVA_JOB_ID/ran"'


def test_racing_agents_run_every_job_exactly_once(tmp_path):
    root = tmp_path / "share"
    spool = Spool(str(root))
    spool.ensure_layout()
    job_ids = []
    for i in range(JOBS):
        spec = build_spec({"command": ["sh", "-c", MARK], "target_host": "any"}, ["any"], "", None, job_id=f"race-{i:04d}")
        spool.publish(spec)
        job_ids.append(spec.job_id)
    # Two hosts, two processes each: processes of one host coordinate with the local lock,
    # hosts only through the rename. Polling observers, as on NFS.
    agents = [start_agent(root, tmp_path, host, capacity=6, observer="polling", scan_interval=0.2)
              for host in ("node-a", "node-a", "node-b", "node-b")]
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
    assert set(ran_on.values()) == {"node-a", "node-b"}  # both hosts took part
