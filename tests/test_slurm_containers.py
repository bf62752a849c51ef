"""Container images on a Slurm cluster (opeva_spool/runtimes/slurm_containers.py).

The argv building is pure (core). The Charliecloud case runs for real: a directory image made of
Debian's static busybox, run by ch-run inside a Slurm job, with the share bound at /data.
"""

import os
import shlex
import shutil
import subprocess
import uuid

import pytest

from opeva_spool.exceptions import RuntimeFailure
from opeva_spool.runtimes.slurm_cluster import ClusterPhase, LocalCluster
from opeva_spool.runtimes.slurm_containers import WITH_USER, container_argv, probe_engines
from opeva_spool.states import EndReason

from .conftest import wait_for
from .test_slurm_runtime import Hpc

BUSYBOX = "/bin/busybox"  # Debian's busybox-static: one static binary, so it runs in an empty tree
APPLETS = ("sh", "cat", "echo", "id", "env", "ls")


# ----- argv (pure) -----------------------------------------------------------------------------------

def test_a_directory_image_runs_under_charliecloud_with_the_share_bound_at_the_job_root():
    argv = container_argv("/images/sim/", ["python", "run.py", "--config", "/data/jobs/a/config.yaml"],
                          "/scratch/opeva", "/data", engines={"ch-run"})
    assert argv == ["sh", "-c", WITH_USER, "sh", "ch-run", "--bind", "/scratch/opeva:/data", "/images/sim", "--",
                    "python", "run.py", "--config", "/data/jobs/a/config.yaml"]


def test_charliecloud_gets_user_set_from_the_job_when_slurm_left_it_out(tmp_path):
    # The wrapper alone, with a stand-in for ch-run that prints what it was given.
    probe = ["sh", "-c", 'echo "$USER|$*"', "fake-ch-run"]
    done = subprocess.run(["sh", "-c", WITH_USER, "sh", *probe, "a b", "c"], env={"PATH": os.environ["PATH"]},
                          capture_output=True, text=True, check=True)
    assert done.stdout == f"{subprocess.run(['id', '-un'], capture_output=True, text=True).stdout.strip()}|a b c\n"
    kept = subprocess.run(["sh", "-c", WITH_USER, "sh", *probe], env={"PATH": os.environ["PATH"], "USER": "ada"},
                          capture_output=True, text=True, check=True)
    assert kept.stdout == "ada|\n"


@pytest.mark.parametrize("engines, tool", [({"apptainer", "singularity"}, "apptainer"),
                                           ({"singularity", "ch-run"}, "singularity"), (None, "apptainer")])
def test_a_sif_file_runs_under_apptainer_or_singularity(engines, tool):
    argv = container_argv("/images/sim.sif", ["train", "--fast"], "/scratch/opeva/", "/data", engines=engines)
    assert argv == [tool, "exec", "--bind", "/scratch/opeva:/data", "/images/sim.sif", "train", "--fast"]


@pytest.mark.parametrize("image, engines, says", [
    ("/images/sim.sif", {"ch-run"}, "it runs a Charliecloud image directory (an absolute path on the cluster)"),
    ("/images/sim", {"apptainer"}, "it runs an Apptainer/Singularity image file (an absolute path ending in .sif)"),
    ("opeva-simulator:latest", {"ch-run", "apptainer"}, "it runs a Charliecloud image directory (an absolute path "
     "on the cluster) or an Apptainer/Singularity image file (an absolute path ending in .sif)"),
    ("images/sim", None, "Charliecloud image directory"),
    ("/images/sim", set(), "it has no container tool (ch-run, apptainer, singularity); run a plain command instead"),
])
def test_an_image_the_cluster_cannot_run_is_refused_naming_what_it_can(image, engines, says):
    with pytest.raises(RuntimeFailure) as refused:
        container_argv(image, ["train"], "/scratch/opeva", "/data", engines=engines)
    assert refused.value.reason == EndReason.IMAGE_MISSING
    assert refused.value.detail.startswith(f"the Slurm cluster cannot run the image {image!r}: ")
    assert says in refused.value.detail


