"""The worker for one host: watch the queue, claim, run, report, stop.

The server's embedded ``local`` worker and ``opeva-spool agent --host X`` are this same
class. An agent is the only writer of its jobs' logs, attempt records and terminal
moves; everything it learns from the API (stop requests) comes as files it reads.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid

import filelock

from . import crashpoints, fsio, hosts, locks
from .exceptions import Conflict, RuntimeFailure
from .jobs import ANY_HOST, CONFIG_SNAPSHOT, DATA_SUBDIRS, JobFolder, JobSpec, gpus_needed, utc_now
from .progress import ProgressRecorder
from .queue import Dispatcher
from .runtimes.base import Execution, Launch, Lease, Runtime
from .settings import Settings
from .spool import RUNNING, Entry, Location, Spool
from .states import EndReason, JobState
from .watching import DirectoryWatcher

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2  # how often a runner checks its execution and stop requests
# A runner of a detached runtime (Slurm) looks only when the agent's watch wakes it, and at least this often.
DETACHED_LOOK_SECONDS = 30.0


class HostPresence:
    """One agent per shared root and host name on a machine, held for the agent's lifetime.

    The lock file lives on local disk: flock is not forwarded across NFS (or sshfs)
    hosts, so it only excludes processes of this machine; exclusion between hosts comes
    from the atomic rename in Spool.claim. Being alone on its host is what lets an agent
    starting up treat everything in its running/ as its dead predecessor's. The holder
    writes who it is into the file, so a refused agent can name it.
    """

    def __init__(self, lock_dir: str, shared_root: str, host: str):
        path = locks.local_lock_path(lock_dir, shared_root, host, "agent.lock")
        self.lock = filelock.FileLock(path, timeout=0)
        # filelock truncates its file when it opens it, so who holds the lock is noted beside it.
        self.holder_path = path + ".holder"
        self.root = os.path.realpath(shared_root)
        self.host = host

    def acquire(self, agent_id: str = "") -> None:
        os.makedirs(os.path.dirname(self.holder_path), exist_ok=True)
        try:
            self.lock.acquire()
        except filelock.Timeout:
            raise Conflict(f"another agent for host {self.host!r} on shared root {self.root} already runs on "
                           f"this machine ({self._holder()}); stop it first, or use another shared root or host "
                           f"name (lock file {self.lock.lock_file})", host=self.host, root=self.root) from None
        fsio.atomic_write_json(self.holder_path, {"pid": os.getpid(), "root": self.root, "host": self.host,
                                                  "agent_id": agent_id, "started_at": utc_now()}, durable=False)

    def _holder(self) -> str:
        # Race: the holder notes itself just after it locks; in between the note is missing or its predecessor's.
        note = fsio.read_json_object(self.holder_path) or {}
        if "pid" not in note:
            return "its pid is not recorded yet"
        return f"pid {note['pid']}, root {note.get('root')}"

    def release(self) -> None:
        if self.lock.is_locked:
            fsio.unlink_quietly(self.holder_path)
            self.lock.release()


class GpuPool:
    """The GPU ids a host may hand out, and which of them attempts hold: a GPU is never shared.

    The claim loop takes, runners give back when they end, the heartbeat reads what is free.
    """

    def __init__(self, ids):
        self.ids = tuple(ids)
        self._held = set()
        self._lock = threading.Lock()

    def take(self, wanted: int | str) -> tuple[str, ...] | None:
        """Specific free ids for a job asking for ``wanted`` (0, N or "all"), now held; None if too few are free."""
        if not wanted:
            return ()
        count = gpus_needed(wanted, len(self.ids))
        with self._lock:
            free = [gpu for gpu in self.ids if gpu not in self._held]
            if count is None or len(free) < count:
                return None
            taken = tuple(free[:count])
            self._held.update(taken)
        return taken

    def hold(self, gpus: tuple[str, ...]) -> None:
        """Count ids as held without asking (an attempt re-attached after a restart already has them)."""
        with self._lock:
            self._held.update(gpus)

    def give_back(self, gpus: tuple[str, ...]) -> None:
        with self._lock:
            self._held.difference_update(gpus)

    def free(self) -> list[str]:
        with self._lock:
            return [gpu for gpu in self.ids if gpu not in self._held]


def retry_delay(attempt: int, first: float, longest: float) -> float:
    """Seconds before a failed ``attempt``'s retry: ``first``, doubled per attempt before it, at most ``longest``."""
    return min(longest, first * 2 ** (attempt - 1))


