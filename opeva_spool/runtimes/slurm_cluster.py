"""The transport to a Slurm cluster: submit, release, cancel and query batch jobs with Slurm's own commands.

The ``slurm`` runtime drives a cluster through a ``Cluster``. Every Slurm command is
one argv list run through ``Cluster.run``, the only place that knows *where* commands run:
``LocalCluster`` runs them on this machine (a login node), and ``SshCluster`` runs the same
lists on a login node over SSH; ``make_cluster`` picks one from the settings. Nothing else may
start a Slurm command.

Facts behind the choices (Debian's Slurm 22.05, measured; see docs/slurm.md):
- no pyslurm for 22.05 and no sacct without slurmdbd, so this parses the commands' text output;
- ``squeue --json`` ignores ``-j`` and ``-t`` and returns every job of every user, so ``states``
  asks ``squeue -t all -j <ids>`` with a delimited ``-O`` format: one call for all ids;
- a finished job stays in squeue for ``MinJobAge`` seconds (default 300) and is then purged; after
  that its end is read from accounting (``sacct -P``) when the cluster has it, else from the
  job-completion log (``JobCompType=jobcomp/filetxt``), both located through ``scontrol show config``.
"""

from __future__ import annotations

import abc
import enum
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from ..exceptions import RuntimeFailure
from ..settings import Settings
from ..states import EndReason

SSH_PERSIST = 60  # seconds the shared SSH connection outlives its last command (and an agent killed with -9)
SSH_CONNECT_TIMEOUT = 10  # seconds for the TCP connection and handshake to a login node
SSH_FAILED = 255  # ssh's own exit code: the connection failed, the remote command did not run
COMMAND_NOT_FOUND = 127  # the remote shell's exit code for a program it cannot find
COMMAND_TIMEOUT = 30.0  # seconds for one Slurm command; a client blocks this long when no controller answers
FIELD_SEPARATOR = "|"  # between squeue -O fields; the job name comes last, so it may contain one
SQUEUE_FIELDS = ("JobID", "State", "Reason", "exit_code", "Name")  # exit_code: a raw wait status
SACCT_FIELDS = ("JobID", "State", "Reason", "ExitCode", "JobName")  # ExitCode: "exit:signal"
JOB_ID = re.compile(r"\d+(_\d+)?")  # a job's id, or an array task's (<array job id>_<task>)
# A reply that means "no such job here (any more)": the id never existed or the job was purged.
UNKNOWN_JOB = "Invalid job id specified"
ALREADY_ENDED = "already completing or completed"
# Messages that mean the controller did not answer: the cluster is unavailable, the request was not refused.
UNREACHABLE = ("Unable to contact slurm controller", "Socket timed out", "Zero Bytes were transmitted",
               "Could not establish a configuration source")


class ClusterPhase(str, enum.Enum):
    """Where a Slurm job stands, in our terms."""

    PENDING = "pending"  # waiting at the cluster (the job's ``queued_at_cluster`` detail)
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    STOPPED = "stopped"  # cancelled (scancel: our stop, or an operator's)
    UNKNOWN = "unknown"  # a state this table does not know: keep polling, decide nothing

    def __str__(self):
        return self.value

    @property
    def ended(self) -> bool:
        return self in (ClusterPhase.FINISHED, ClusterPhase.FAILED, ClusterPhase.STOPPED)


