"""The process runtime: a job's command as a subprocess of the agent, under a lease guard.

With a lease, the command runs under the guard (``runtimes/guard.py process``),
which leads the attempt's session and process group and kills the group when the
agent's heartbeat stops changing (a frozen or dead agent): see guard.py.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys

from .. import locks
from ..exceptions import RuntimeFailure
from ..settings import Settings
from ..states import EndReason
from . import guard
from .base import Execution, Launch, Runtime, open_log

log = logging.getLogger(__name__)


class ProcessExecution(Execution):
    def __init__(self, popen: subprocess.Popen):
        self.popen = popen

    def poll(self) -> int | None:
        return self.popen.poll()

    def describe(self) -> dict:
        return {"pid": self.popen.pid}

    def _signal(self, signum: int) -> None:
        # The child leads its own process group, so a shell wrapper and its children all get it.
        try:
            os.killpg(self.popen.pid, signum)
        except ProcessLookupError:
            pass

    def signal_stop(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)


class ProcessRuntime(Runtime):
    name = "process"

    def __init__(self, settings: Settings):
        self.job_root = settings.shared_root
        self.command_template = settings.process_command
        self.lock_dir = settings.lock_dir

    def template_fields(self, job_id: str, config_path: str, config_file: str) -> dict[str, str]:
        return {**super().template_fields(job_id, config_path, config_file), "python": sys.executable}

    def guard_dir(self, host: str) -> str:
        """Local-disk dir of the attempt locks that guards hold (see guard.reap); per root, so that
        a restarting agent of another deployment on this machine never reaps this one's jobs."""
        return locks.local_lock_path(self.lock_dir, self.job_root, host, "attempts")

    def start(self, launch: Launch) -> ProcessExecution:
        env = dict(os.environ)
        env.update(launch.env)
        argv = launch.argv()
        if not argv:
            raise RuntimeFailure(EndReason.BAD_COMMAND, "the job's command is empty")
        # Checked here because under a guard the exec happens in the guard's child, too late to refuse.
        if shutil.which(argv[0], path=env.get("PATH")) is None:
            raise RuntimeFailure(EndReason.BAD_COMMAND, f"cannot run {argv[0]!r}: not found or not executable")
        if launch.lease is not None:
            lease = launch.lease
            lock = os.path.join(self.guard_dir(launch.host), f"{launch.job_id}.{launch.attempt}.lock")
            # Run as an isolated script, not with -m: the process form needs only the standard library,
            # so the job's environment stays exactly what was asked for (no PYTHONPATH of ours).
            argv = [sys.executable, "-I", guard.__file__, "process",
                    "--heartbeat", lease.heartbeat_path, "--lease", str(lease.seconds),
                    "--grace", str(lease.grace), "--lock", lock, "--", *argv]
        try:
            log_file = open_log(launch.log_path)
        except OSError as exc:
            raise RuntimeFailure(EndReason.START_FAILED, f"cannot open the job's log: {exc.strerror}") from None
        with log_file as log:
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
                raise RuntimeFailure(EndReason.BAD_COMMAND, f"cannot run {argv[0]!r}: {exc.strerror}") from None
        return ProcessExecution(popen)

    def adopt(self, host: str, current: set[tuple[str, int]] | None = None) -> dict:
        # A process attempt cannot be re-attached (it was the dead agent's child): make sure
        # none still runs before the agent requeues them, or the next attempt would overlap it.
        try:
            killed = guard.reap(self.guard_dir(host))
        except TimeoutError as exc:
            # Unsure whether it still runs: the agent retries recovery rather than requeue it.
            raise RuntimeFailure(EndReason.REAP_FAILED, str(exc)) from None
        if killed:
            log.warning("killed attempts left running by the previous agent of %s: %s", host, killed)
        return {}