# ----- a real Charliecloud job -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def busybox_image(tmp_path_factory):
    """A Charliecloud directory image: static busybox, its applets, /data to bind the share on."""
    if not shutil.which("ch-run") or not os.path.isfile(BUSYBOX):
        pytest.skip("needs Charliecloud (charliecloud-runtime) and busybox-static")
    image = tmp_path_factory.mktemp("image") / "busybox"
    for folder in ("bin", "data", "dev", "etc", "home", "proc", "sys", "tmp"):
        (image / folder).mkdir(parents=True)
    shutil.copy(BUSYBOX, image / "bin" / "busybox")
    for applet in APPLETS:
        os.symlink("busybox", image / "bin" / applet)
    (image / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (image / "etc" / "group").write_text("root:x:0:\n")
    for name in ("hosts", "resolv.conf"):
        (image / "etc" / name).write_text("")
    return str(image)


@pytest.mark.slurm
def test_a_charliecloud_job_runs_at_the_cluster_and_writes_into_the_share_at_data(slurm_cluster, busybox_image,
                                                                                 tmp_path):
    cluster = LocalCluster(slurm_cluster.conf)
    assert "ch-run" in probe_engines(cluster)
    share, job_id = tmp_path / "share", f"ch-{uuid.uuid4().hex[:8]}"
    (share / "jobs" / job_id).mkdir(parents=True)
    (share / "jobs" / job_id / "config.yaml").write_text("steps: 3\n")
    inside = ["/bin/sh", "-c", 'cat /data/jobs/$OPEVA_JOB_ID/config.yaml > /data/jobs/$OPEVA_JOB_ID/seen.txt; '
              'ls / > /data/jobs/$OPEVA_JOB_ID/root.txt']
    argv = container_argv(busybox_image, inside, str(share), "/data", engines=probe_engines(cluster))
    # --export=NONE: the job starts without our environment (no $USER either), as the slurm runtime submits it.
    script = f"#!/bin/sh\nexport OPEVA_JOB_ID={job_id}\nexec {shlex.join(argv)}\n"
    slurm_id = cluster.submit(script, job_name=f"opeva-{job_id}-1", hold=False,
                              options=["--export=NONE", "--chdir", str(tmp_path),
                                       "--output", str(tmp_path / "job.log")])
    try:
        ended = wait_for(lambda: (job := cluster.states([slurm_id]).get(slurm_id)) and job.phase.ended and job,
                         20, interval=0.2, message=f"Charliecloud job {slurm_id} to end")
    finally:
        cluster.cancel(slurm_id)
    log = (tmp_path / "job.log").read_text()
    assert (ended.phase, ended.exit_code) == (ClusterPhase.FINISHED, 0), log
    assert (share / "jobs" / job_id / "seen.txt").read_text() == "steps: 3\n"
    # The image's own tree, not the node's: busybox's bin, no /usr.
    assert "usr" not in (share / "jobs" / job_id / "root.txt").read_text().split()


@pytest.mark.slurm
def test_a_charliecloud_job_submitted_through_the_api_runs_in_its_image_with_the_share_at_data(
        slurm_cluster, busybox_image, tmp_path):
    hpc = Hpc(slurm_cluster, tmp_path)
    try:
        hpc.start_agent()
        job_id = hpc.submit(["/bin/sh", "-c", 'echo "config at $OPEVA_CONFIG_PATH"; cat "$OPEVA_CONFIG_PATH"; '
                             'ls /; echo done > /data/jobs/$OPEVA_JOB_ID/out.txt'],
                            image=busybox_image, config={"steps": 5})
        hpc.wait_status(job_id, "finished")
        log = hpc.http.get(f"/logs/{job_id}").text
        assert f"config at /data/jobs/{job_id}/config.yaml" in log and "steps: 5" in log
        assert "usr" not in log.split()  # the image's root, not the node's
        assert (hpc.root / "jobs" / job_id / "out.txt").read_text() == "done\n"
        assert "ch-run --bind" in (hpc.root / "jobs" / job_id / "slurm" / "attempt-1.sh").read_text()

        refused = hpc.submit(["true"], image="/images/sim.sif")  # no Apptainer on this cluster
        hpc.wait_status(refused, "failed")
        info = hpc.info(refused)
        assert info["reason"] == "image_missing"
        assert "it runs a Charliecloud image directory" in hpc.record(refused)["error"]
    finally:
        hpc.close()
