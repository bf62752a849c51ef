"""The Slurm SSH mode: SshCluster against the real one-node cluster through a throwaway sshd, and JobSync.

The login node is this machine seen through an sshd on a bridge of its own
(tests/slurm_ssh_support.py), so the cluster, its slurm.conf and the "remote" share are local
paths reached only over SSH. The pure parts (settings -> transport, quoting) run in the core suite.
"""

import json
import os
import subprocess
import uuid

import pytest

from opeva_spool.exceptions import SettingsError
from opeva_spool.runtimes.slurm_cluster import ClusterError, ClusterPhase, LocalCluster, SshCluster, make_cluster
from opeva_spool.runtimes.slurm_sync import JobSync, make_sync
from opeva_spool.settings import load_settings
from opeva_spool.states import EndReason

from .conftest import wait_for
from .slurm_ssh_support import LOGIN, running_login_node
from .sshfs_support import SSH_PORT
from .test_slurm_runtime import Hpc

SETTLE_TIMEOUT = 20.0


def unique():
    return f"opeva-s{uuid.uuid4().hex[:8]}"


# ----- pure: settings and quoting (core) ---------------------------------------------------------------

def test_the_settings_choose_ssh_when_a_login_node_is_named_else_the_local_clients(tmp_path):
    local = make_cluster(load_settings(environ={}, slurm_conf="/etc/slurm/x.conf"))
    assert isinstance(local, LocalCluster) and local.slurm_conf == "/etc/slurm/x.conf"
    remote = make_cluster(load_settings(environ={}, slurm_ssh="ada@login.hpc", slurm_ssh_config="/k/cfg",
                                        slurm_conf="/opt/slurm/etc/slurm.conf"))
    try:
        assert isinstance(remote, SshCluster) and remote.destination == "ada@login.hpc"
        assert remote.ssh_command()[:3] == ["ssh", "-F", "/k/cfg"]
        assert "BatchMode=yes" in remote.ssh_command() and os.stat(remote.control_dir).st_mode & 0o077 == 0
        # The remote shell gets one quoted line: SLURM_CONF of the login node, then the argv.
        assert remote.remote_command(["sbatch", "--job-name", "a b;rm -rf /"]) == \
            "env SLURM_CONF=/opt/slurm/etc/slurm.conf sbatch --job-name 'a b;rm -rf /'"
    finally:
        remote.close()
    assert not os.path.exists(remote.control_dir)


def test_a_destination_that_looks_like_an_option_is_refused():
    with pytest.raises(ValueError):
        SshCluster("-oProxyCommand=touch /tmp/x")


def test_no_sync_without_a_remote_root_and_a_remote_root_needs_ssh(tmp_path):
    assert make_sync(load_settings(environ={}), LocalCluster()) is None
    with pytest.raises(SettingsError, match="slurm_remote_root"):
        make_sync(load_settings(environ={}, slurm_remote_root="/scratch/opeva"), LocalCluster())