def prepare_attempt(spool: Spool, entry: Entry) -> bool:
    """Make a claimed attempt's output folders and move the previous attempt's log aside (every attempt's log
    is kept, under its number); False if the job was deleted meanwhile. Its runner (or the HTTP worker
    service, for a job it hands out) calls it once, before the attempt starts."""
    folder = spool.folder(entry.job_id)
    try:
        for sub in DATA_SUBDIRS:  # the job's output folders are made for its first attempt
            fsio.make_leaf_dir(os.path.join(folder.path, sub))
    except FileNotFoundError:
        # Race: a forced delete took the job folder after the claim; making the
        # sub-folders with their parents would bring the deleted job back.
        return False
    if entry.attempt > 1 and os.path.exists(folder.log):
        os.replace(folder.log, folder.attempt_log(spool.log_attempt(entry)))
    return True


def config_relpath(spool: Spool, spec: JobSpec) -> str:
    """The job's config under the shared root: its snapshot in the job folder ("" for a job without one)."""
    if not spec.config_file:
        return ""
    if os.path.exists(spool.folder(spec.job_id).config):
        return f"jobs/{spec.job_id}/{CONFIG_SNAPSHOT}"
    # Queued by a version that took no snapshot (an upgrade with jobs waiting): configs/ as it is now.
    return f"configs/{spec.config_file}"


def launch_env(job_root: str, host: str, entry: Entry, spec: JobSpec, config_path: str) -> dict[str, str]:
    """The environment an attempt runs with (``config_path`` as the job sees it); the spec's env wins."""
    return {
        "OPEVA_BASE_DIR": job_root,
        "OPEVA_JOB_ID": spec.job_id,
        "OPEVA_JOB_NAME": spec.job_name,  # the real image names its run after it
        "OPEVA_CONFIG_PATH": config_path,
        "OPEVA_ATTEMPT": str(entry.attempt),
        "OPEVA_HOST": host,
        **spec.env,
    }


