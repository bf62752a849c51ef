"""The interface every runtime implements, so the agent never knows which one it drives.

An agent hands a runtime a ``Launch`` (everything needed to start one attempt of a
job) and gets back a ``Execution`` it can poll, signal and wait on. A runtime owns
how output reaches the attempt's log file: the process runtime points the child's
stdout/stderr at it, the Docker runtime streams the container's output into it.
"""

import abc
import shlex
import time
from dataclasses import dataclass, field


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
    command: object  # a string (split like a shell would, never run by one) or a list, run as given
    env: dict
    log_path: str  # the file on the share that this attempt appends its output to
    image: str = ""
    gpus: tuple = ()  # the specific GPU ids the agent assigned to this attempt
    labels: dict = field(default_factory=dict)
    lease: Lease = None  # None: no guard (a runtime used on its own, as in its tests)

    def argv(self):
        if isinstance(self.command, str):
            return shlex.split(self.command)
        return [str(part) for part in self.command]


class Execution(abc.ABC):
    """One running attempt of a job."""

    @abc.abstractmethod
    def poll(self):
        """The exit code once it has ended, else None. Never blocks."""

    @abc.abstractmethod
    def signal_stop(self):
        """Ask it to end (SIGTERM)."""

    @abc.abstractmethod
    def kill(self):
        """End it now (SIGKILL)."""

    def describe(self):
        """Facts for the attempt record and job-info (a pid, a container id and name)."""
        return {}

    def release(self):
        """Free what the runtime holds for it (log streams, container); called once it ended."""

    def detach(self):
        """Let go of it while it keeps running (the agent is shutting down and will adopt it)."""

    def wait(self, timeout):
        """Poll until it ends or ``timeout`` seconds pass; the exit code or None."""
        deadline = time.monotonic() + timeout
        while True:
            code = self.poll()
            if code is not None or time.monotonic() >= deadline:
                return code
            time.sleep(0.05)

    def stop(self, grace):
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

    @abc.abstractmethod
    def start(self, launch):
        """Start one attempt; returns an Execution. Raises RuntimeFailure if it cannot start."""

    def adopt(self, host, current=None):
        """Executions of this host left by an earlier incarnation of the agent.

        Returns ``{(job_id, attempt): Execution}``. With ``current`` (a set of such keys),
        executions of other attempts are ended and removed instead, without touching
        their logs: those files may already belong to the job's next attempt. A runtime
        that cannot re-attach makes sure none of them still runs and returns {}; the
        agent then requeues or fails those attempts.
        """
        return {}

    def guard_host(self, host, lease):
        """Start whatever outlives a frozen agent to end this host's jobs when ``lease`` lapses.

        Returns a Popen-like object or None (a runtime that guards each attempt instead).
        """
        return None

    def check(self):
        """None if the runtime is usable, else a sentence saying why not (for /health)."""
        return None

    def close(self):
        pass
