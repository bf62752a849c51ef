"""The process runtime: a job's command as a subprocess of the agent."""

import os
import signal
import subprocess

from ..exceptions import RuntimeFailure
from .base import Execution, Runtime


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

    def __init__(self, shared_root):
        self.job_root = shared_root

    def start(self, launch):
        env = dict(os.environ)
        env.update(launch.env)
        argv = launch.argv()
        if not argv:
            raise RuntimeFailure("bad_command", "the job's command is empty")
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