class Runner(threading.Thread):
    """Runs one claimed attempt to its end and records how it ended."""

    def __init__(self, agent: Agent, entry: Entry, spec: JobSpec, gpus: tuple[str, ...],
                 execution: Execution | None = None):
        super().__init__(name=f"job-{entry.job_id}", daemon=True)
        self.agent, self.entry, self.spec, self.gpus = agent, entry, spec, gpus
        self.execution = execution  # given when re-attached after an agent restart
        self.stop_event = threading.Event()
        self.wake = threading.Event()  # set by the agent's watch (detached runtimes): look now
        self.lease_epoch = agent.heartbeat.lapses  # a lapse after this may have killed the job (guard)
        self.progress = ProgressRecorder(agent.spool.folder(entry.job_id))
        self.recorded_facts = {}  # the execution's facts() last written into the attempt record

    def run(self):
        agent, entry = self.agent, self.entry
        try:
            self._run()
        except Exception as exc:  # a bug or an I/O error must still end the attempt on disk
            log.exception("job %s attempt %s crashed its runner", entry.job_id, entry.attempt)
            self._finish(JobState.FAILED, {"reason": EndReason.AGENT_ERROR, "error": str(exc)})
        finally:
            agent.runner_done(self)

    def _finish(self, state, details):
        agent = self.agent
        if not agent.spool.finish(self.entry, agent.host, agent.agent_id, state, **details):
            log.warning("job %s attempt %s was superseded; its ending is ignored", self.entry.job_id,
                        self.entry.attempt)

    def _run(self):
        agent, entry = self.agent, self.entry
        folder = agent.spool.folder(entry.job_id)
        if self.execution is not None:
            # No note in the log here: while a container runs, its output copier is the log's writer.
            log.info("job %s attempt %s re-attached after a restart", entry.job_id, entry.attempt)
        else:
            if not prepare_attempt(agent.spool, entry):
                log.info("job %s was deleted before attempt %s started", entry.job_id, entry.attempt)
                return None
            try:
                self.execution = agent.runtime.start(agent.launch_for(entry, self.spec, folder.log, self.gpus))
            except RuntimeFailure as failure:
                agent.note(folder, f"cannot start: {failure.detail}")
                return self._finish(JobState.FAILED, {"reason": failure.reason, "error": failure.detail,
                                                      "gpus": list(self.gpus)})
            crashpoints.reach("start.launched")
        if (agent.spool.read_attempt(entry) or {}).get("state") != JobState.RUNNING.value:
            # Also for an adopted execution whose start was never recorded (a Slurm job submitted held
            # just before the agent died): the record names it before begin() lets it run.
            agent.spool.write_attempt(entry, agent.host, agent.agent_id, JobState.RUNNING,
                                      started_at=utc_now(), runtime=agent.runtime.name, gpus=list(self.gpus),
                                      **self.execution.describe())
        self.execution.begin()
        self._supervise(folder)

    def _supervise(self, folder):
        agent, execution = self.agent, self.execution
        while True:
            code = execution.poll()
            self._record_progress()  # after the poll: an attempt that just ended has its last version kept
            self._record_facts()
            if code is not None:
                execution.release()
                outcome = execution.outcome()
                if outcome is not None:
                    state, reason, error = outcome
                    return self._finish(state, {"exit_code": code, "reason": reason, "error": error})
                if code == 0:
                    return self._finish(JobState.FINISHED, {"exit_code": code})
                if self.lease_fenced() and agent.heartbeat.lease_broken(self.lease_epoch):
                    # Race: this agent was frozen past its lease and its guard killed the job;
                    # the exit code is the guard's doing, not the job's failure.
                    self._note_if_current(folder, f"{EndReason.LEASE_LOST}: the guard ended the job, exit code {code}")
                    return self._after_stop(EndReason.LEASE_LOST, code)
                return self._failed(folder, code)
            reason = self.stop_reason()
            if reason == EndReason.AGENT_SHUTDOWN and agent.runtime.survives_agent:
                return execution.detach()  # the restarted agent re-attaches (Runtime.adopt)
            if reason:
                # Without a lease the job must be dead before the server's offline threshold.
                grace = agent.heartbeat.grace if reason == EndReason.LEASE_LOST else agent.settings.stop_grace
                code = execution.stop(grace)
                crashpoints.reach(f"stop.{reason}")  # e.g. stop.stop_requested, stop.entry_removed
                execution.release()
                # Noted only once it ended: while it runs, the runtime is the log's only writer.
                self._note_if_current(folder, f"{reason}: stopped with SIGTERM (SIGKILL after {grace:g}s), "
                                              f"exit code {code}")
                return self._after_stop(reason, code)
            self._idle()

    def _idle(self):
        if not self.agent.runtime.detached:
            self.stop_event.wait(self.agent.runtime.poll_seconds or POLL_SECONDS)
            return
        # Race: a wake set during the look above is kept (wait returns at once); one set after the clear is
        # seen by the next look, which follows immediately.
        self.wake.wait(DETACHED_LOOK_SECONDS)
        self.wake.clear()

    def needs_look(self, stop_requested: set[str], owned: set[str]) -> bool:
        """Whether something may have changed for this attempt (the agent's watch asks, for detached runtimes)."""
        entry, execution = self.entry, self.execution
        return (execution is None or entry.job_id in stop_requested or entry.name not in owned
                or self.agent.stopping.is_set() or execution.changed())

    def _failed(self, folder, code):
        """The job exited non-zero on its own: retry it if its spec asks and retries are left, else end it failed."""
        agent, entry, spec = self.agent, self.entry, self.spec
        details = {"exit_code": code, "reason": EndReason.EXIT_CODE, "error": f"the job exited with code {code}"}
        # A stop asked for meanwhile wins: a retry would only be stopped again.
        if not (spec.retry_on_failure and entry.attempt <= spec.max_retries
                and not agent.spool.stop_requested(entry.job_id)):
            return self._finish(JobState.FAILED, details)
        delay = retry_delay(entry.attempt, agent.settings.retry_backoff, agent.settings.retry_backoff_max)
        # Noted before the requeue: once the entry is queued, the next attempt may take the log over.
        self._note_if_current(folder, f"exit code {code}: attempt {entry.attempt + 1} of "
                                      f"{spec.max_retries + 1} in {delay:g}s (retry_on_failure)")
        if agent.spool.retry(entry, agent.host, agent.agent_id, delay, **details) is None:
            log.warning("job %s attempt %s was superseded; its retry is not queued", entry.job_id, entry.attempt)
        return None

    def _record_facts(self):
        facts = self.execution.facts()
        if facts and facts != self.recorded_facts:
            self.agent.spool.write_attempt(self.entry, self.agent.host, self.agent.agent_id, JobState.RUNNING,
                                           **facts)
            self.recorded_facts = facts

    def lease_fenced(self) -> bool:
        """Whether a lapsed lease ends this attempt: not one a cluster runs (Runtime.detached)."""
        return not self.agent.runtime.detached

    def _record_progress(self):
        try:
            self.progress.sample()
        except OSError as exc:  # a lost point must never end an attempt
            log.warning("job %s: progress history not updated: %s", self.entry.job_id, exc)

    def _note_if_current(self, folder, message):
        """Note in the log only while this attempt still owns the job.

        Once the job was requeued, logs/<id>.log belongs to the next attempt (which moved
        this attempt's log aside), and a second writer would corrupt it. The check and
        the write are not atomic, but the next attempt needs a scan, a claim and a start
        in between, and the note is only a courtesy.
        """
        if self.agent.owns(self.entry):
            self.agent.note(folder, message)

    def _after_stop(self, reason, code):
        agent, entry = self.agent, self.entry
        if reason == EndReason.STOP_REQUESTED:
            return self._finish(JobState.STOPPED, {"exit_code": code, "reason": reason})
        if reason == EndReason.ENTRY_REMOVED:
            return None  # deleted or requeued by the server: there is no entry left to end
        # lease_lost / agent_shutdown: the job did nothing wrong; retry policy decides.
        agent.spool.recover_lost(entry, agent.host, reason)
        return None

    def stop_reason(self) -> EndReason | None:
        """Why this attempt must end now, or None while it may run on."""
        agent, entry = self.agent, self.entry
        if self.lease_fenced() and agent.heartbeat.lease_broken(self.lease_epoch):
            return EndReason.LEASE_LOST
        if agent.spool.stop_requested(entry.job_id):
            return EndReason.STOP_REQUESTED
        if not agent.owns(entry):
            return EndReason.ENTRY_REMOVED
        if agent.stopping.is_set():
            return EndReason.AGENT_SHUTDOWN
        return None


