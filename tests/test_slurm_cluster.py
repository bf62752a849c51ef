"""The transport to a Slurm cluster (opeva_spool/runtimes/slurm_cluster.py) against a real one-node cluster.

No time-limit case here: Slurm's smallest limit is one minute, so a TIMEOUT costs 60 s; the slurm
runtime's tests (issue 11) carry that one.
"""

import os
import uuid

import pytest

from opeva_spool.runtimes.slurm_cluster import ClusterError, ClusterPhase, LocalCluster
from opeva_spool.states import EndReason

from .conftest import wait_for
from .slurm_support import private_cluster, warm_up

pytestmark = pytest.mark.slurm

SETTLE_TIMEOUT = 15.0  # seconds for a job to reach a state (each step takes ~0.5 s on an idle node)


class RecordingCluster(LocalCluster):
    """The real LocalCluster that also keeps every command it ran, and cancels what it submitted at the end."""

    def __init__(self, slurm_conf, workdir):
        super().__init__(slurm_conf)
        self.workdir = str(workdir)
        self.commands = []
        self.submitted = []

    def run(self, argv, stdin=None):
        self.commands.append(list(argv))
        return super().run(argv, stdin)

    def submit(self, script, *, job_name, hold=True, options=()):
        # Output and working dir in the test's tmp dir, never in the checkout.
        options = ["--chdir", self.workdir, "--output", os.path.join(self.workdir, "slurm-%j.out"), *options]
        slurm_id = super().submit(script, job_name=job_name, hold=hold, options=options)
        self.submitted.append(slurm_id)
        return slurm_id

    def state_of(self, slurm_id):
        return self.states([slurm_id]).get(slurm_id)

    def wait_until(self, slurm_id, *states, timeout=SETTLE_TIMEOUT):
        def reached():
            job = self.state_of(slurm_id)
            return job if job is not None and job.state in states else None

        return wait_for(reached, timeout, interval=0.1, message=f"Slurm job {slurm_id} to reach {states}")


@pytest.fixture
def cluster(slurm_cluster, tmp_path):
    recording = RecordingCluster(slurm_cluster.conf, tmp_path)
    yield recording
    for slurm_id in recording.submitted:
        recording.cancel(slurm_id)


def unique(prefix="opeva"):
    """A job name prefix no other test (or earlier run on a shared cluster) uses."""
    return f"{prefix}-t{uuid.uuid4().hex[:8]}"


def test_the_cluster_fixture_gives_an_idle_node_past_its_first_scheduling_pass(slurm_cluster):
    # idle on a cluster of its own; mixed or allocated while other sessions' jobs run on a shared one
    assert slurm_cluster.run("sinfo", "-h", "-o", "%T").stdout.strip() in ("idle", "mixed", "allocated")
    jobs = slurm_cluster.run("squeue", "-h", "-t", "all", "-o", "%j|%T").stdout.split()
    assert "warm-up|COMPLETED" in jobs


def test_a_held_job_waits_until_released_then_runs_to_completion(cluster, tmp_path):
    slurm_id = cluster.submit("#!/bin/sh\necho ran > out.txt\n", job_name=unique())
    held = cluster.state_of(slurm_id)
    assert (held.state, held.reason, held.phase) == ("PENDING", "JobHeldUser", ClusterPhase.PENDING)
    assert held.exit_code is None
    cluster.release(slurm_id)
    done = cluster.wait_until(slurm_id, "COMPLETED")
    assert (done.phase, done.exit_code, done.signal, done.source) == (ClusterPhase.FINISHED, 0, 0, "squeue")
    assert (tmp_path / "out.txt").read_text() == "ran\n"


def test_a_script_given_as_a_path_runs_unheld(cluster, tmp_path):
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\necho from file\n")
    slurm_id = cluster.submit(str(script), job_name=unique(), hold=False)
    cluster.wait_until(slurm_id, "COMPLETED")
    assert (tmp_path / f"slurm-{slurm_id}.out").read_text() == "from file\n"


def test_a_failing_job_keeps_its_exit_code(cluster):
    slurm_id = cluster.submit("#!/bin/sh\nexit 3\n", job_name=unique(), hold=False)
    failed = cluster.wait_until(slurm_id, "FAILED")
    assert (failed.exit_code, failed.signal, failed.reason) == (3, 0, "NonZeroExitCode")
    assert (failed.phase, failed.failure_reason) == (ClusterPhase.FAILED, "failed")


def test_a_cancelled_running_job_is_stopped(cluster):
    slurm_id = cluster.submit("#!/bin/sh\nsleep 60\n", job_name=unique(), hold=False)
    cluster.wait_until(slurm_id, "RUNNING")
    cluster.cancel(slurm_id)
    cancelled = cluster.wait_until(slurm_id, "CANCELLED")
    # The status races between the batch shell and the signal: 0:15 (killed) or 143:0 (the shell's 128 + 15).
    assert cancelled.phase is ClusterPhase.STOPPED and (cancelled.exit_code, cancelled.signal) in ((0, 15), (143, 0))
    cluster.cancel(slurm_id)  # again, on an ended job: nothing happens, nothing is raised


