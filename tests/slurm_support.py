"""Session fixtures for tests that need a real Slurm cluster (Debian's Slurm 22.05, one node, loopback).

The cluster is the one ``SLURM_CONF`` names (CI starts it with ``.ci/slurm.sh``). Without one,
CI fails; elsewhere the fixture starts a private cluster for the session with the same script
functions when it can (the Debian packages present, running as root) and skips otherwise.
Either way one throw-away job runs first: the controller's first scheduling pass comes 2-3 s
after it starts, and no test should pay for that in its own deadline.
"""

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass

import pytest

SLURM_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".ci", "slurm.sh")
SLURM_PROGRAMS = ("slurmctld", "slurmd", "munged", "sbatch", "squeue")
ACCOUNTING_PROGRAMS = ("slurmdbd", "mariadbd", "mariadb-install-db", "sacct")  # for SLURM_ACCOUNTING=1
WARM_UP_TIMEOUT = 20.0  # seconds for the throw-away first job to end


@dataclass(frozen=True)
class SlurmTestCluster:
    conf: str  # its slurm.conf: what SLURM_CONF must name for every client call
    private_dir: str = ""  # the scratch dir of a cluster this session started, else empty

    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": self.conf}

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        """A Slurm client command against this cluster (bounded: a client blocks long without a controller)."""
        return subprocess.run(argv, env=self.env(), capture_output=True, text=True, timeout=30, check=check)


def _unavailable(why):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why} (CI must provide it)")
    pytest.skip(why)


def _script(function: str, directory: str, env: dict[str, str] | None = None) -> None:
    """Run one function of .ci/slurm.sh on directory; fail the test with its output if it fails."""
    done = subprocess.run(["bash", "-c", f'source "$0" && {function} "$1"', SLURM_SCRIPT, directory],
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=120)
    if done.returncode:
        pytest.fail(f"{function} {directory} failed ({done.returncode}): {done.stdout}{done.stderr}")


@contextlib.contextmanager
def private_cluster(**knobs: str):
    """A cluster of its own in a scratch dir, stopped (jobs cancelled, daemons ended) on exit.

    knobs are .ci/slurm.sh's environment settings, e.g. SLURM_MIN_JOB_AGE="2", SLURM_ACCOUNTING="1".
    """
    programs = SLURM_PROGRAMS + (ACCOUNTING_PROGRAMS if knobs.get("SLURM_ACCOUNTING") == "1" else ())
    missing = [name for name in programs if not shutil.which(name)]
    if missing or os.geteuid() != 0:
        _unavailable(f"a private Slurm cluster needs root and the Debian packages of .ci/slurm.sh "
                     f"(missing: {' '.join(missing) or 'root'})")
    # Short dir: the munge socket path in it must fit the 108-byte limit of unix socket names.
    directory = tempfile.mkdtemp(prefix="sl", dir="/tmp")
    try:
        _script("slurm_up", directory, knobs)
        yield SlurmTestCluster(conf=os.path.join(directory, "slurm.conf"), private_dir=directory)
    finally:
        _script("slurm_down", directory)


def warm_up(cluster: SlurmTestCluster) -> None:
    """Run one throw-away job to its end, so the first scheduling pass is behind us."""
    job = cluster.run("sbatch", "--parsable", "--job-name", "warm-up", "--output", "/dev/null",
                      "--wrap", "true").stdout.strip().split(";")[0]
    deadline = time.monotonic() + WARM_UP_TIMEOUT
    while time.monotonic() < deadline:
        state = cluster.run("squeue", "-h", "-t", "all", "-j", job, "-o", "%T", check=False).stdout.strip()
        if state not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING"):
            return
        time.sleep(0.1)
    pytest.fail(f"the warm-up job {job} did not end within {WARM_UP_TIMEOUT:.0f} s")


@pytest.fixture(scope="session")
def slurm_cluster():
    """A SlurmTestCluster that has run one job already: CI's (SLURM_CONF) or a private one for the session."""
    conf = os.environ.get("SLURM_CONF")
    if conf:
        cluster = SlurmTestCluster(conf=conf)
        answer = cluster.run("sinfo", "-h", "-o", "%T", check=False)
        if answer.returncode:
            _unavailable(f"the Slurm cluster of SLURM_CONF={conf} does not answer: {answer.stderr.strip()}")
        warm_up(cluster)
        yield cluster
        return
    if os.environ.get("CI") == "true":
        _unavailable("SLURM_CONF is not set")
    with private_cluster() as cluster:
        warm_up(cluster)
        yield cluster
