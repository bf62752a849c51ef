"""The process runtime: a job's command as a subprocess of the agent, under a lease guard.

With a lease, the command runs under the guard (``runtimes/guard.py process``),
which leads the attempt's session and process group and kills the group when the
agent's heartbeat stops changing (a frozen or dead agent): see guard.py.
"""

import logging
import os
import shutil
import signal
import subprocess
import sys

from .. import locks
from ..exceptions import RuntimeFailure
from . import guard
from .base import Execution, Runtime

log = logging.getLogger(__name__)


class ProcessExecution(Execution):
    def __init__(self, popen):
        self.popen = popen

    def poll(self):
        return self.popen.poll()

    def describe(self):
        return {"pid": self.popen.pid}

    def _signal(self, signum):
        # The child leads its own process group, so a shell wrapper and its children all get it.
        try:
            os.killpg(self.popen.pid, signum)
        except ProcessLookupError:
            pass

    def signal_stop(self):
        self._signal(signal.SIGTERM)

    def kill(self):
        self._signal(signal.SIGKILL)


class ProcessRuntime(Runtime):
    name = "process"

    def __init__(self, shared_root, lock_dir=""):
        self.job_root = shared_root
        self.lock_dir = lock_dir

    def guard_dir(self, host):
        """Local-disk dir of the attempt locks that guards hold (see guard.reap); per root, so that
        a restarting agent of another deployment on this machine never reaps this one's jobs."""
        return locks.local_lock_path(self.lock_dir, self.job_root, host, "attempts")

    def start(self, launch):
        env = dict(os.environ)
        env.update(launch.env)
        argv = launch.argv()
        if not argv:
            raise RuntimeFailure("bad_command", "the job's command is empty")
        # Checked here because under a guard the exec happens in the guard's child, too late to refuse.
        if shutil.which(argv[0], path=env.get("PATH")) is None:
            raise RuntimeFailure("bad_command", f"cannot run {argv[0]!r}: not found or not executable")
        if launch.lease is not None:
            lease = launch.lease
            lock = os.path.join(self.guard_dir(launch.host), f"{launch.job_id}.{launch.attempt}.lock")
            # Run as an isolated script, not with -m: the process form needs only the standard library,
            # so the job's environment stays exactly what was asked for (no PYTHONPATH of ours).
            argv = [sys.executable, "-I", guard.__file__, "process",
                    "--heartbeat", lease.heartbeat_path, "--lease", str(lease.seconds),
                    "--grace", str(lease.grace), "--lock", lock, "--", *argv]
        with open(launch.log_path, "ab") as log:
            try:
                popen = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                raise RuntimeFailure("bad_command", f"cannot run {argv[0]!r}: {exc.strerror}") from None
        return ProcessExecution(popen)

    def adopt(self, host, current=None):
        # A process attempt cannot be re-attached (it was the dead agent's child): make sure
        # none still runs before the agent requeues them, or the next attempt would overlap it.
        try:
            killed = guard.reap(self.guard_dir(host))
        except TimeoutError as exc:
            # Unsure whether it still runs: the agent retries recovery rather than requeue it.
            raise RuntimeFailure("reap_failed", str(exc)) from None
        if killed:
            log.warning("killed attempts left running by the previous agent of %s: %s", host, killed)
        return {}