# Slurm's job states (slurm.h, job_state_string) and what each means to us. A failed state is also
# the attempt's reason, lower-cased ("timeout", "out_of_memory"), so the user sees Slurm's word.
PHASE_OF_STATE = {
    "PENDING": ClusterPhase.PENDING,
    "CONFIGURING": ClusterPhase.PENDING,  # nodes being booted for it: it has not started
    "REQUEUED": ClusterPhase.PENDING,
    "REQUEUE_HOLD": ClusterPhase.PENDING,
    "REQUEUE_FED": ClusterPhase.PENDING,
    "RESV_DEL_HOLD": ClusterPhase.PENDING,
    "RUNNING": ClusterPhase.RUNNING,
    "COMPLETING": ClusterPhase.RUNNING,  # its processes are ending; the exit code is not final yet
    "SUSPENDED": ClusterPhase.RUNNING,  # started, then paused by an operator or by preemption
    "STOPPED": ClusterPhase.RUNNING,  # SIGSTOPped, still holding its allocation
    "SIGNALING": ClusterPhase.RUNNING,
    "STAGE_OUT": ClusterPhase.RUNNING,
    "RESIZING": ClusterPhase.RUNNING,
    "COMPLETED": ClusterPhase.FINISHED,
    "CANCELLED": ClusterPhase.STOPPED,
    "FAILED": ClusterPhase.FAILED,
    "TIMEOUT": ClusterPhase.FAILED,
    "OUT_OF_MEMORY": ClusterPhase.FAILED,
    "NODE_FAIL": ClusterPhase.FAILED,
    "PREEMPTED": ClusterPhase.FAILED,
    "BOOT_FAIL": ClusterPhase.FAILED,
    "DEADLINE": ClusterPhase.FAILED,
    "SPECIAL_EXIT": ClusterPhase.FAILED,
    "REVOKED": ClusterPhase.FAILED,  # federation: a sibling cluster ran it instead
}


def slurm_state_name(text: str) -> str:
    """Slurm's state word alone: sacct writes "CANCELLED by 0", scontrol may add flags after a '+'."""
    words = text.split()
    return re.split(r"[^A-Z_]", words[0].upper())[0] if words else ""


def map_state(slurm_state: str) -> tuple[ClusterPhase, str]:
    """Our phase of a Slurm job state, and the reason to record when it failed ("" otherwise)."""
    name = slurm_state_name(slurm_state)
    phase = PHASE_OF_STATE.get(name, ClusterPhase.UNKNOWN)
    return phase, (name.lower() if phase is ClusterPhase.FAILED else "")


def decode_wait_status(raw: int) -> tuple[int, int]:
    """(exit code, signal) of a raw wait() status, as squeue's exit_code gives it (768 is exit 3)."""
    if os.WIFEXITED(raw):
        return os.WEXITSTATUS(raw), 0
    return 0, os.WTERMSIG(raw)


def parse_exit_pair(text: str) -> tuple[int, int]:
    """(exit code, signal) of Slurm's "exit:signal" text (sacct, scontrol, the jobcomp log)."""
    code, _, signal = text.partition(":")
    return int(code or 0), int(signal or 0)


@dataclass(frozen=True)
class ClusterJob:
    """One Slurm job as the cluster reports it."""

    slurm_id: str
    name: str
    state: str  # Slurm's state word: PENDING, RUNNING, FAILED, ...
    reason: str = ""  # Slurm's reason for the state ("Resources", "NonZeroExitCode"); "" for none
    exit_code: int | None = None  # the batch script's exit code once it ended, else None
    signal: int | None = None  # the signal that ended it (0: none) once it ended, else None
    position: int | None = None  # 1 = next to start among its partition's pending jobs; only when asked
    source: str = "squeue"  # where this came from: squeue, sacct or jobcomp

    @property
    def phase(self) -> ClusterPhase:
        return map_state(self.state)[0]

    @property
    def failure_reason(self) -> str:
        return map_state(self.state)[1]


class ClusterError(RuntimeFailure):
    """A Slurm command failed; ``message`` is Slurm's own words ("More processors requested than permitted").

    ``reason`` says what kind: ``engine_unavailable`` when the controller did not answer (try again
    later), ``start_failed`` when sbatch refused the job (it never will run), ``engine_error`` else.
    """

    def __init__(self, reason: EndReason, argv: Sequence[str], message: str) -> None:
        super().__init__(reason, f"{argv[0]}: {message}")
        self.argv = list(argv)
        self.message = message


