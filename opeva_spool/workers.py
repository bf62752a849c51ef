"""HTTP workers: OPEVA's worker protocol (heartbeat, next-job, job-status) on top of the spool.

An HTTP worker is a host whose agent cannot see the share; the server acts as its spool agent:

- its heartbeat is written to ``spool/<worker_id>/heartbeat.json`` in the spool agents' format
  (hosts.HeartbeatWriter), so ``/hosts``, ``LivenessMonitor`` and ``reclaim_offline`` treat it as any
  host. Every call of the worker counts as a beat; the document's ``interval`` is the worker's own
  beat, so the monitor calls it online for 3 of its beats (and offline after that or ``offline_after``,
  whichever is longer);
- next-job claims with ``Spool.claim``, the same rename into ``spool/<worker_id>/running/`` that spool
  agents make, chosen by a ``queue.Dispatcher`` of that host: a spool agent and an HTTP worker never
  own the same attempt, and placement rules are the same;
- job-status writes the attempt record and ends the attempt with ``Spool.finish`` (record, then
  rename), only for the attempt in this worker's running/ (and the attempt number it echoes back).

What the server cannot do for an HTTP worker (no guard process runs on its machine) is in
docs/worker-protocol.md.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import threading
import uuid

from . import auth, fsio, names
from .agent import GpuPool, config_relpath, launch_env, prepare_attempt, retry_delay
from .exceptions import BadRequest, Conflict, NotFound, RuntimeFailure
from .hosts import OFFLINE, LivenessMonitor
from .index import JobIndex
from .jobs import EMBEDDED_HOST, JobSpec, utc_now
from .queue import Dispatcher
from .runtimes.docker import DockerRuntime
from .service import JobService
from .settings import Settings
from .spool import DONE, QUEUED, RUNNING, Entry, Location, Spool
from .states import EndReason, JobState

log = logging.getLogger(__name__)

AGENT_PREFIX = "http:"  # agent_id of an HTTP worker: "http:<worker_id>" (a spool agent's starts with its host)
RUNTIME_NAME = "http"  # the heartbeat's "runtime" of an HTTP worker
# The protocol's default beat (the worker's WORKER_HEARTBEAT_INTERVAL) when its heartbeat's info names none.
DEFAULT_WORKER_INTERVAL = 30.0
# A declared beat is clamped into these bounds: a worker cannot make itself never go offline.
MIN_WORKER_INTERVAL, MAX_WORKER_INTERVAL = 0.1, 300.0
ONLINE_BEATS = 3  # LivenessMonitor.state: online while the last beat is at most this many intervals old
WORKER_JOB_ROOT = "/data"  # where the protocol's containers see the share
STATUSES = ("running", "finished", "failed", "stopped", "canceled")
# A job that ran cannot end canceled (states.ALLOWED): a worker's "canceled" of a started attempt is a stop.
ENDINGS = {"finished": JobState.FINISHED, "failed": JobState.FAILED, "stopped": JobState.STOPPED,
           "canceled": JobState.STOPPED}
SNAKE = re.compile(r"[^a-z0-9]+")


def container_name(worker_id: str, job_name: str, job_id: str) -> str:
    """The protocol's container name: ``job_<worker_id>_<job_name_snake_case>_<job_id[:8]>``."""
    return f"job_{worker_id}_{SNAKE.sub('_', job_name.lower()).strip('_') or 'job'}_{job_id[:8]}"