class Agent:
    def __init__(self, settings: Settings, spool: Spool, runtime: Runtime, host: str | None = None):
        self.settings = settings
        self.spool = spool
        self.runtime = runtime
        self.host = host or settings.host
        self.agent_id = f"{self.host}:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.capacity = settings.capacity
        self.gpu_pool = GpuPool(settings.gpu_ids)
        self.dispatcher = Dispatcher(spool, self.host, self.gpu_pool.ids, settings.gpu_reserve_after,
                                     max_listing_age=settings.scan_interval)
        self.presence = HostPresence(settings.lock_dir, spool.root, self.host)
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.drain_signaled = False
        self.guard = None  # the runtime's host guard process, if it has one (Docker)
        self._runners = {}
        self._lock = threading.Lock()
        self._threads = []
        self.heartbeat = hosts.HeartbeatWriter(spool, self.host, settings, self.heartbeat_facts)
        self.watcher = DirectoryWatcher(settings.observer, settings.scan_interval)

    # ----- lifecycle ----------------------------------------------------------------------

    def start(self) -> Agent:
        self.presence.acquire(self.agent_id)
        self.spool.ensure_layout()
        fsio.makedirs(self.spool.running_dir(self.host))
        # Beat before starting the host guard: it takes the first heartbeat carrying this agent's
        # id as its own, and a different id seen later as a successor taking over. The lease
        # is renewed from here on, so a slow recovery does not count as a lapse.
        self.heartbeat.beat()
        self.guard = self.runtime.guard_host(self.host, self.lease())
        self._thread(self._beat_loop)
        self.recovered = self.recover()
        self.watcher.watch(self.spool.queued_dir, self._on_queue_event)
        self.watcher.start()
        self._thread(self._claim_loop)
        if self.runtime.detached:
            self._thread(self._watch_loop)
        return self

    def _thread(self, target):
        thread = threading.Thread(target=target, name=f"agent-{self.host}-{target.__name__}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop claiming and end this agent's threads; running jobs are stopped and requeued.

        Containers (survives_agent) are left running for the restarted agent to adopt. The
        host guard stays too: if no successor renews the lease in time, it kills them.
        """
        self.stopping.set()
        self.wake.set()
        self.watcher.stop()
        for runner in self.runners():
            runner.stop_event.set()
            runner.wake.set()
        for thread in self._threads:
            thread.join(timeout)
        for runner in self.runners():
            runner.join(timeout)
        self.presence.release()

    def drain(self) -> None:
        """Finish running jobs, take no new ones (SIGUSR1); ``opeva-spool drain`` does it by file."""
        self.drain_signaled = True

    @property
    def draining(self) -> bool:
        return self.drain_signaled or os.path.exists(self.spool.drain_path(self.host))

    def runners(self) -> list[Runner]:
        with self._lock:
            return list(self._runners.values())

    def running_job_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._runners)

    def runner_done(self, runner: Runner) -> None:
        with self._lock:
            self._runners.pop(runner.entry.job_id, None)
        self.gpu_pool.give_back(runner.gpus)
        self.wake.set()

    # ----- heartbeat ----------------------------------------------------------------------

    def heartbeat_facts(self) -> dict:
        """What this host's heartbeat says about it, besides being alive (HeartbeatWriter adds that)."""
        return {
            "agent_id": self.agent_id,
            "capacity": self.capacity,
            "gpu_ids": list(self.gpu_pool.ids),
            "free_gpus": self.gpu_pool.free(),
            "running": self.running_job_ids(),
            "runtime": self.runtime.name,
            "detached": self.runtime.detached,  # its jobs outlive it at a cluster: the server does not requeue them
            "draining": self.draining,
        }

    def _beat_loop(self):
        # A renewed lease after a lapse: the stopped jobs went back to the queue, look at it at once.
        self.heartbeat.run(self.stopping, on_lapse_renewed=self.wake.set)

    def _watch_loop(self):
        """Detached runtimes (Slurm): one look for all runners per tick, so an agent with hundreds of jobs at a
        cluster wakes only the runners whose job changed, was asked to stop, or left this host's running/: one
        listing of requests/ and one of running/<host> instead of two stats per runner (runtimes/slurm.py's
        poller makes the cluster's side one squeue)."""
        while not self.stopping.wait(self.runtime.poll_seconds or POLL_SECONDS):
            runners = self.runners()
            if not runners:
                continue
            try:
                stop_requested = {name.removesuffix(".stop") for name in fsio.listdir(self.spool.requests_dir)
                                  if name.endswith(".stop")}
                owned = set(fsio.listdir(self.spool.running_dir(self.host)))
            except OSError as exc:  # the share is unreachable: every runner looks for itself
                log.warning("cannot list %s's stop requests and entries: %s", self.host, exc)
                stop_requested, owned = {runner.entry.job_id for runner in runners}, set()
            for runner in runners:
                if runner.needs_look(stop_requested, owned):
                    runner.wake.set()

    # ----- recovery -----------------------------------------------------------------------

    def recover(self) -> bool:
        """Deal with what an earlier incarnation of this host's agent left in running/.

        Entries whose ending is recorded are moved on. The rest belong to attempts whose
        agent died: the runtime re-attaches to those it can (containers), and the others
        are requeued or failed like a lost host's jobs. False if it must be tried again.
        """
        self.spool.complete_finished(self.host)
        running = self.spool.running_dir(self.host)
        entries = sorted(filter(None, map(Entry.parse, fsio.listdir(running))))
        # Race: the server may requeue one of these between this listing and the runner's
        # first check; that runner then finds its entry gone and stops the execution.
        current = {(entry.job_id, entry.attempt) for entry in entries}
        try:
            adopted = self.runtime.adopt(self.host, current)
        except RuntimeFailure as failure:
            # Not knowing what still runs, failing those jobs could run them twice: retry later.
            log.warning("cannot recover %s yet: %s", self.host, failure.detail)
            return False
        for entry in entries:
            spec = self.spool.read_spec(Location(RUNNING, self.host), entry)
            execution = adopted.pop((entry.job_id, entry.attempt), None)
            if execution is not None and spec is not None:
                record = self.spool.read_attempt(entry) or {}
                gpus = tuple(record.get("gpus", ()))
                self.gpu_pool.hold(gpus)
                self._start_runner(Runner(self, entry, spec, gpus, execution))
                continue
            if execution is not None:
                execution.release()  # its spec cannot be read: end it before the entry moves on
            self.spool.recover_lost(entry, self.host, reason=EndReason.AGENT_RESTARTED)
        return True

    # ----- claiming -----------------------------------------------------------------------

    def _claim_loop(self):
        while not self.stopping.is_set():
            self.wake.wait(self._until_next_look())
            self.wake.clear()
            if self.stopping.is_set():
                break
            try:
                if not self.recovered:
                    self.recovered = self.recover()
                if self.recovered:
                    self.claim_ready()
            except OSError:
                log.exception("claiming on %s failed; retrying at the next scan", self.host)

    def _until_next_look(self) -> float:
        """scan_interval, or less when a retry skipped for its backoff is due sooner (nothing else wakes us then)."""
        due = self.dispatcher.retry_due
        left = due - self.dispatcher.clock() if due is not None else 0.0
        return min(self.settings.scan_interval, left) if left > 0 else self.settings.scan_interval

    def wants(self, name: str) -> bool:
        """Whether a queued entry name is for this host (by its target field, without parsing it all)."""
        return Entry.target_of(name) in (self.host, ANY_HOST)

    def _on_queue_event(self, event):
        # Only an entry arriving for us is worth a look at the queue: every other event
        # (claims by other hosts, jobs for other hosts) would cost a listing for nothing.
        # A missed wake-up only delays the claim until the next scan.
        arrived = getattr(event, "dest_path", "") or (event.src_path if event.event_type == "created" else "")
        if arrived and not event.is_directory and self.wants(os.path.basename(arrived)):
            self.wake.set()

    def claim_ready(self) -> None:
        """Claim queued jobs for this host while there is room, in dispatch order (queue.Dispatcher decides which)."""
        if self.draining or self.heartbeat.lease_expired() or len(self.runners()) >= self.capacity:
            return
        for entry, spec in self.dispatcher.candidates(lambda: len(self.gpu_pool.free())):
            if self.stopping.is_set() or len(self.runners()) >= self.capacity:
                return
            gpus = self.gpu_pool.take(spec.gpus)
            if gpus is None:
                continue  # not enough free GPUs here now; a later job may fit
            claimed = False
            try:
                claimed = self.spool.claim(entry, self.host, self.agent_id)
                if claimed:
                    self._start_runner(Runner(self, entry, spec, gpus))
            finally:
                if not claimed:
                    self.gpu_pool.give_back(gpus)  # another host won the job (or the claim failed)

    def _start_runner(self, runner):
        with self._lock:
            self._runners[runner.entry.job_id] = runner
        runner.start()

    def owns(self, entry: Entry) -> bool:
        """True while ``entry`` is in this host's running/ (not requeued, reclaimed or deleted)."""
        return os.path.exists(os.path.join(self.spool.running_dir(self.host), entry.name))

    # ----- what a job gets ----------------------------------------------------------------

    def lease(self) -> Lease:
        return Lease(heartbeat_path=self.spool.heartbeat_path(self.host), seconds=self.heartbeat.lease_seconds,
                     grace=self.heartbeat.grace, agent_id=self.agent_id)

    def config_path_for(self, spec: JobSpec) -> str:
        """The job's config as the runtime sees it: its snapshot in the job folder ("" for a job without one)."""
        relpath = config_relpath(self.spool, spec)
        return f"{self.runtime.job_root_for(spec.image)}/{relpath}" if relpath else ""

    def launch_for(self, entry: Entry, spec: JobSpec, log_path: str, gpus: tuple[str, ...]) -> Launch:
        """Everything the runtime needs to start this attempt; RuntimeFailure if its command cannot be made."""
        config_path = self.config_path_for(spec)
        command = spec.command
        if command is None:
            command = self.runtime.default_command(spec.job_id, config_path, spec.config_file)
        env = launch_env(self.runtime.job_root_for(spec.image), self.host, entry, spec, config_path)
        return Launch(job_id=spec.job_id, attempt=entry.attempt, host=self.host, command=command, env=env,
                      log_path=log_path, image=spec.image, gpus=gpus, lease=self.lease(), resources=spec.resources)

    def note(self, folder: JobFolder, message: str) -> None:
        """A line of ours in the job's log (the agent is that file's writer); never through a link."""
        try:
            with fsio.append_inside(folder.log, folder.path) as handle:
                handle.write(f"[opeva-spool {utc_now()} {self.host}] {message}\n".encode())
        except OSError as exc:
            log.warning("cannot note in %s: %s", folder.log, exc)