def slurm_message(stderr: str) -> str:
    """Slurm's own reason from a client's stderr: the last error line, without the client's prefixes."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if not lines:
        return "failed without a message"
    last = re.sub(r"^\S+: (error|fatal): ", "", lines[-1])
    return last.removeprefix("Batch job submission failed: ")


class Cluster(abc.ABC):
    """A Slurm cluster reached through its client commands; subclasses say where the commands run."""

    def __init__(self, timeout: float = COMMAND_TIMEOUT) -> None:
        self.timeout = timeout
        self._config: dict[str, str] | None = None

    @abc.abstractmethod
    def run(self, argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess:
        """Run one command (an argv list, never a shell string) where the cluster's clients are.

        Returns the finished process (text output); raises ClusterError(engine_unavailable) when
        the command cannot be run or does not end within ``self.timeout``.
        """

    def _checked(self, argv: Sequence[str], stdin: str | None = None, *,
                 failure: EndReason = EndReason.ENGINE_ERROR) -> subprocess.CompletedProcess:
        """run, raising ClusterError with Slurm's message when the command failed."""
        done = self.run(argv, stdin)
        if done.returncode:
            raise self._error(argv, done, failure)
        return done

    @staticmethod
    def _error(argv: Sequence[str], done: subprocess.CompletedProcess, failure: EndReason) -> ClusterError:
        if any(text in done.stderr for text in UNREACHABLE):
            failure = EndReason.ENGINE_UNAVAILABLE
        return ClusterError(failure, argv, slurm_message(done.stderr))

    # --- jobs -------------------------------------------------------------------------------------

    def submit(self, script: str, *, job_name: str, hold: bool = True, options: Sequence[str] = ()) -> str:
        """Hand a batch script to sbatch; its Slurm job id.

        ``script`` is the script's text when it starts with "#!" (sbatch insists on that line), else
        the path of a script file as the cluster sees it. ``hold`` submits it held: it runs once
        ``release`` is called, so the caller can record the id before the job can start. ``options``
        are sbatch's own arguments (``["--cpus-per-task", "4", "--output", path]``). A job the
        cluster can never run is refused here: ClusterError(start_failed) with Slurm's reason.

        Race: sbatch may time out (ClusterError(engine_unavailable)) after slurmctld queued the job.
        Call ``find`` with the job's name before submitting it again, never resubmit blindly.
        """
        text = script if script.startswith("#!") else None
        argv = ["sbatch", "--parsable", "--job-name", job_name, *(["--hold"] if hold else []), *options]
        if text is None:
            argv.append(script)
        done = self._checked(argv, text, failure=EndReason.START_FAILED)
        return done.stdout.strip().split(";")[0]  # "id" or "id;cluster"

    def release(self, slurm_id: str) -> None:
        """Let a held job start. Releasing a job that is not held (any more) does nothing."""
        self._checked(["scontrol", "release", slurm_id])

    def cancel(self, slurm_id: str, signal: str | None = None) -> None:
        """Cancel a job (Slurm sends SIGTERM, then SIGKILL after its KillWait), or only send it ``signal``.

        A job that has already ended (or was purged) is left as it is.
        """
        argv = ["scancel", slurm_id] if signal is None else ["scancel", f"--signal={signal}", "--full", slurm_id]
        done = self.run(argv)
        if done.returncode and UNKNOWN_JOB not in done.stderr and ALREADY_ENDED not in done.stderr:
            raise self._error(argv, done, EndReason.ENGINE_ERROR)

    def states(self, slurm_ids: Iterable[str], *, positions: bool = False) -> dict[str, ClusterJob]:
        """What the cluster knows of these jobs, by id; an id it knows nothing of (or that is no job id) is left out.

        One squeue call covers every id; only jobs squeue has purged already (older than MinJobAge)
        cost one more call: sacct when the cluster keeps accounting, else the job-completion log.
        ``positions`` costs one more squeue call (over all pending jobs) when some job is pending.
        """
        wanted = [slurm_id for slurm_id in dict.fromkeys(str(slurm_id) for slurm_id in slurm_ids)
                  if JOB_ID.fullmatch(slurm_id)]
        if not wanted:
            return {}
        found = self._squeue(["-j", ",".join(wanted)])
        missing = [slurm_id for slurm_id in wanted if slurm_id not in found]
        if missing and self.has_accounting():
            found.update(self._sacct(["-j", ",".join(missing)]))
            missing = [slurm_id for slurm_id in missing if slurm_id not in found]
        if missing:
            found.update(self._jobcomp("-E", f"^JobId=({'|'.join(missing)}) "))
        if positions and any(job.phase is ClusterPhase.PENDING for job in found.values()):
            found = self._with_positions(found)
        return {slurm_id: found[slurm_id] for slurm_id in wanted if slurm_id in found}

    def find(self, name_prefix: str) -> dict[str, ClusterJob]:
        """This user's jobs whose name starts with ``name_prefix``, by id: those squeue holds and
        those the job-completion log recorded (to adopt an attempt whose id was never recorded)."""
        found = {slurm_id: job for slurm_id, job in self._jobcomp("-F", f" Name={name_prefix}").items()
                 if job.name.startswith(name_prefix)}
        found.update({slurm_id: job for slurm_id, job in self._squeue(["--me"]).items()
                      if job.name.startswith(name_prefix)})
        return found

    # --- the cluster's configuration ----------------------------------------------------------------

    def config(self) -> Mapping[str, str]:
        """``scontrol show config`` as a dict, read once."""
        if self._config is None:
            lines = self._checked(["scontrol", "show", "config"]).stdout.splitlines()
            pairs = (line.split("=", 1) for line in lines if " = " in line)
            self._config = {key.strip(): value.strip() for key, value in pairs}
        return self._config

    def has_accounting(self) -> bool:
        return self.config().get("AccountingStorageType", "accounting_storage/none") != "accounting_storage/none"

    def jobcomp_path(self) -> str:
        """The job-completion log's path, or "" when the cluster keeps none we can read."""
        if self.config().get("JobCompType") != "jobcomp/filetxt":
            return ""
        return self.config().get("JobCompLoc", "")

    # --- readers ------------------------------------------------------------------------------------

    def _squeue(self, selection: Sequence[str]) -> dict[str, ClusterJob]:
        fields = ",".join(f"{field}:{FIELD_SEPARATOR}" for field in SQUEUE_FIELDS)
        argv = ["squeue", "--noheader", "--states=all", f"--Format={fields}", *selection]
        done = self.run(argv)
        if done.returncode:
            if UNKNOWN_JOB in done.stderr:  # every id asked for is unknown (one known id and it answers 0)
                return {}
            raise self._error(argv, done, EndReason.ENGINE_ERROR)
        jobs = {}
        for line in done.stdout.splitlines():
            slurm_id, state, reason, raw, name = line.split(FIELD_SEPARATOR, 4)
            ended = map_state(state)[0].ended
            code, signal = decode_wait_status(int(raw or 0)) if ended else (None, None)
            # -O pads nothing here, but the name field ends with its own separator: drop it.
            jobs[slurm_id] = ClusterJob(slurm_id, name.removesuffix(FIELD_SEPARATOR), state,
                                        "" if reason == "None" else reason, code, signal)
        return jobs

    def _sacct(self, selection: Sequence[str]) -> dict[str, ClusterJob]:
        # -X: the job's own line, not one per step. Never --json: 22.05 reports return_code 0 for failed jobs.
        argv = ["sacct", "--noheader", "--parsable2", "--allocations", f"--format={','.join(SACCT_FIELDS)}",
                *selection]
        jobs = {}
        for line in self._checked(argv).stdout.splitlines():
            slurm_id, state, reason, exit_pair, name = line.split("|", 4)
            ended = map_state(state)[0].ended
            code, signal = parse_exit_pair(exit_pair) if ended else (None, None)
            jobs[slurm_id] = ClusterJob(slurm_id, name, slurm_state_name(state),
                                        "" if reason == "None" else reason, code, signal, source="sacct")
        return jobs

    def _jobcomp(self, syntax: str, pattern: str) -> dict[str, ClusterJob]:
        """The job-completion log's records that grep finds (``syntax`` -E or -F), by id; the last
        record wins (a requeued job ends more than once)."""
        path = self.jobcomp_path()
        if not path:
            return {}
        done = self.run(["grep", syntax, "--", pattern, path])
        if done.returncode == 1:  # grep: no line matched
            return {}
        if done.returncode:
            raise ClusterError(EndReason.ENGINE_ERROR, ["grep"], f"cannot read the job-completion log {path}: "
                               f"{done.stderr.strip()}")
        jobs = {}
        for line in done.stdout.splitlines():
            # Key=value pairs split by spaces; a value holding a space (a WorkDir) only spoils itself.
            record = dict(re.findall(r"(\w+)=(\S*)", line))
            code, signal = parse_exit_pair(record.get("ExitCode", "0:0"))
            jobs[record["JobId"]] = ClusterJob(record["JobId"], record.get("Name", ""), record.get("JobState", ""),
                                               "", code, signal, source="jobcomp")
        return jobs

    def _with_positions(self, jobs: dict[str, ClusterJob]) -> dict[str, ClusterJob]:
        """jobs with the queue position of each pending one: its rank by priority among the pending,
        not held jobs of its partition (all users'), as the scheduler will consider them."""
        argv = ["squeue", "--noheader", "--states=PENDING", "--Format=JobID:|,Partition:|,PriorityLong:|,Reason:|"]
        queues: dict[str, list[tuple[int, int, str]]] = {}
        for line in self._checked(argv).stdout.splitlines():
            slurm_id, partition, priority, reason = line.split(FIELD_SEPARATOR)[:4]
            if not reason.startswith("JobHeld"):
                number = int(re.match(r"\d*", slurm_id).group() or 0)
                queues.setdefault(partition, []).append((-int(priority or 0), number, slurm_id))
        rank = {slurm_id: place for queue in queues.values()
                for place, (_, _, slurm_id) in enumerate(sorted(queue), start=1)}
        return {slurm_id: replace(job, position=rank.get(slurm_id)) if job.phase is ClusterPhase.PENDING else job
                for slurm_id, job in jobs.items()}


