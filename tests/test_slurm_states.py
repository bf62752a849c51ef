"""Slurm's words read as ours: job states, exit statuses and error messages (pure logic, no cluster)."""

import pytest

from opeva_spool.runtimes.slurm_cluster import (
    ClusterJob,
    ClusterPhase,
    decode_wait_status,
    map_state,
    parse_exit_pair,
    slurm_message,
)


@pytest.mark.parametrize(("slurm_state", "phase", "reason"), [
    ("PENDING", ClusterPhase.PENDING, ""),
    ("CONFIGURING", ClusterPhase.PENDING, ""),
    ("REQUEUED", ClusterPhase.PENDING, ""),
    ("RUNNING", ClusterPhase.RUNNING, ""),
    ("COMPLETING", ClusterPhase.RUNNING, ""),
    ("SUSPENDED", ClusterPhase.RUNNING, ""),
    ("COMPLETED", ClusterPhase.FINISHED, ""),
    ("CANCELLED", ClusterPhase.STOPPED, ""),
    ("FAILED", ClusterPhase.FAILED, "failed"),
    ("TIMEOUT", ClusterPhase.FAILED, "timeout"),
    ("OUT_OF_MEMORY", ClusterPhase.FAILED, "out_of_memory"),
    ("NODE_FAIL", ClusterPhase.FAILED, "node_fail"),
    ("PREEMPTED", ClusterPhase.FAILED, "preempted"),
    ("BOOT_FAIL", ClusterPhase.FAILED, "boot_fail"),
    ("DEADLINE", ClusterPhase.FAILED, "deadline"),
])
def test_each_slurm_state_maps_to_our_phase_and_a_failed_one_keeps_its_name_as_the_reason(slurm_state, phase, reason):
    assert map_state(slurm_state) == (phase, reason)


def test_sacct_and_scontrol_decorations_do_not_change_the_state():
    assert map_state("CANCELLED by 0") == (ClusterPhase.STOPPED, "")
    assert map_state("COMPLETING+") == (ClusterPhase.RUNNING, "")
    assert map_state("timeout") == (ClusterPhase.FAILED, "timeout")


def test_a_state_the_table_does_not_know_decides_nothing():
    assert map_state("SOMETHING_NEW") == (ClusterPhase.UNKNOWN, "")
    assert map_state("") == (ClusterPhase.UNKNOWN, "")
    assert not ClusterPhase.UNKNOWN.ended and not ClusterPhase.PENDING.ended and ClusterPhase.STOPPED.ended


@pytest.mark.parametrize(("raw", "pair"), [
    (0, (0, 0)), (768, (3, 0)), (1280, (5, 0)),  # exited 0, 3, 5
    (9, (0, 9)), (15, (0, 15)),  # killed, cancelled
    (4021, (0, 53)),  # the launch failure of a missing --output folder ("0:53")
])
def test_squeues_raw_wait_status_decodes_to_exit_code_and_signal(raw, pair):
    assert decode_wait_status(raw) == pair


def test_slurms_exit_pair_text_parses_to_exit_code_and_signal():
    assert parse_exit_pair("3:0") == (3, 0)
    assert parse_exit_pair("0:15") == (0, 15)
    assert parse_exit_pair("") == (0, 0)


def test_the_reason_of_a_refused_submission_is_slurms_own_last_line():
    stderr = ("sbatch: error: invalid partition specified: nosuch\n"
              "sbatch: error: Batch job submission failed: Invalid partition name specified\n")
    assert slurm_message(stderr) == "Invalid partition name specified"
    assert slurm_message("sbatch: error: Batch job submission failed: More processors requested than permitted\n") \
        == "More processors requested than permitted"
    assert slurm_message("") == "failed without a message"


def test_a_cluster_job_reports_its_phase_and_failure_reason():
    job = ClusterJob("7", "opeva-j-1", "TIMEOUT", "TimeLimit", 0, 15)
    assert job.phase is ClusterPhase.FAILED and job.failure_reason == "timeout"