def test_a_signal_reaches_the_batch_script_without_cancelling_the_job(cluster, tmp_path):
    script = "#!/bin/bash\ntrap 'echo got USR1 > signalled; exit 0' USR1\nsleep 60 & wait\n"
    slurm_id = cluster.submit(script, job_name=unique(), hold=False)
    cluster.wait_until(slurm_id, "RUNNING")
    cluster.cancel(slurm_id, signal="USR1")
    assert cluster.wait_until(slurm_id, "COMPLETED").exit_code == 0
    assert (tmp_path / "signalled").read_text() == "got USR1\n"


def test_a_job_the_node_can_never_run_is_refused_at_submit_with_slurms_reason(cluster, slurm_cluster):
    node_cpus = int(slurm_cluster.run("sinfo", "-h", "-o", "%c").stdout.split()[0])
    with pytest.raises(ClusterError) as refused:
        cluster.submit("#!/bin/sh\ntrue\n", job_name=unique(), options=["--cpus-per-task", str(node_cpus + 1)])
    assert refused.value.reason == EndReason.START_FAILED
    assert refused.value.message == "More processors requested than permitted"
    assert refused.value.detail == "sbatch: More processors requested than permitted"


def test_a_bad_partition_is_refused_with_slurms_reason(cluster):
    with pytest.raises(ClusterError) as refused:
        cluster.submit("#!/bin/sh\ntrue\n", job_name=unique(), options=["--partition", "nosuch"])
    assert refused.value.message == "Invalid partition name specified"


def test_the_states_of_twenty_jobs_take_one_squeue_call(cluster):
    ids = [cluster.submit("#!/bin/sh\ntrue\n", job_name=unique()) for _ in range(20)]
    cluster.commands.clear()
    states = cluster.states(ids)
    assert [command[0] for command in cluster.commands] == ["squeue"]
    assert list(states) == ids
    assert {(job.state, job.reason) for job in states.values()} == {("PENDING", "JobHeldUser")}


def test_an_unknown_id_is_left_out_of_the_answer(cluster):
    known = cluster.submit("#!/bin/sh\ntrue\n", job_name=unique())
    assert list(cluster.states([known, "999999"])) == [known]
    assert cluster.states(["999999"]) == {}
    assert cluster.states(["not-a-job", "1,2"]) == {}  # never handed to squeue as a filter
    assert cluster.states([]) == {}


def test_pending_jobs_get_their_place_in_the_queue(cluster, slurm_cluster):
    node_cpus = slurm_cluster.run("sinfo", "-h", "-o", "%c").stdout.split()[0]
    filler = cluster.submit("#!/bin/sh\nsleep 60\n", job_name=unique(), hold=False,
                            options=["--cpus-per-task", node_cpus])
    cluster.wait_until(filler, "RUNNING")
    first, second = (cluster.submit("#!/bin/sh\ntrue\n", job_name=unique(), hold=False) for _ in range(2))
    held = cluster.submit("#!/bin/sh\ntrue\n", job_name=unique())
    states = cluster.states([filler, first, second, held], positions=True)
    assert states[filler].position is None and states[held].position is None  # running; held: not in the queue
    # 1 and 2 on a cluster of their own; other sessions' pending jobs (a shared cluster) may come first.
    assert 1 <= states[first].position < states[second].position
    # Slurm gives the reason (Resources, Priority) at its next scheduling pass; until then it has none.
    assert states[first].phase is ClusterPhase.PENDING and states[first].reason in ("", "Resources", "Priority")


def test_find_returns_the_jobs_whose_name_starts_with_a_prefix(cluster):
    prefix = unique()
    mine = {cluster.submit("#!/bin/sh\ntrue\n", job_name=f"{prefix}-{attempt}") for attempt in (1, 2)}
    cluster.submit("#!/bin/sh\ntrue\n", job_name=unique())
    found = cluster.find(prefix + "-")
    assert set(found) == mine
    assert {job.name for job in found.values()} == {f"{prefix}-1", f"{prefix}-2"}


@pytest.mark.parametrize("accounting", ["0", "1"], ids=["jobcomp", "sacct"])
def test_a_job_purged_from_squeue_is_still_found_after_its_end(tmp_path, accounting):
    # A cluster of its own: MinJobAge=2 would make every other test read finished jobs from the log.
    with private_cluster(SLURM_MIN_JOB_AGE="2", SLURM_ACCOUNTING=accounting) as forgetful:
        warm_up(forgetful)
        cluster = RecordingCluster(forgetful.conf, tmp_path)
        assert cluster.has_accounting() is (accounting == "1")
        prefix = unique()
        slurm_id = cluster.submit("#!/bin/sh\nexit 4\n", job_name=f"{prefix}-1", hold=False)
        assert cluster.wait_until(slurm_id, "FAILED").source == "squeue"
        # slurmctld purges on its own timer: measured 5-7 s after the end with MinJobAge=2.
        wait_for(lambda: cluster.state_of(slurm_id).source != "squeue", 30, interval=0.5,
                 message=f"job {slurm_id} to be purged from squeue")
        purged = cluster.state_of(slurm_id)
        assert purged.source == ("sacct" if accounting == "1" else "jobcomp")
        assert (purged.state, purged.exit_code, purged.phase) == ("FAILED", 4, ClusterPhase.FAILED)
        assert forgetful.run("squeue", "-h", "-t", "all", "-j", slurm_id, check=False).returncode == 1
        assert list(cluster.find(prefix)) == [slurm_id]