class LocalCluster(Cluster):
    """A cluster whose client commands run on this machine (a login node that mounts the share).

    ``slurm_conf`` points the clients at a cluster's slurm.conf (SLURM_CONF); empty: the
    environment's SLURM_CONF or /etc/slurm/slurm.conf, as for any Slurm user.
    """

    def __init__(self, slurm_conf: str = "", timeout: float = COMMAND_TIMEOUT) -> None:
        super().__init__(timeout)
        self.slurm_conf = slurm_conf

    def run(self, argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, "SLURM_CONF": self.slurm_conf} if self.slurm_conf else None
        feed = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
        try:
            return subprocess.run(list(argv), env=env, capture_output=True, text=True, timeout=self.timeout, **feed)
        except FileNotFoundError:
            raise ClusterError(EndReason.ENGINE_UNAVAILABLE, argv, "not installed on this machine") from None
        except subprocess.TimeoutExpired:
            raise ClusterError(EndReason.ENGINE_UNAVAILABLE, argv,
                               f"no answer within {self.timeout:.0f} s: {shlex.join(argv)}") from None


class SshCluster(Cluster):
    """A cluster whose client commands run on a login node reached over SSH (``user@login-node``).

    Each argv is quoted with shlex for the remote shell, the script travels on stdin. Commands
    share one SSH connection (ControlMaster in a private directory, kept ``SSH_PERSIST`` seconds
    after the last command), so a poll costs a channel on it, not a new handshake. BatchMode: no
    password or host-key prompt can block the agent; keys and known_hosts must be set up before
    (docs/deploy.md). ``ssh_config`` is an ssh_config file used instead of ~/.ssh/config (port,
    identity, jump host); ``slurm_conf`` is the slurm.conf path *on the login node* (SLURM_CONF
    there), empty: the login node's default.
    """

    def __init__(self, destination: str, *, ssh_config: str = "", slurm_conf: str = "",
                 timeout: float = COMMAND_TIMEOUT) -> None:
        super().__init__(timeout)
        if not destination or destination.startswith("-"):  # never let a setting become an ssh option
            raise ValueError(f"not an SSH destination: {destination!r}")
        self.destination = destination
        self.ssh_config = ssh_config
        self.slurm_conf = slurm_conf
        # Private (0700): whoever can reach the control socket can run commands as us on the login node.
        self.control_dir = tempfile.mkdtemp(prefix="opeva-ssh-")
        self._finalizer = weakref.finalize(self, _end_connection, self.ssh_command(), destination, self.control_dir)

    def ssh_command(self) -> list[str]:
        """ssh with the shared connection's options, without destination or command (also rsync's ``-e``)."""
        config = ["-F", self.ssh_config] if self.ssh_config else []
        return ["ssh", *config, "-o", "BatchMode=yes", "-o", f"ConnectTimeout={SSH_CONNECT_TIMEOUT}",
                "-o", "ControlMaster=auto", "-o", f"ControlPath={self.control_dir}/%C",
                "-o", f"ControlPersist={SSH_PERSIST}", "-o", "ServerAliveInterval=10"]

    def remote_command(self, argv: Sequence[str]) -> str:
        """argv as one line for the login node's shell."""
        prefix = ["env", f"SLURM_CONF={self.slurm_conf}"] if self.slurm_conf else []
        return shlex.join([*prefix, *argv])

    def run(self, argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess:
        feed = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
        ssh = [*self.ssh_command(), self.destination, "--", self.remote_command(argv)]
        try:
            done = subprocess.run(ssh, capture_output=True, text=True, timeout=self.timeout, **feed)
        except FileNotFoundError:
            raise ClusterError(EndReason.ENGINE_UNAVAILABLE, argv, "ssh is not installed on this machine") from None
        except subprocess.TimeoutExpired:
            raise ClusterError(EndReason.ENGINE_UNAVAILABLE, argv, f"no answer from {self.destination} within "
                               f"{self.timeout:.0f} s: {shlex.join(argv)}") from None
        if done.returncode == SSH_FAILED:  # ssh failed (unreachable, refused key): not Slurm's answer
            raise ClusterError(EndReason.ENGINE_UNAVAILABLE, argv, f"ssh to {self.destination} failed: "
                               f"{slurm_message(done.stderr)}")
        if done.returncode == COMMAND_NOT_FOUND:
            raise ClusterError(EndReason.ENGINE_UNAVAILABLE, argv, f"not installed on {self.destination}")
        return done

    def close(self) -> None:
        """End the shared connection and remove its directory; the cluster is not used after this.

        Also done when the cluster is garbage-collected or the process exits (an agent stopped by
        SIGTERM), so no master connection or directory outlives its agent for long.
        """
        self._finalizer()

def _end_connection(ssh_command: list[str], destination: str, control_dir: str) -> None:
    """Ask the master connection to exit and remove its directory (never raises: it runs at exit too)."""
    try:
        subprocess.run([*ssh_command, "-O", "exit", destination], capture_output=True, stdin=subprocess.DEVNULL,
                       timeout=COMMAND_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        pass  # no master (never connected, or it persisted past its time): nothing to end
    shutil.rmtree(control_dir, ignore_errors=True)


def make_cluster(settings: Settings) -> Cluster:
    """The cluster an agent drives: over SSH when ``slurm_ssh`` names a login node, else this machine's clients."""
    if settings.slurm_ssh:
        return SshCluster(settings.slurm_ssh, ssh_config=settings.slurm_ssh_config, slurm_conf=settings.slurm_conf)
    return LocalCluster(settings.slurm_conf)
