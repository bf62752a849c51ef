"""Copying job folders to and from a cluster that does not mount the share (SSH mode with ``slurm_remote_root``).

The runtime calls ``push(job_id)`` before it submits an attempt (the config snapshot goes in)
and ``pull(job_id)`` on every poll (throttled here to one copy per ``slurm_sync_interval``) and
``pull(job_id, final=True)`` once the job has ended. Both are rsync over the cluster's own SSH
connection (its ControlMaster): no second login, no second set of credentials.

What travels where, and why:
- in: the whole ``jobs/<id>/`` folder but ``attempts/`` (the agent's records mean nothing there);
- back: ``logs/`` appended (``--append``: Slurm only appends to the log, and a follower of
  ``/logs?follow=1`` keeps reading the same file), everything else replaced file by file
  (rsync writes a temporary and renames it: a reader never sees half a ``progress.json``),
  never ``job_info.json``, ``config.yaml`` or ``attempts/`` (the server's and the agent's), never
  deleting anything here, and never a symbolic link: the job writes the remote folder and could
  otherwise aim a link at any file of this machine for a later copy to write through.
"""

from __future__ import annotations

import posixpath
import shlex
import subprocess
import threading
import time

from ..exceptions import SettingsError
from ..settings import Settings
from ..states import EndReason
from .slurm_cluster import Cluster, ClusterError, SshCluster

SYNC_TIMEOUT = 300.0  # seconds for one rsync: a first copy of a big results folder takes a while
OWNED_HERE = ("/job_info.json", "/config.yaml", "/attempts/")  # rsync patterns anchored at jobs/<id>/
LOG_DIR = "logs"
RSYNC_VANISHED = 24  # files vanished while copied (the job removed a temporary): the rest was copied
# -r -t: contents and times, not owners or modes (the agent's user owns what it copies); --no-links: see above.
RSYNC_OPTIONS = ("--recursive", "--times", "--no-links", "--protect-args")


class JobSync:
    """rsync of ``jobs/<id>/`` between the share here (``local_root``) and ``remote_root`` on the login node."""

    def __init__(self, cluster: SshCluster, local_root: str, remote_root: str, interval: float) -> None:
        self.cluster = cluster
        self.local_root = local_root
        self.remote_root = remote_root
        self.interval = interval
        self._last_pull: dict[str, float] = {}  # job id -> monotonic time of its last copy back
        self._lock = threading.Lock()  # executions poll from the agent's threads

    def local_dir(self, job_id: str) -> str:
        return f"{self.local_root.rstrip('/')}/jobs/{job_id}/"

    def remote_dir(self, job_id: str) -> str:
        return posixpath.join(self.remote_root, "jobs", job_id) + "/"

    def push(self, job_id: str) -> None:
        """Copy the job's folder to the cluster (before sbatch: the script's --output folder must exist there too)."""
        remote = self.remote_dir(job_id)
        made = self.cluster.run(["mkdir", "-p", "--", posixpath.join(remote, LOG_DIR)])
        if made.returncode:
            raise ClusterError(EndReason.ENGINE_ERROR, ["mkdir"], f"cannot make {remote} on "
                               f"{self.cluster.destination}: {made.stderr.strip()}")
        self._rsync(["--exclude=/attempts/"], self.local_dir(job_id), self._remote(remote))

    def pull(self, job_id: str, *, final: bool = False) -> bool:
        """Copy what the job wrote on the cluster back here; at most once per interval unless ``final``.

        True when it copied. ``final`` (after the job ended) always copies and forgets the job.
        """
        now = time.monotonic()
        with self._lock:
            last = self._last_pull.get(job_id)
            if not final and last is not None and now - last < self.interval:
                return False
            if final:
                self._last_pull.pop(job_id, None)
            else:
                self._last_pull[job_id] = now
        remote, local = self.remote_dir(job_id), self.local_dir(job_id)
        excludes = [f"--exclude={pattern}" for pattern in (*OWNED_HERE, f"/{LOG_DIR}/")]
        self._rsync(excludes, self._remote(remote), local)
        self._rsync(["--append"], self._remote(posixpath.join(remote, LOG_DIR) + "/"), f"{local}{LOG_DIR}/")
        return True

    def _remote(self, path: str) -> str:
        return f"{self.cluster.destination}:{path}"

    def _rsync(self, options: list[str], source: str, target: str) -> None:
        # rsync splits -e on spaces and honours quotes, so the shlex-quoted ssh command reaches it whole.
        argv = ["rsync", *RSYNC_OPTIONS, "-e", shlex.join(self.cluster.ssh_command()), *options, source, target]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=SYNC_TIMEOUT,
                                  stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise ClusterError(EndReason.ENGINE_UNAVAILABLE, argv, "rsync is not installed on this machine") from None
        except subprocess.TimeoutExpired:
            raise ClusterError(EndReason.ENGINE_UNAVAILABLE, argv, f"no end within {SYNC_TIMEOUT:.0f} s") from None
        if done.returncode not in (0, RSYNC_VANISHED):
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            raise ClusterError(EndReason.ENGINE_ERROR, argv, f"{source} -> {target}: "
                               f"{lines[0] if lines else f'exit code {done.returncode}'}")


def make_sync(settings: Settings, cluster: Cluster) -> JobSync | None:
    """The copier for a cluster that does not see the share (``slurm_remote_root`` set), else None."""
    if not settings.slurm_remote_root:
        return None
    if not isinstance(cluster, SshCluster):
        raise SettingsError("setting 'slurm_remote_root' needs 'slurm_ssh': job folders are copied over its "
                            "SSH connection")
    return JobSync(cluster, settings.shared_root, settings.slurm_remote_root, settings.slurm_sync_interval)
