"""The interface every runtime implements, so the agent never knows which one it drives.

An agent hands a runtime a ``Launch`` (everything needed to start one attempt of a
job) and gets back a ``Execution`` it can poll, signal and wait on. A runtime owns
how output reaches the attempt's log file: the process runtime points the child's
stdout/stderr at it, the Docker runtime streams the container's output into it. It
also owns what a job runs when its spec names no command (``default_command``).
"""

from __future__ import annotations

import abc
import shlex
import subprocess
import time
from dataclasses import dataclass

from .. import fsio
from ..exceptions import RuntimeFailure
from ..jobs import JobFolder
from ..states import EndReason, JobState


def open_log(log_path: str):
    """The job's log (``jobs/<id>/logs/<id>.log``) opened for appending, never through a link
    the job planted there (an OSError instead): runtimes write it as the agent's user."""
    return fsio.append_inside(log_path, JobFolder.of_log(log_path).path)

@dataclass
class Lease:
    """What a guard needs to end an attempt once its agent stops renewing the heartbeat (see guard.py)."""

    heartbeat_path: str
    seconds: float  # no heartbeat change for this long: SIGTERM
    grace: float  # then SIGKILL this much later; seconds + grace stays well under offline_after
    agent_id: str = ""


@dataclass
class Launch:
    job_id: str
    attempt: int
    host: str
    command: str | list[str]  # a string (split like a shell would, never run by one) or a list, run as given
    env: dict[str, str]
    log_path: str  # the file on the share that this attempt appends its output to
    image: str = ""  # the job's own image; empty: the runtime's default (Docker only)
    gpus: tuple[str, ...] = ()  # the specific GPU ids the agent assigned to this attempt
    lease: Lease | None = None  # None: no guard (a runtime used on its own, as in its tests)
    resources: dict | None = None  # the spec's {cpus, mem, time}, for a batch scheduler (slurm)

    def argv(self) -> list[str]:
        if isinstance(self.command, str):
            return shlex.split(self.command)
        return [str(part) for part in self.command]


class Execution(abc.ABC):
    """One running attempt of a job."""

    @abc.abstractmethod
    def poll(self) -> int | None:
        """The exit code once it has ended, else None. Never blocks."""

    @abc.abstractmethod
    def signal_stop(self) -> None:
        """Ask it to end (SIGTERM)."""

    @abc.abstractmethod
    def kill(self) -> None:
        """End it now (SIGKILL)."""

    def describe(self) -> dict:
        """Facts for the attempt record and job-info (a pid, a container id and name)."""
        return {}

    def begin(self) -> None:  # noqa: B027 (a hook: only executions started on hold need it)
        """Let it run: called once its attempt record (with ``describe()``) is on disk. A runtime that
        starts jobs on hold (Slurm) releases them here, so a crash never leaves a running job unrecorded."""

    def facts(self) -> dict:
        """What the attempt record should say about it now besides its state (a cluster's queue state);
        the runner writes them when they change."""
        return {}

    def changed(self) -> bool:
        """Whether a look (poll, facts) may find something new; a detached runtime's runners look only then."""
        return True

    def outcome(self) -> tuple[JobState, EndReason, str] | None:
        """(state, reason, error) once it ended, when the runtime knows more than the exit code (a cluster's
        TIMEOUT, a cancel by its operator); None: judge by the exit code."""
        return None

    def release(self) -> None:  # noqa: B027 (a hook: only some executions hold something)
        """Free what the runtime holds for it (log streams, container); called once it ended."""

    def detach(self) -> None:  # noqa: B027 (a hook: only executions that survive the agent need it)
        """Let go of it while it keeps running (the agent is shutting down and will adopt it)."""

    def wait(self, timeout: float) -> int | None:
        """Poll until it ends or ``timeout`` seconds pass; the exit code or None."""
        deadline = time.monotonic() + timeout
        while True:
            code = self.poll()
            if code is not None or time.monotonic() >= deadline:
                return code
            time.sleep(0.05)

    def stop(self, grace: float) -> int | None:
        """SIGTERM, up to ``grace`` seconds, then SIGKILL; returns the exit code."""
        self.signal_stop()
        code = self.wait(grace)
        if code is None:
            self.kill()
            code = self.wait(30)
        return code


class Runtime(abc.ABC):
    name = "base"
    #: True if executions outlive the agent process and ``adopt`` can re-attach to them.
    survives_agent = False
    #: Where the shared root appears to the job (``{config_path}`` in commands is under it).
    job_root = ""
    #: What a job without a command of its own runs: a ``str.format`` template of ``template_fields``.
    command_template = ""
    #: True if something else (a Slurm cluster) ends its jobs: no lease guard can fence them, so the agent
    #: does not stop them when its lease lapses and the server does not requeue them when the host goes
    #: offline before their time limit has passed (hosts.LivenessMonitor).
    detached = False
    #: How often a runner looks at an execution and its stop request; None: the agent's own default.
    poll_seconds: float | None = None

    @abc.abstractmethod
    def start(self, launch: Launch) -> Execution:
        """Start one attempt; returns an Execution. Raises RuntimeFailure if it cannot start."""

    def job_root_for(self, image: str) -> str:
        """Where the shared root appears to a job with this image ("" for none); ``job_root`` unless a
        runtime runs some jobs in a container and others not (slurm)."""
        return self.job_root

    def template_fields(self, job_id: str, config_path: str, config_file: str) -> dict[str, str]:
        """The names a command template may use; a runtime adds its own."""
        return {"job_id": job_id, "config_path": config_path, "config_file": config_file}

    def default_command(self, job_id: str, config_path: str, config_file: str) -> str:
        """The command template filled in for one job; a template naming an unknown field is a bad command."""
        fields = self.template_fields(job_id, config_path, config_file)
        try:
            return self.command_template.format(**fields)
        except (KeyError, IndexError, ValueError) as exc:
            usable = ", ".join(f"{{{name}}}" for name in fields)
            detail = f"the {self.name} command template {self.command_template!r} cannot be filled in ({exc!r}); " \
                     f"it may use {usable}"
            raise RuntimeFailure(EndReason.BAD_COMMAND, detail) from None

    def adopt(self, host: str, current: set[tuple[str, int]] | None = None) -> dict[tuple[str, int], Execution]:
        """Executions of this host left by an earlier incarnation of the agent.

        Returns ``{(job_id, attempt): Execution}``. With ``current`` (a set of such keys),
        executions of other attempts are ended and removed instead, without touching
        their logs: those files may already belong to the job's next attempt. A runtime
        that cannot re-attach makes sure none of them still runs and returns {}; the
        agent then requeues or fails those attempts.
        """
        return {}

    def guard_host(self, host: str, lease: Lease) -> subprocess.Popen | None:
        """Start whatever outlives a frozen agent to end this host's jobs when ``lease`` lapses.

        Returns a Popen-like object or None (a runtime that guards each attempt instead).
        """
        return None

    def check(self) -> str | None:
        """None if the runtime is usable, else a sentence saying why not (for /health)."""
        return None
