"""The slurm runtime's pure parts, no cluster: the batch script, job resources to sbatch options, job names,
time limits, and the server's rule for a lost Slurm agent's jobs (on a real spool)."""

import os
import time

import pytest

from opeva_spool import fsck, fsio
from opeva_spool.exceptions import BadRequest
from opeva_spool.hosts import LivenessMonitor
from opeva_spool.jobs import build_spec, time_limit_seconds
from opeva_spool.runtimes.slurm import parse_job_name, render_script, sbatch_options, slurm_job_name
from opeva_spool.settings import Settings
from opeva_spool.spool import Location, Spool
from opeva_spool.states import JobState


def test_job_resources_win_over_the_hosts_slurm_settings_and_empty_settings_add_no_option():
    settings = Settings(slurm_partition="gpu", slurm_account="opeva", slurm_qos="", slurm_time_limit="2:00:00",
                        slurm_cpus=4, slurm_mem="")
    assert sbatch_options(settings, {"cpus": 16, "time": "30"}, gpus=2) == [
        "--partition=gpu", "--account=opeva", "--time=30", "--cpus-per-task=16", "--gres=gpu:2"]
    assert sbatch_options(settings, None, gpus=0) == [
        "--partition=gpu", "--account=opeva", "--time=2:00:00", "--cpus-per-task=4"]
    assert sbatch_options(Settings(), {"mem": "4G"}, gpus=0) == ["--mem=4G"]


def test_the_script_names_the_attempt_appends_to_the_log_and_execs_the_quoted_command():
    script = render_script(job_name="opeva-j1-2", log_path="/share/jobs/j1/logs/j1.log", workdir="/share/jobs/j1",
                           options=["--time=5"], env={"OPEVA_JOB_ID": "j1", "NOTE": "it's $HOME"},
                           argv=["python3", "-c", "print('a b')"])
    lines = script.splitlines()
    assert lines[0] == "#!/bin/sh"
    assert lines[1:7] == ["#SBATCH --job-name=opeva-j1-2", "#SBATCH --output=/share/jobs/j1/logs/j1.log",
                          "#SBATCH --open-mode=append", "#SBATCH --export=NONE", "#SBATCH --chdir=/share/jobs/j1",
                          "#SBATCH --time=5"]
    assert "export NOTE='it'\"'\"'s $HOME'" in lines  # no expansion by the batch shell
    assert lines[-1] == "exec python3 -c 'print('\"'\"'a b'\"'\"')'"


def test_a_line_break_in_an_sbatch_option_is_refused():
    with pytest.raises(Exception, match="line break"):
        render_script(job_name="x", log_path="/a\n#SBATCH --uid=0", workdir="/a", options=[], env={}, argv=["true"])


@pytest.mark.parametrize(("name", "key"), [
    ("opeva-20261207-abc-3", ("20261207-abc", 3)),
    (slurm_job_name("j-1", 12), ("j-1", 12)),
    ("opeva-x", None),
    ("opeva--2", None),
    ("warm-up", None),
    ("opeva-j-two", None),
])
def test_job_names_carry_the_job_and_attempt(name, key):
    assert parse_job_name(name) == key


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 5400), ("1:30", 90), ("1:30:00", 5400), ("2-12", 216000), ("2-12:30", 217800), ("1-0:0:5", 86405),
    ("", None), ("UNLIMITED", None), ("1h", None), ("-5", None),
])
def test_slurm_time_limits_in_seconds(text, seconds):
    assert time_limit_seconds(text) == seconds


@pytest.mark.parametrize("resources", [
    {"cpus": 0}, {"cpus": True}, {"cpus": "4"}, {"mem": "4 GB"}, {"mem": "-1"}, {"time": "soon"}, {"time": "0"},
    {"gpus": 1}, ["cpus", 4],
])
def test_bad_resources_are_refused_at_submit(resources):
    with pytest.raises(BadRequest) as refused:
        build_spec({"command": "true", "resources": resources}, ["local"], job_id="j1")
    assert refused.value.extra["field"] == "resources"


def test_resources_are_kept_in_the_spec():
    spec = build_spec({"command": "true", "resources": {"cpus": 8, "mem": 4000, "time": "1-00:00:00"}}, ["local"],
                      job_id="j1")
    assert spec.resources == {"cpus": 8, "mem": "4000", "time": "1-00:00:00"}
    assert spec.to_dict()["resources"] == spec.resources


def running_attempt(spool, job_id, host, **record):
    spec = build_spec({"command": "true", "target_host": host}, [host], job_id=job_id)
    entry = spool.publish(spec)
    assert spool.claim(entry, host, "agent-1")
    spool.write_attempt(entry, host, "agent-1", JobState.RUNNING, **record)
    return entry


def test_a_lost_slurm_hosts_jobs_are_requeued_only_once_their_time_limit_has_surely_passed(tmp_path):
    spool = Spool(str(tmp_path / "share"))
    spool.ensure_layout()
    for host, detached in (("hpc", True), ("node", False)):
        fsio.makedirs(spool.running_dir(host))
        fsio.atomic_write_json(spool.heartbeat_path(host), {"host": host, "boot_id": "b", "agent_id": host,
                                                            "counter": 1, "interval": 0.05, "detached": detached})
    over = running_attempt(spool, "over", "hpc", cluster_state="RUNNING", time_limit_seconds=0.3)
    long = running_attempt(spool, "long", "hpc", cluster_state="RUNNING", time_limit_seconds=3600)
    pending = running_attempt(spool, "pending", "hpc", cluster_state="PENDING", time_limit_seconds=0.3)
    unlimited = running_attempt(spool, "unlimited", "hpc", cluster_state="RUNNING")
    plain = running_attempt(spool, "plain", "node")
    monitor = LivenessMonitor(spool, ["hpc", "node"], offline_after=0.2, detached_grace=0.2)
    monitor.observe()
    time.sleep(0.3)  # offline, but not yet past 0.3 + 0.2 s
    monitor.reclaim_offline()
    running = set(os.listdir(spool.running_dir("hpc")))
    assert running == {over.name, long.name, pending.name, unlimited.name}
    assert os.listdir(spool.running_dir("node")) == []  # an ordinary host's job is failed at once
    assert spool.find(plain) == Location("done", "failed")
    time.sleep(0.3)
    monitor.reclaim_offline()
    assert set(os.listdir(spool.running_dir("hpc"))) == {long.name, pending.name, unlimited.name}
    assert spool.read_attempt(over)["reason"] == "host_lost"
    assert monitor.describe("hpc")["detached"] is True


def test_fsck_reports_a_silent_slurm_hosts_running_job_and_never_requeues_it(tmp_path):
    spool = Spool(str(tmp_path / "share"))
    spool.ensure_layout()
    fsio.makedirs(spool.running_dir("hpc"))
    fsio.atomic_write_json(spool.heartbeat_path("hpc"), {"host": "hpc", "counter": 1, "detached": True})
    entry = running_attempt(spool, "at-cluster", "hpc", cluster_state="RUNNING", slurm_job_id="7")
    old = time.time() - 3600
    for path in (spool.heartbeat_path("hpc"), spool.folder(entry.job_id).attempt_record(1)):
        os.utime(path, (old, old))
    report = fsck.check(spool.root, repair=True, min_age=10, offline_after=30)
    assert [finding.kind for finding in report.findings] == ["running_on_silent_cluster_host"]
    assert not report.findings[0].repaired
    assert os.listdir(spool.running_dir("hpc")) == [entry.name]