def test_an_unreachable_login_node_makes_the_cluster_unavailable_not_a_refusal(tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text("Host nowhere\n    HostName 127.0.0.1\n    Port 1\n    StrictHostKeyChecking no\n"
                      "    UserKnownHostsFile /dev/null\n")
    cluster = SshCluster("nowhere", ssh_config=str(config))
    try:
        with pytest.raises(ClusterError) as failed:
            cluster.submit("#!/bin/sh\ntrue\n", job_name="opeva-x-1")
    finally:
        cluster.close()
    assert failed.value.reason == EndReason.ENGINE_UNAVAILABLE
    assert failed.value.message.startswith("ssh to nowhere failed: ") and "refused" in failed.value.message


# ----- over SSH, against the real cluster --------------------------------------------------------------

@pytest.fixture(scope="module")
def login_node(tmp_path_factory):
    with running_login_node(tmp_path_factory) as node:
        yield node


@pytest.fixture
def ssh_cluster(login_node, slurm_cluster):
    cluster = SshCluster(LOGIN, ssh_config=login_node.ssh_config, slurm_conf=slurm_cluster.conf)
    cluster.submitted = []
    yield cluster
    for slurm_id in cluster.submitted:
        cluster.cancel(slurm_id)
    cluster.close()


def wait_until(cluster, slurm_id, *states):
    def reached():
        job = cluster.states([slurm_id]).get(slurm_id)
        return job if job is not None and job.state in states else None

    return wait_for(reached, SETTLE_TIMEOUT, interval=0.2, message=f"Slurm job {slurm_id} to reach {states}")


def ssh_connections(login_node):
    """Established TCP connections to the login node's sshd (client ends only: both ends are on this machine)."""
    address = login_node.sshd.server_address
    listing = subprocess.run(["ss", "-Htn", "state", "established", "dst", f"{address}:{SSH_PORT}"],
                             capture_output=True, text=True, check=True).stdout
    return len(listing.splitlines())


@pytest.mark.slurm
def test_a_held_job_submitted_over_ssh_runs_once_released_and_every_command_shares_one_connection(
        ssh_cluster, login_node, tmp_path):
    name = unique()
    script = f"#!/bin/sh\necho \"ran as $SLURM_JOB_NAME\" > {tmp_path}/out.txt\nexit 3\n"
    slurm_id = ssh_cluster.submit(script, job_name=name, options=["--chdir", str(tmp_path),
                                                                  "--output", str(tmp_path / "job.log")])
    ssh_cluster.submitted.append(slurm_id)
    held = ssh_cluster.states([slurm_id])[slurm_id]
    assert (held.state, held.reason) == ("PENDING", "JobHeldUser")
    assert list(ssh_cluster.find(name)) == [slurm_id]
    ssh_cluster.release(slurm_id)
    failed = wait_until(ssh_cluster, slurm_id, "FAILED")
    assert (failed.phase, failed.exit_code, failed.reason) == (ClusterPhase.FAILED, 3, "NonZeroExitCode")
    assert (tmp_path / "out.txt").read_text() == f"ran as {name}\n"
    # submit, states, find, release and the polls: one SSH connection, its master kept in the private dir.
    assert ssh_connections(login_node) == 1
    assert len(os.listdir(ssh_cluster.control_dir)) == 1


@pytest.mark.slurm
def test_a_job_the_cluster_can_never_run_is_refused_over_ssh_with_slurms_reason(ssh_cluster, slurm_cluster):
    node_cpus = int(slurm_cluster.run("sinfo", "-h", "-o", "%c").stdout.split()[0])
    with pytest.raises(ClusterError) as refused:
        ssh_cluster.submit("#!/bin/sh\ntrue\n", job_name=unique(), options=["--cpus-per-task", str(node_cpus + 1)])
    assert refused.value.reason == EndReason.START_FAILED
    assert refused.value.message == "More processors requested than permitted"


@pytest.mark.slurm
def test_a_running_job_is_cancelled_over_ssh(ssh_cluster, tmp_path):
    slurm_id = ssh_cluster.submit("#!/bin/sh\nsleep 60\n", job_name=unique(), hold=False,
                                  options=["--chdir", str(tmp_path), "--output", "/dev/null"])
    ssh_cluster.submitted.append(slurm_id)
    wait_until(ssh_cluster, slurm_id, "RUNNING")
    ssh_cluster.cancel(slurm_id)
    assert wait_until(ssh_cluster, slurm_id, "CANCELLED").phase is ClusterPhase.STOPPED


# ----- sync: rsync over the same connection --------------------------------------------------------------

@pytest.fixture
def sync(login_node, tmp_path):
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    cluster = SshCluster(LOGIN, ssh_config=login_node.ssh_config)
    yield JobSync(cluster, str(here), str(there), interval=3600)
    cluster.close()


def job_folder(root, job_id, files):
    for name, text in files.items():
        path = root / "jobs" / job_id / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "jobs" / job_id


@pytest.mark.slurm
def test_push_copies_the_job_folder_to_the_cluster_without_the_agents_records(sync, tmp_path):
    job_folder(tmp_path / "here", "j1", {"config.yaml": "steps: 3\n", "job_info.json": "{}",
                                         "attempts/1.json": "{}"})
    sync.push("j1")
    there = tmp_path / "there" / "jobs" / "j1"
    assert (there / "config.yaml").read_text() == "steps: 3\n" and (there / "job_info.json").exists()
    assert (there / "logs").is_dir()  # Slurm does not make the --output folder
    assert not (there / "attempts").exists()


@pytest.mark.slurm
def test_pull_brings_results_back_appends_the_log_and_leaves_the_servers_files_alone(sync, tmp_path):
    here = job_folder(tmp_path / "here", "j2", {"config.yaml": "steps: 3\n", "job_info.json": '{"server": 1}',
                                                "attempts/1.json": '{"agent": 1}', "logs/j2.log": "line 1\n"})
    sync.push("j2")
    there = tmp_path / "there" / "jobs" / "j2"
    log_inode = os.stat(here / "logs" / "j2.log").st_ino
    with open(there / "logs" / "j2.log", "a") as log:
        log.write("line 2\n")
    job_folder(tmp_path / "there", "j2", {"progress.json": '{"pct": 50}', "results/result.json": "{}",
                                          "job_info.json": '{"job": "lies"}', "config.yaml": "changed\n"})
    os.symlink("/etc/passwd", there / "results" / "link")
    assert sync.pull("j2") is True
    assert (here / "progress.json").read_text() == '{"pct": 50}' and (here / "results" / "result.json").exists()
    assert (here / "logs" / "j2.log").read_text() == "line 1\nline 2\n"
    assert os.stat(here / "logs" / "j2.log").st_ino == log_inode  # a follower keeps reading the same file
    assert (here / "job_info.json").read_text() == '{"server": 1}' and (here / "config.yaml").read_text() == \
        "steps: 3\n" and (here / "attempts" / "1.json").read_text() == '{"agent": 1}'
    assert not os.path.lexists(here / "results" / "link")

    (there / "progress.json").write_text('{"pct": 100}')
    assert sync.pull("j2") is False  # within the interval: no copy
    assert (here / "progress.json").read_text() == '{"pct": 50}'
    assert sync.pull("j2", final=True) is True  # the end: always copied
    assert (here / "progress.json").read_text() == '{"pct": 100}'


@pytest.mark.slurm
def test_a_job_on_a_cluster_without_the_share_gets_its_config_and_sends_its_outputs_back(
        sync, login_node, slurm_cluster, tmp_path):
    cluster = SshCluster(LOGIN, ssh_config=login_node.ssh_config, slurm_conf=slurm_cluster.conf)
    sync.cluster = cluster  # the same login node, with the cluster's slurm.conf
    job_folder(tmp_path / "here", "j3", {"config.yaml": "steps: 3\n"})
    sync.push("j3")
    there = tmp_path / "there" / "jobs" / "j3"
    script = (f"#!/bin/sh\ncd {there}\necho started\ncp config.yaml seen.yaml\n"
              "echo '{\"pct\": 100}' > progress.json\necho done\n")
    try:
        slurm_id = cluster.submit(script, job_name=unique(), hold=False,
                                  options=["--output", str(there / "logs" / "j3.log"), "--open-mode=append"])
        wait_until(cluster, slurm_id, "COMPLETED")
        sync.pull("j3", final=True)
    finally:
        cluster.close()
    here = tmp_path / "here" / "jobs" / "j3"
    assert (here / "seen.yaml").read_text() == "steps: 3\n"
    assert (here / "logs" / "j3.log").read_text() == "started\ndone\n"


# ----- end to end: the API, a server and a Slurm host's agent that reaches its cluster over SSH ------------

@pytest.fixture
def ssh_hpc(login_node, slurm_cluster, tmp_path):
    deployments = []

    def deploy(**settings):
        hpc = Hpc(slurm_cluster, tmp_path)
        deployments.append(hpc)
        hpc.start_agent(slurm_ssh=LOGIN, slurm_ssh_config=login_node.ssh_config, **settings)
        return hpc

    yield deploy
    for hpc in deployments:
        hpc.close()


@pytest.mark.slurm
def test_a_job_on_a_cluster_reached_over_ssh_finishes_with_its_log(ssh_hpc, login_node):
    hpc = ssh_hpc()
    job_id = hpc.submit(["sh", "-c", 'echo "hello from $SLURM_JOB_ID as $OPEVA_JOB_ID"; exit 0'])
    hpc.wait_status(job_id, "finished")
    record = hpc.record(job_id)
    assert record["runtime"] == "slurm" and record["exit_code"] == 0
    assert f"hello from {record['slurm_job_id']} as {job_id}" in hpc.http.get(f"/logs/{job_id}").text
    assert len(hpc.slurm_jobs(job_id)) == 1
    assert ssh_connections(login_node) == 1  # sbatch, release and every poll: one connection


@pytest.mark.slurm
def test_a_job_on_a_cluster_without_the_share_gets_its_config_and_its_outputs_come_back(ssh_hpc, tmp_path):
    remote = tmp_path / "cluster-scratch"
    remote.mkdir()
    # A copy back at the first look only, then none until the end: the final copy must not be throttled.
    hpc = ssh_hpc(slurm_remote_root=str(remote), slurm_sync_interval=3600)
    job_id = hpc.submit(["sh", "-c", 'echo "root $OPEVA_BASE_DIR"; cat "$OPEVA_CONFIG_PATH"; sleep 2; '
                         'echo \'{"progress": 100}\' > "$OPEVA_BASE_DIR/jobs/$OPEVA_JOB_ID/progress.json"; '
                         'mkdir -p results && echo 42 > results/answer.txt'],
                        config={"steps": 7})
    hpc.wait_status(job_id, "finished")
    there, here = remote / "jobs" / job_id, hpc.root / "jobs" / job_id
    assert "steps: 7" in (there / "config.yaml").read_text()
    assert not (there / "attempts").exists()
    log = hpc.http.get(f"/logs/{job_id}").text
    assert f"root {remote}" in log and "steps: 7" in log
    assert json.loads((here / "progress.json").read_text()) == {"progress": 100}
    assert (here / "results" / "answer.txt").read_text() == "42\n"
    assert hpc.record(job_id)["exit_code"] == 0