class WorkerService:
    """The server's side of the HTTP worker protocol; one per server."""

    def __init__(self, settings: Settings, spool: Spool, index: JobIndex, jobs: JobService,
                 monitor: LivenessMonitor) -> None:
        self.settings = settings
        self.spool = spool
        self.index = index
        self.jobs = jobs
        self.monitor = monitor
        self.commands = DockerRuntime(settings)  # only its command template is used: the worker runs Docker
        self.boot_id = f"{AGENT_PREFIX}{uuid.uuid4().hex}"  # this server's incarnation, in the heartbeats it writes
        self._dispatchers: dict[str, Dispatcher] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    # ----- who is calling ---------------------------------------------------------------------

    def _worker(self, worker_id: object, registering: bool = False) -> str:
        """``worker_id`` checked: a valid host name (400), the caller may act as it (403), not served by a spool agent
        (409) and known (404: a configured host, or one a heartbeat registered; only a heartbeat registers one)."""
        if worker_id is None or worker_id == "":
            raise BadRequest("'worker_id' is required", field="worker_id")
        worker_id = names.host(worker_id)
        auth.current().check_worker(worker_id)
        if worker_id == EMBEDDED_HOST and self.settings.embedded_worker:
            raise Conflict(f"host {worker_id!r} is the server's embedded worker; an HTTP worker needs a name of its "
                           f"own", worker_id=worker_id)
        if not registering and worker_id not in self.jobs.known_hosts(worker_id):
            raise NotFound(f"unknown worker {worker_id!r}: neither a configured host nor registered by a heartbeat "
                           f"(POST /api/agent/heartbeat first)", worker_id=worker_id)
        beat = fsio.read_json_object(self.spool.heartbeat_path(worker_id)) or {}
        agent_id = str(beat.get("agent_id") or "")
        if agent_id and not agent_id.startswith(AGENT_PREFIX) and self.monitor.state(worker_id) != OFFLINE:
            # Two kinds of owner of one running/ would each take the other's attempts for lost ones.
            raise Conflict(f"host {worker_id!r} is served by the spool agent {agent_id}; an HTTP worker needs a "
                           f"name of its own", worker_id=worker_id)
        return worker_id

    def _lock(self, worker_id: str) -> threading.Lock:
        # One worker's calls are serialised: a retried status must find the first one's work done, not race it.
        with self._locks_lock:
            return self._locks.setdefault(worker_id, threading.Lock())

    # ----- heartbeat --------------------------------------------------------------------------

    def heartbeat(self, worker_id: object, info: object = None) -> dict:
        if info is not None and not isinstance(info, dict):
            raise BadRequest("'info' must be a JSON object", field="info")
        worker_id = self._worker(worker_id, registering=True)
        with self._lock(worker_id):
            doc = self._beat(worker_id, info)
        return {"ok": True, "worker_id": worker_id, "draining": doc["draining"], "running": doc["running"],
                "offline_after": self.offline_after(doc["interval"])}

    def offline_after(self, interval: float) -> float:
        """Seconds of silence after which this worker's jobs are requeued (LivenessMonitor.state)."""
        return max(self.settings.offline_after, ONLINE_BEATS * interval)

    def _beat(self, worker_id: str, info: dict | None = None) -> dict:
        """Write the worker's heartbeat (any call of it is one); ``info``: the facts its heartbeat sent, else the last.

        The counter goes on from the document on the share: the monitor sees a change whatever server wrote it.
        """
        fsio.makedirs(self.spool.running_dir(worker_id))  # registers the host (Spool.worker_hosts)
        path = self.spool.heartbeat_path(worker_id)
        old = fsio.read_json_object(path) or {}
        agent_id = agent_id_of(worker_id)
        if old.get("agent_id") != agent_id:
            old = {}
        if info is None:
            info = old.get("info") if isinstance(old.get("info"), dict) else {}
        gpu_ids = [str(gpu) for gpu in info.get("gpu_ids", ())] if isinstance(info.get("gpu_ids"), list) else []
        running = self._running(worker_id)
        pool = self._gpu_pool(gpu_ids, running)
        interval = info.get("heartbeat_interval")
        interval = float(interval) if _is_a(interval, (int, float)) else DEFAULT_WORKER_INTERVAL
        counter = old.get("counter")
        doc = {
            "agent_id": agent_id,
            "capacity": info.get("capacity") if _is_a(info.get("capacity"), int) else None,
            "gpu_ids": gpu_ids,
            "free_gpus": pool.free(),
            "running": sorted(entry.job_id for entry in running),
            "runtime": RUNTIME_NAME,
            "draining": os.path.exists(self.spool.drain_path(worker_id)),
            "host": worker_id,
            "boot_id": self.boot_id,
            "counter": (counter if isinstance(counter, int) else 0) + 1,
            "version": info.get("version") if isinstance(info.get("version"), str) else None,
            "interval": min(MAX_WORKER_INTERVAL, max(MIN_WORKER_INTERVAL, interval)),
            "protocol": "http",
            "info": info,
            "beat_at": utc_now(),
        }
        # No fsync, as for spool agents: a lost heartbeat is replaced by the next one.
        fsio.atomic_write_json(path, doc, durable=False)
        return doc

    def _running(self, worker_id: str) -> list[Entry]:
        return sorted(filter(None, map(Entry.parse, fsio.listdir(self.spool.running_dir(worker_id)))))

    def _gpu_pool(self, gpu_ids: list[str], running: list[Entry]) -> GpuPool:
        """The worker's GPUs (as its heartbeat reports them), those its attempts were given held."""
        pool = GpuPool(gpu_ids)
        for entry in running:
            pool.hold(tuple((self.spool.read_attempt(entry) or {}).get("gpus") or ()))
        return pool

    # ----- next-job ---------------------------------------------------------------------------

    def next_job(self, worker_id: object) -> dict | None:
        """Claim the next job this worker may run (the payload of the protocol), or None if nothing fits."""
        worker_id = self._worker(worker_id)
        with self._lock(worker_id):
            doc = self._beat(worker_id)
            if doc["draining"]:
                return None
            running = self._running(worker_id)
            pool = self._gpu_pool(doc["gpu_ids"], running)
            for entry, spec in self._dispatcher(worker_id, doc["gpu_ids"]).candidates(lambda: len(pool.free())):
                gpus = pool.take(spec.gpus)
                if gpus is None:
                    continue  # not enough of its GPUs free now; a later job may fit
                if not self.spool.claim(entry, worker_id, agent_id_of(worker_id)):
                    pool.give_back(gpus)
                    continue  # another host won the rename
                self.index.place(Location(RUNNING, worker_id), entry)
                payload = self._hand_out(worker_id, entry, spec, gpus, doc["interval"])
                if payload is not None:
                    return payload
                pool.give_back(gpus)
        return None

    def _dispatcher(self, worker_id: str, gpu_ids: list[str]) -> Dispatcher:
        dispatcher = self._dispatchers.get(worker_id)
        if dispatcher is None or dispatcher.gpu_total != len(gpu_ids):
            dispatcher = Dispatcher(self.spool, worker_id, gpu_ids, self.settings.gpu_reserve_after,
                                    max_listing_age=self.settings.scan_interval)
            self._dispatchers[worker_id] = dispatcher
        return dispatcher

    def _hand_out(self, worker_id: str, entry: Entry, spec: JobSpec, gpus: tuple[str, ...],
                  interval: float) -> dict | None:
        """The payload of a claimed attempt, its record noting what it was given; None if it cannot run
        (deleted since the claim, or a command that cannot be made: then it is ended failed here)."""
        agent_id = agent_id_of(worker_id)
        if not prepare_attempt(self.spool, entry):
            return None  # deleted meanwhile: nothing to hand out
        relpath = config_relpath(self.spool, spec)
        config_path = f"{WORKER_JOB_ROOT}/{relpath}" if relpath else ""
        try:
            command = self._command(spec, config_path)
        except RuntimeFailure as failure:
            self.spool.finish(entry, worker_id, agent_id, JobState.FAILED, reason=failure.reason, error=failure.detail)
            self.index.place(Location(DONE, JobState.FAILED.value), entry)
            return None
        name = container_name(worker_id, spec.job_name, spec.job_id)
        self.spool.write_attempt(entry, worker_id, agent_id, JobState.DISPATCHED, gpus=list(gpus),
                                 container_name=name, runtime=RUNTIME_NAME)
        env = launch_env(WORKER_JOB_ROOT, worker_id, entry, spec, config_path)
        if gpus:
            env.setdefault("NVIDIA_VISIBLE_DEVICES", ",".join(gpus))
        return {
            "job_id": spec.job_id,
            "config_path": relpath or None,  # relative to the share: the container reads /data/<config_path>
            "job_name": spec.job_name,
            "image": spec.image or self.settings.default_image,
            "command": command,
            "container_name": name,
            "env": env,
            "attempt": entry.attempt,  # echo it in job-status: it fences a superseded attempt
            "gpus": list(gpus),
            "preferred_host": worker_id,
            "target_host": entry.target,
            # Report (any call) more often than this, or the job goes back to the queue without you.
            "offline_after": self.offline_after(interval),
        }

    def _command(self, spec: JobSpec, config_path: str) -> str:
        if isinstance(spec.command, list):
            return shlex.join(str(part) for part in spec.command)
        if isinstance(spec.command, str):
            return spec.command
        return self.commands.default_command(spec.job_id, config_path, spec.config_file)

    # ----- job-status -------------------------------------------------------------------------

    def job_status(self, body: dict) -> dict:
        """Record what a worker reports of an attempt it owns; 409, changing nothing, for any other attempt."""
        job_id = names.job_id(body.get("job_id"))
        status = body.get("status")
        if status not in STATUSES:
            raise BadRequest(f"'status' must be one of {', '.join(STATUSES)}, not {status!r}", field="status")
        worker_id = body.get("worker_id") or auth.current().user
        details = _reported_details(body)
        attempt = body.get("attempt", (body.get("details") or {}).get("attempt"))
        if attempt is not None and (not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1):
            raise BadRequest(f"'attempt' must be a positive integer, not {attempt!r}", field="attempt")
        worker_id = self._worker(worker_id)
        with self._lock(worker_id):
            self._beat(worker_id)  # a report proves the worker alive (periodic "running" is its lease)
            entry = self._owned(worker_id, job_id, attempt, status)
            if entry is None:  # this ending is recorded already: a retry of the same report
                return {"ok": True, "job_id": job_id, "status": ENDINGS[status].value, "unchanged": True}
            if status == "running":
                return self._running_report(worker_id, entry, details)
            return self._ending(worker_id, entry, ENDINGS[status], details)

    def _owned(self, worker_id: str, job_id: str, attempt: int | None, status: str) -> Entry | None:
        """The entry of ``job_id`` in this worker's running/ (of ``attempt`` when echoed); None for an ending
        reported again after it was recorded; Conflict for an attempt this worker does not own."""
        for entry in self._running(worker_id):
            if entry.job_id == job_id:
                if attempt is not None and attempt != entry.attempt:
                    raise _not_owner(job_id, worker_id, f"attempt {attempt} was superseded by attempt "
                                                        f"{entry.attempt}")
                return entry
        if status != "running":
            indexed = self.index.resolve(job_id)
            if indexed is not None and indexed.location.kind == DONE and attempt in (None, indexed.entry.attempt):
                record = self.spool.read_attempt(indexed.entry) or {}
                if record.get("agent_id") == agent_id_of(worker_id) and record.get("state") == ENDINGS[status].value:
                    return None
        # Requeued after the worker went silent, taken by another host, deleted, or never this worker's.
        raise _not_owner(job_id, worker_id, "it holds no such attempt of the job (requeued after it went silent, "
                                            "ended, deleted, or another host's)")

    def _running_report(self, worker_id: str, entry: Entry, details: dict) -> dict:
        record = self.spool.read_attempt(entry) or {}
        if record.get("state") not in (JobState.DISPATCHED.value, JobState.RUNNING.value, None):
            raise _not_owner(entry.job_id, worker_id, f"attempt {entry.attempt} ended as {record['state']}")
        changed = {key: value for key, value in details.items() if record.get(key) != value}
        if record.get("state") != JobState.RUNNING.value or changed:  # a periodic report changes nothing on disk
            started = {} if record.get("started_at") else {"started_at": utc_now()}
            self.spool.write_attempt(entry, worker_id, agent_id_of(worker_id), JobState.RUNNING, **started, **changed)
        return {"ok": True, "job_id": entry.job_id, "status": JobState.RUNNING.value, "attempt": entry.attempt,
                "stop_requested": self.spool.stop_requested(entry.job_id)}

    def _ending(self, worker_id: str, entry: Entry, state: JobState, details: dict) -> dict:
        agent_id = agent_id_of(worker_id)
        record = self.spool.read_attempt(entry) or {}
        if record.get("state") in (None, JobState.DISPATCHED.value):
            # The worker's "running" was lost (or it ended at once): the lifecycle passes through running.
            self.spool.write_attempt(entry, worker_id, agent_id, JobState.RUNNING)
        stop_asked = self.spool.stop_requested(entry.job_id)
        if state == JobState.STOPPED and stop_asked:
            details["reason"] = EndReason.STOP_REQUESTED.value
        elif state == JobState.FAILED and details.get("exit_code") not in (None, 0):
            details["reason"] = EndReason.EXIT_CODE.value
        spec = self.spool.read_spec(Location(RUNNING, worker_id), entry)
        if (state == JobState.FAILED and spec is not None and spec.retry_on_failure
                and entry.attempt <= spec.max_retries and not stop_asked):
            delay = retry_delay(entry.attempt, self.settings.retry_backoff, self.settings.retry_backoff_max)
            requeued = self.spool.retry(entry, worker_id, agent_id, delay, **details)
            if requeued is None:
                raise _not_owner(entry.job_id, worker_id, "the attempt was superseded meanwhile")
            self.index.place(Location(QUEUED), requeued)
            return {"ok": True, "job_id": entry.job_id, "status": JobState.QUEUED.value, "attempt": requeued.attempt,
                    "retry": True}
        # Race: the server may requeue this attempt (host judged lost) between our check and this call;
        # finish's rename then fails and its record, of a stale attempt, is ignored by every reader.
        if not self.spool.finish(entry, worker_id, agent_id, state, **details):
            raise _not_owner(entry.job_id, worker_id, "the attempt was superseded meanwhile")
        self.index.place(Location(DONE, state.value), entry)
        return {"ok": True, "job_id": entry.job_id, "status": state.value, "attempt": entry.attempt}


def _is_a(value: object, kinds: type | tuple[type, ...]) -> bool:
    """isinstance, except that JSON's true and false are no integers here."""
    return isinstance(value, kinds) and not isinstance(value, bool)


def agent_id_of(worker_id: str) -> str:
    return f"{AGENT_PREFIX}{worker_id}"


def _reported_details(body: dict) -> dict:
    """The attempt-record fields of a job-status body, type-checked (400 naming the field)."""
    kinds = {"container_id": str, "container_name": str, "error": str, "exit_code": int, "details": dict}
    details = {}
    for key, kind in kinds.items():
        value = body.get(key)
        if value is None:
            continue
        if not _is_a(value, kind):
            raise BadRequest(f"{key!r} must be a {kind.__name__ if kind is not dict else 'JSON object'}", field=key)
        details["worker_details" if key == "details" else key] = value
    return details


def _not_owner(job_id: str, worker_id: str, why: str) -> Conflict:
    return Conflict(f"worker {worker_id!r} does not own job {job_id}: {why}; nothing was changed",
                    job_id=job_id, worker_id=worker_id, reason="not_owner")
