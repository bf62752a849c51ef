"""The job operations behind the API: submit, look up, stop, delete, read outputs.

The HTTP layer calls these with raw request values; everything is validated here or
below, and every change goes through the spool protocol, then into the index so the
caller reads its own write.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator

from . import archive, auth, crashpoints, dependencies, fsio, jobs, logs, names, progress
from .configs import ConfigStore, WriteMode
from .exceptions import BadRequest, Conflict, Forbidden, NotFound, Unavailable
from .fairshare import FairShare
from .index import IndexedJob, JobIndex
from .jobs import JobConfig
from .runtimes.slurm_cluster import ClusterPhase, map_state
from .settings import Settings
from .spool import DONE, WAITING, Entry, JobStatus, Location, Spool, publish_location
from .states import JobState, check_transition
from .usage import AttemptLedger, Usage

# Listing spool/ for host names on every submission costs more than the submission's fsync.
KNOWN_HOSTS_TTL = 1.0
# Followers of one job share one look at whether it ended (a stat and its attempt record) per
# this long, instead of one each per poll: 200 followers would otherwise cost 800 looks a second.
ENDED_CHECK_TTL = 0.5
ENDED_CACHE_LIMIT = 1024
# /jobs rows of ended jobs kept (a row is ~2 KB): an ended job's files no longer change, and reading a row's three
# files costs ~0.3 ms, so that a page of history is read from the share once rather than on every look.
ENDED_ROWS_KEPT = 4096
# The image's words for an ended run in the "status" of result.json and progress.json.
IMAGE_ENDINGS = {"completed": JobState.FINISHED, "failed": JobState.FAILED}
# A delete or stop retries after its entry moved (release, claim, end, requeue): a job makes few moves.
MAX_MOVE_TRIES = 20
# What a resubmission copies from the old job's spec, and what its request may change.
RESUBMITTED_FIELDS = {"job_name", "target_host", "command", "image", "env", "priority", "max_retries", "gpus",
                      "submitted_by", "retry_on_failure", "resources"}
RESUBMIT_OVERRIDES = {"target_host", "priority"}
# The fields of an attempt record that /job-info lists per attempt.
ATTEMPT_FIELDS = ("host", "state", "claimed_at", "started_at", "ended_at", "exit_code", "reason", "retry_at")
MAX_CONFIG_SNAPSHOT_BYTES = 16 * 1024 * 1024
# /status of an active job with a pending stop request (OPEVA's worker protocol); not a state a job is put in.
STOP_REQUESTED = "stop_requested"

class JobService:
    def __init__(self, settings: Settings, spool: Spool, index: JobIndex,
                 on_publish: Callable[[Entry], None] | None = None, fairshare: FairShare | None = None) -> None:
        self.settings = settings
        self.spool = spool
        self.index = index
        self.fairshare = fairshare or FairShare()
        self.configs = ConfigStore(spool.configs_dir)
        self.on_publish = on_publish or (lambda entry: None)
        self._hosts, self._hosts_at = (), None
        self._gpu_counts = {}
        self._ended_seen = {}  # job id -> (monotonic time, ended); see ENDED_CHECK_TTL
        self._ended_rows: OrderedDict[tuple[str, int, int], dict] = OrderedDict()  # see ENDED_ROWS_KEPT
        self._ended_rows_lock = threading.Lock()
        self.ledger = AttemptLedger(spool)  # queue wait and run time of each job, from its attempt records
        self.usage = Usage(index, self.ledger, lambda job: self.meta(job)[0])
        self.queue = None  # the server's queue.QueueView: /status of a queued job tells its place and why it waits
        self.archiver = archive.Archiver(spool, index, settings.lock_dir)

    def known_hosts(self, target: str | None = None) -> tuple[str, ...]:
        """Configured hosts and those with a running/ on the share, listed at most every second
        (and at once when ``target`` is not among them: a new agent is known immediately)."""
        now = time.monotonic()
        if self._hosts_at is None or now - self._hosts_at > KNOWN_HOSTS_TTL or target not in (None, *self._hosts):
            self._hosts = tuple(self.spool.known_hosts(self.settings.hosts))
            self._gpu_counts = self._read_gpu_counts(self._hosts)
            self._hosts_at = now
        return self._hosts

    def host_gpu_counts(self) -> dict[str, int]:
        """{host: how many GPUs it hands out} for the known hosts whose heartbeat says so (refreshed
        with known_hosts). A heartbeat stays on the share while its agent is down, so a host that
        ever ran is known."""
        self.known_hosts()
        return self._gpu_counts

    def _read_gpu_counts(self, hosts):
        counts = {}
        for host in hosts:
            beat = fsio.read_json_object(self.spool.heartbeat_path(host)) or {}
            if isinstance(beat.get("gpu_ids"), list):
                counts[host] = len(beat["gpu_ids"])
        return counts

    # ----- submit -------------------------------------------------------------------------

    def submit(self, body: dict, origin: str = "api", job_id: str | None = None,
               inbox_folder: str = "", config: JobConfig | None = None) -> dict:
        """Validate and publish a job; returns the original API's response fields and more.

        The job's config is snapshotted into its folder (jobs/<id>/config.yaml) as it is now:
        editing configs/ afterwards does not change what a queued job runs. A given ``config``
        (a resubmission's snapshot) is used as it is, instead of the body's.
        """
        job_id = names.job_id(job_id) if job_id else str(uuid.uuid4())
        config, inline = (config, False) if config is not None else self.config_for(body, job_id)
        if config is None and body.get("command") is None:
            raise BadRequest("give 'config_path', an inline 'config', or a 'command'")
        spec = self.build_spec(body, job_id=job_id, config=config, origin=origin, inbox_folder=inbox_folder)
        saved = None
        if inline:
            saved = self.configs.write(config.file_name, config.text,
                                       WriteMode.REPLACE if body.get("overwrite") is True else WriteMode.SAME)
        [rank] = self.fairshare.ranks(spec.priority, spec.submitted_by)
        try:
            entry = self.spool.publish(spec, config.data if config is not None else None, rank)
        except BaseException:
            # Not published (a full or read-only share, an id taken): an inline config saved just now under the
            # job's own name (no save_as) would be nobody's config. One saved as asked (save_as) stays saved.
            if saved is not None and not saved.replaced and not body.get("save_as"):
                fsio.unlink_quietly(os.path.join(self.spool.configs_dir, saved.file_name))
            raise
        location = publish_location(spec)
        self.index.place(location, entry)
        self.on_publish(entry)
        return {
            "job_id": spec.job_id,
            "status": JobState.WAITING.value if location.kind == WAITING else JobState.QUEUED.value,
            "host": spec.target_host,
            "job_name": spec.job_name,
            "config_path": f"configs/{spec.config_file}" if spec.config_file else None,
            "config_sha256": spec.config_sha256 or None,
            "priority": spec.priority,
            "submitted_by": spec.submitted_by,
            "submitted_at": spec.submitted_at,
        }

    def build_spec(self, body: dict, **how) -> jobs.JobSpec:
        """A validated JobSpec for a submission (``how``: build_spec's keywords), its dependencies known."""
        claimed = body.get("submitted_by")
        submitter = auth.current().submitter(claimed)  # with auth on: the caller's user name
        if submitter != claimed:
            body = {**body, "submitted_by": submitter}
        target = body.get("target_host")
        hosts = self.known_hosts(target if isinstance(target, str) and target != jobs.ANY_HOST else None)
        spec = jobs.build_spec(body, hosts, gpu_counts=self.host_gpu_counts(), **how)
        unknown = [job_id for job_id in (*spec.after, *spec.after_any) if job_id not in self.index]
        if unknown:
            raise BadRequest(f"unknown job ids in 'after'/'after_any': {unknown[:10]}", field="after",
                             unknown=unknown[:100])
        return spec

    def config_for(self, body, job_id):
        """(the job's JobConfig or None, whether it came inline and is to be saved under configs/)."""
        inline, path = body.get("config"), body.get("config_path")
        if inline is not None and path:
            raise BadRequest("give either 'config' or 'config_path', not both")
        if inline is not None:
            if not isinstance(inline, dict):
                raise BadRequest("'config' must be a JSON object (the experiment config)")
            save_as = body.get("save_as")
            file_name = names.config_file(save_as) if save_as else f"{job_id}.yaml"
            return JobConfig(file_name, inline, self.configs.serialise(inline)), True
        if path:
            file_name = names.config_file(path)
            try:
                text = self.configs.read_text(file_name)
            except NotFound:
                raise BadRequest(f"config {file_name!r} does not exist under configs/", field="config_path") from None
            return JobConfig(file_name, self.configs.parse(text, f"configs/{file_name}"), text), False
        return None, False

    def resubmit(self, job_id: str, overrides: dict) -> dict:
        """Submit a new job like ``job_id`` (its spec and its config snapshot, not configs/ as it is
        now); ``overrides`` may change target_host and priority."""
        job = self.lookup(job_id)
        spec = self.spool.read_spec(job.location, job.entry)
        if spec is None and self.index.archive.holds(job.entry):  # no entry left: its job_info.json holds the spec
            info = fsio.read_json_object(self.spool.folder(job.entry.job_id).job_info)
            spec = jobs.JobSpec.from_dict(info) if info and info.get("job_id") == job.entry.job_id else None
        if spec is None:
            raise Conflict(f"job {job_id} moved while being read; try again", job_id=job_id)
        unknown = set(overrides) - RESUBMIT_OVERRIDES
        if unknown:
            raise BadRequest(f"a resubmission can change only {sorted(RESUBMIT_OVERRIDES)}, not {sorted(unknown)}")
        config = None
        if spec.config_file:
            text = self.job_config(job_id).decode("utf-8", "replace")
            config = JobConfig(spec.config_file, self.configs.parse(text, f"job {job_id}'s config snapshot"), text)
        body = {key: value for key, value in spec.to_dict().items() if key in RESUBMITTED_FIELDS}
        if not auth.current().is_admin:  # a user's resubmission is that user's job (an admin's keeps its submitter)
            body.pop("submitted_by", None)
        body.update(overrides)
        answer = self.submit(body, origin=spec.origin if spec.origin != "inbox" else "api", config=config)
        return {**answer, "resubmitted_from": spec.job_id}

    # ----- look-ups -----------------------------------------------------------------------

    def lookup(self, job_id: str) -> JobStatus:
        """The job's JobStatus (entry, location, state, host); 404 if there is no such job."""
        job = self.index.get(names.job_id(job_id))
        if job is None:
            raise _no_such_job(job_id)
        return self.index.status_of(job)

    def status(self, job_id: str) -> dict:
        job = self.lookup(job_id)
        answer = {
            "job_id": job.entry.job_id,
            "status": job.state.value,
            "host": job.host,
            "target_host": job.entry.target,
            "attempt": job.entry.attempt,
            "priority": job.entry.priority,
        }
        if job.state.active and self.spool.stop_requested(job.entry.job_id):
            # What a cooperative owner (an HTTP worker polls /status) acts on, on every host alike; it stays
            # until the owner records the ending. job-info keeps the state (the dashboard's badge) and the flag.
            answer.update(status=STOP_REQUESTED, stop_requested=True)
        if job.state == JobState.QUEUED and self.queue is not None:
            answer.update(self.queue.place(job.entry))  # queue_position, waiting_reason
        if job.state == JobState.RUNNING:
            answer.update(queued_at_cluster(self.spool.read_attempt(job.entry) or {}))
        if job.state == JobState.WAITING:
            spec = self.spool.read_spec(job.location, job.entry)
            answer["waiting_for"] = self._waiting_for(spec.to_dict() if spec else {})  # {}: it moved meanwhile
        return answer

    def _waiting_for(self, fields: dict) -> list[dict]:
        """The dependencies a waiting job still waits for, of those its spec (or job_info) names."""
        return dependencies.waiting_for(self.index, fields.get("after") or (), fields.get("after_any") or ())

    def job_info(self, job_id: str) -> dict:
        """job_info.json (which the training image merges into) plus what the owner recorded."""
        job = self.lookup(job_id)
        folder = self.spool.folder(job.entry.job_id)
        info = self._job_json(folder, folder.job_info)
        if info is None:  # half-written by the image: fall back to the spec in the entry
            spec = self.spool.read_spec(job.location, job.entry)
            info = spec.job_info() if spec else {"job_id": job.entry.job_id}
        attempt = self.spool.read_attempt(job.entry) or {}
        for key in ("container_id", "container_name"):
            if not info.get(key) and attempt.get(key):
                info[key] = attempt[key]
        info.update(status=job.state.value, host=job.host,
                    attempt=job.entry.attempt,
                    exit_code=attempt.get("exit_code"), reason=attempt.get("reason"),
                    started_at=attempt.get("started_at"), ended_at=attempt.get("ended_at"),
                    attempts=self.attempts(job))
        info.update(self.ledger.job_times(job.entry, job.state))
        if job.state == JobState.WAITING:
            info["waiting_for"] = self._waiting_for(info)
        if job.state.active and self.spool.stop_requested(job.entry.job_id):
            info["stop_requested"] = True
        if attempt.get("dependency"):  # canceled for it (dependency_failed): which one, and how it ended
            info["dependency"] = attempt["dependency"]
        return info

    def attempts(self, job: JobStatus) -> list[dict]:
        """Every attempt's record, oldest first, in the fields a person reads (missing ones are None:
        an attempt requeued before its runner wrote anything has only its number), with ``log``, the
        path of that attempt's log under the job's folder (None while it has none)."""
        folder = self.spool.folder(job.entry.job_id)
        records = [self.spool.read_attempt(job.entry._replace(attempt=number)) or {}
                   for number in range(1, job.entry.attempt + 1)]
        claimed = bool(records[-1])
        listed = []
        for number, record in enumerate(records, 1):
            if number < job.entry.attempt:
                path = self._earlier_log(job, folder, number, claimed)
            else:
                path = folder.log if claimed else None  # unclaimed, the job's log is still the previous attempt's
            listed.append({"attempt": number, **{key: record.get(key) for key in ATTEMPT_FIELDS},
                           "log": os.path.relpath(path, folder.path) if path and os.path.lexists(path) else None})
        return listed

    def job_config(self, job_id: str) -> bytes:
        """The config snapshot the job runs with (jobs/<id>/config.yaml)."""
        job = self.lookup(job_id)
        folder = self.spool.folder(job.entry.job_id)
        with self._serving(folder.config):
            handle = fsio.open_inside(folder.config, folder.path)
        if handle is None:
            raise NotFound(f"job {job_id} has no config snapshot (it was submitted without a config)",
                           job_id=job_id)
        with handle:
            return handle.read(MAX_CONFIG_SNAPSHOT_BYTES)

    def progress_history(self, job_id: str, since: str | None = None) -> dict:
        job = self.lookup(job_id)
        folder = self.spool.folder(job.entry.job_id)
        moment = progress.parse_since(since) if since else None
        with self._serving(progress.history_path(folder)):
            return {"job_id": job.entry.job_id, "history": progress.read_history(folder, moment)}

    def job_metrics(self, job_id: str, offset: int = 0) -> dict:
        job = self.lookup(job_id)
        folder = self.spool.folder(job.entry.job_id)
        with self._serving(progress.metrics_path(folder)):
            metrics, next_offset = progress.read_metrics(folder, offset)
        return {"job_id": job.entry.job_id, "metrics": metrics, "offset": next_offset}

    def result(self, job_id: str) -> dict:
        return self._output(job_id, "result", {"status": "pending", "message": "Result not ready yet."})

    def progress(self, job_id: str) -> dict:
        return progress.with_both_percent_names(self._output(job_id, "progress", {"progress": "No updates yet."}))

    def _output(self, job_id, name, not_yet):
        """The job's result.json or progress.json (``name``: its JobFolder attribute): as written while
        the job runs (``not_yet`` until there is one), as ended once it has (``_as_ended``)."""
        job = self.lookup(job_id)
        folder = self.spool.folder(job.entry.job_id)
        path = getattr(folder, name)
        doc = self._job_json(folder, path)
        if job.state.terminal:
            return self._as_ended(job, doc, path)
        return doc if doc is not None else not_yet

    def _as_ended(self, job, doc, path):
        """An ended job's result or progress: the file as written if its ``status`` tells this
        ending; else (no file, or the 'pending'/'running' a killed or failing job leaves) the
        file's fields with the job's terminal status, exit code and reason, and a message."""
        said = (doc or {}).get("status")
        if said == job.state.value or IMAGE_ENDINGS.get(said) == job.state:
            return doc
        record = self.spool.read_attempt(job.entry) or {}
        exit_code, reason = record.get("exit_code"), record.get("reason")
        how = [f"exit code {exit_code}"] if exit_code is not None else []
        how += [f"reason {reason}"] if reason else []
        name = os.path.relpath(path, self.spool.folder(job.entry.job_id).path)
        wrote = f"without writing {name}" if doc is None else f"while its {name} said {said!r}"
        ended = f"The job ended as {job.state.value}" + (f" ({', '.join(how)})" if how else "")
        return {**(doc or {}), "status": job.state.value, "exit_code": exit_code, "reason": reason,
                "message": f"{ended} {wrote}."}

    def _job_json(self, folder, path):
        """A JSON object from the job's folder, None while it is not there (or half-written)."""
        with self._serving(path):
            return fsio.read_job_json(path, folder.path)

    @contextlib.contextmanager
    def _serving(self, path):
        """Turn a job file the API cannot serve into its answer, naming the file under the shared
        root: 403 for one that leaves the job's folder or is no regular file (a job can plant
        links and FIFOs), 503 for one the server cannot read (e.g. written mode 0600 by a
        container's root while the server runs as a service user)."""
        shown = os.path.relpath(path, self.spool.root)
        try:
            yield
        except fsio.Refused as exc:
            raise Forbidden(f"{shown} {exc}: the API serves only regular files inside the job's folder",
                            path=shown, reason=str(exc)) from None
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise Unavailable(f"cannot read {shown}: {reason}", path=shown, reason=reason) from None

    def list_jobs(self, status: str | None = None, host: str | None = None, limit: int = 100,
                  cursor: str | None = None, offset: int = 0, submitter: str | None = None,
                  text: str | None = None) -> tuple[list[dict], str | None, int | None]:
        """A page of jobs, newest first. ``submitter`` matches submitted_by exactly; ``text`` is a
        case-insensitive part of the job's id, name or config file."""
        state = None
        if status:
            try:
                state = JobState(status)
            except ValueError:
                raise BadRequest(f"unknown status {status!r}") from None
        if host and host != jobs.ANY_HOST:
            names.host(host)
        after = _parse_cursor(cursor) if cursor else None
        match = self._matcher(submitter, text.lower() if text else None) if submitter or text else None
        jobs_found, next_after, total = self.index.page(state, host or None, limit, after, offset, match,
                                                        submitter or None, text.lower() if text else None)
        items = [self._list_item(job) for job in map(self.index.status_of, jobs_found)]
        next_cursor = f"{-next_after[0]}:{next_after[1]}" if next_after else None
        return items, next_cursor, total

    def _matcher(self, submitter, text):
        def match(job: IndexedJob) -> bool:
            submitted_by, searched = self.meta(job)
            return (not submitter or submitted_by == submitter) and (not text or text in searched)
        return match

    def meta(self, job: IndexedJob) -> tuple[str, str]:
        """(submitter, lower-cased "id name config-file") of an indexed job, read from its entry once: a
        spec never changes. Race: the entry can move while read; then nothing matches this time and
        the next call reads again."""
        if job.meta is None:
            spec = self.spool.read_spec(job.location, job.entry)
            if spec is None:
                return ("", "")
            job.meta = (spec.submitted_by, f"{job.entry.job_id} {spec.job_name} {spec.config_file}".lower())
        return job.meta

    def _list_item(self, job: JobStatus) -> dict:
        """One row of /jobs; an ended job's is read once and kept (ENDED_ROWS_KEPT), keyed by its attempt and
        submit time: a job deleted and submitted again under its id is another key."""
        if not job.state.terminal:
            return self._read_list_item(job)
        key = (job.entry.job_id, job.entry.submit_ns, job.entry.attempt)
        with self._ended_rows_lock:
            row = self._ended_rows.get(key)
            if row is not None:
                self._ended_rows.move_to_end(key)
                return dict(row)
        row = self._read_list_item(job)
        with self._ended_rows_lock:
            self._ended_rows[key] = row
            if len(self._ended_rows) > ENDED_ROWS_KEPT:
                self._ended_rows.popitem(last=False)
        return dict(row)

    def _read_list_item(self, job: JobStatus) -> dict:
        """One row of /jobs: the original fields (job_id, status, host, submitted_at, job_info) and what a
        list shows besides (name, submitter, attempt times, progress), each job file read at most once."""
        folder = self.spool.folder(job.entry.job_id)
        info = self._quiet_json(folder, folder.job_info)
        record = {} if job.state == JobState.QUEUED else (self.spool.read_attempt(job.entry) or {})
        if job.state == JobState.FINISHED:
            percent = 100.0
        elif job.state == JobState.QUEUED:
            percent = None
        else:
            percent = progress_percent(self._quiet_json(folder, folder.progress))
        return {
            "job_id": job.entry.job_id,
            "status": job.state.value,
            "host": job.host,
            "submitted_at": info.get("submitted_at"),
            "job_name": info.get("job_name"),
            "submitted_by": info.get("submitted_by") or "",
            "target_host": job.entry.target,
            "priority": job.entry.priority,
            "attempt": job.entry.attempt,
            "started_at": record.get("started_at"),
            "ended_at": record.get("ended_at"),
            "progress_pct": percent,
            **self.ledger.job_times(job.entry, job.state),
            "sweep": info.get("sweep"),
            "job_info": info,
        }

    @staticmethod
    def _quiet_json(folder, path):
        """A job file for a list: one unreadable file must not fail the list (its own route names the problem)."""
        try:
            return fsio.read_job_json(path, folder.path) or {}
        except (fsio.Refused, OSError):
            return {}

    # ----- changes ------------------------------------------------------------------------

    def stop(self, job_id: str, by: str = "") -> dict:
        """Cancel a queued or waiting job at once; ask the owner of a running one to stop it."""
        job = self.lookup(job_id)
        self.check_owner(job_id)
        # A waiting job can be released into queued/ while we cancel it, and a queued one claimed: each
        # lost rename re-finds the job, and a job still not started is canceled where it is now.
        for _ in range(MAX_MOVE_TRIES):
            if job.state not in (JobState.QUEUED, JobState.WAITING):
                break
            if self.spool.cancel_queued(job.entry, job.location):
                self.index.place(Location(DONE, JobState.CANCELED.value), job.entry)
                return {"message": f"job {job_id} canceled before it started", "status": JobState.CANCELED.value}
            job = self._refound(job)  # released, claimed meanwhile, or a delete took it
        if job.state == JobState.NOT_FOUND:
            raise _no_such_job(job_id)
        check_transition(job.state, JobState.STOPPED)  # 409 unless dispatched or running
        self.spool.request_stop(job.entry.job_id, by)
        crashpoints.reach("stop.requested")
        return {"message": f"stop requested; host {job.host} stops job {job_id}",
                "status": job.state.value,
                "stop_requested": True}

    def delete(self, job_id: str, force: bool = False) -> dict:
        """Remove a job's entry and folder; a running job only with ``force``.

        The entry's rename into the trash decides: of concurrent deletes exactly one's
        succeeds, and the others answer 404, as every read does from then on. The entry
        can move under us (claimed, ended, requeued): then it is re-found and the checks
        run again. An active job's owner sees its entry gone and kills the attempt
        (Runner.stop_reason ``entry_removed``); its late record write finds no folder.
        """
        job = self.lookup(job_id)
        self.check_owner(job_id)
        for _ in range(MAX_MOVE_TRIES):
            if job.state == JobState.NOT_FOUND:
                raise _no_such_job(job_id)  # another delete won
            if job.state.active and not force:
                raise Conflict(f"job {job_id} is {job.state.value}; stop it first or delete with ?force=1",
                               status=job.state.value, job_id=job_id)
            # Race: an archive pass moves ended jobs from done/ into month files; holding its lock, this delete
            # finds the job in one place or the other, never half moved.
            with self.archiver.writing() if job.location.kind == DONE else contextlib.nullcontext():
                trashed = self.spool.trash(self.spool.entry_path(job.location, job.entry))
                # An archived job has no entry (or one a crash left beside its row): its row is taken out of its
                # month file, the commit point of its delete.
                if self.index.archive.holds(job.entry):
                    trashed = self.archiver.remove_row(job.entry) or trashed
            if trashed:
                break
            job = self._refound(job)
        else:
            raise Conflict(f"job {job_id} kept moving while being deleted; try again", job_id=job_id)
        self.index.deleted(job.entry)
        crashpoints.reach("delete.entry_trashed")
        # A crash here leaves a folder without an entry, which start-up recovery trashes.
        self.spool.trash(self.spool.folder(job.entry.job_id).path)
        # A stop asked for earlier has nothing left to stop; gone now, it cannot stop a later job of this id.
        self.spool.clear_stop_request(job.entry.job_id)
        return {"message": f"job {job_id} deleted", "job_id": job_id, "previous_status": job.state.value}

    def check_owner(self, job_id: str) -> None:
        """403 unless the caller submitted the job, is an admin, or auth is off."""
        identity = auth.current()
        if not identity.authenticated or identity.is_admin:
            return
        owner = ""
        for _ in range(MAX_MOVE_TRIES):  # the spec read fails while its entry moves (meta stays None): read again
            indexed = self.index.get(job_id)
            if indexed is None:
                raise _no_such_job(job_id)
            owner = self.meta(indexed)[0]
            if indexed.meta is not None:
                break
        identity.check_owner(owner, f"job {job_id}")

    def _refound(self, job):
        """The job re-found on disk after losing a race on it; its state is ``not_found`` if it is gone."""
        indexed = self.index.resolve(job.entry.job_id)
        if indexed is None:
            return job._replace(state=JobState.NOT_FOUND)
        return self.index.status_of(indexed)

    # ----- logs ---------------------------------------------------------------------------

    def log_path(self, job_id: str, attempt: int | None = None) -> tuple[JobStatus, str]:
        """The job and the path of its log (of ``attempt``, default the current one), once a log that
        cannot be served got its 403/503: a stream cannot answer with an error after it has begun."""
        job = self.lookup(job_id)
        folder = self.spool.folder(job.entry.job_id)
        if attempt is not None and not 1 <= attempt <= job.entry.attempt:
            raise NotFound(f"job {job_id} has no attempt {attempt} (its attempts are 1 to {job.entry.attempt})",
                           job_id=job_id)
        if attempt in (None, job.entry.attempt):
            path = folder.log
        else:
            path = self._earlier_log(job, folder, attempt, self.spool.read_attempt(job.entry) is not None)
        with self._serving(path):
            handle = fsio.open_inside(path, folder.path)
        if handle is not None:
            handle.close()
        return job, path

    def _earlier_log(self, job: JobStatus, folder: jobs.JobFolder, attempt: int, current_claimed: bool) -> str:
        """Where an earlier ``attempt``'s log is. The runner of the current attempt moves it aside (``Runner``)
        once that attempt is claimed; until then, the job's log is still the last one that ran's."""
        path = folder.attempt_log(attempt)
        if not current_claimed and not os.path.lexists(path) and attempt == self.spool.log_attempt(job.entry):
            return folder.log
        return path

    def log_stream(self, job_id: str, tail: int | None = None, follow: bool = False,
                   gone: Callable[[], bool] | None = None, attempt: int | None = None) -> Iterator[bytes]:
        """Chunks of the job's log: all of it or its last ``tail`` lines, then (follow) new ones until
        the job ends or ``gone()`` says the reader left (checked at every poll for new lines). An
        earlier attempt's log is complete: following it ends at its end."""
        job, path = self.log_path(job_id, attempt)
        follow = follow and path == self.spool.folder(job.entry.job_id).log
        return logs.stream_log(path, tail, follow, lambda: self._ended(job.entry.job_id), gone or _never)

    def _ended(self, job_id):
        now = time.monotonic()
        seen = self._ended_seen.get(job_id)
        if seen is not None and now - seen[0] < ENDED_CHECK_TTL:
            return seen[1]
        job = self.index.get(job_id)
        ended = job is None or self.index.state_of(job).terminal
        # Race: two followers may both look and both store; the answers agree, and dict
        # operations are atomic, so no lock is needed. The cache only ever holds recent looks.
        if len(self._ended_seen) >= ENDED_CACHE_LIMIT:
            self._ended_seen.clear()
        self._ended_seen[job_id] = (now, ended)
        return ended


def progress_percent(doc: dict) -> float | None:
    """The percentage a progress.json says (``progress_pct``, or ``percent`` as some writers name it)."""
    for key in ("progress_pct", "percent"):
        value = doc.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _never():
    return False


def queued_at_cluster(record: dict) -> dict:
    """``{"queued_at_cluster": {reason, position}}`` while a Slurm host's attempt waits at its cluster, else {}."""
    if map_state(str(record.get("cluster_state") or ""))[0] is not ClusterPhase.PENDING:
        return {}
    return {"queued_at_cluster": {"reason": record.get("cluster_reason"), "position": record.get("cluster_position")}}


def _no_such_job(job_id):
    return NotFound(f"no job {job_id!r}", job_id=job_id, status=JobState.NOT_FOUND.value)


def _parse_cursor(cursor):
    submit_ns, _, job_id = cursor.partition(":")
    if not submit_ns.isdigit() or not names.JOB_ID.match(job_id):
        raise BadRequest(f"invalid cursor {cursor!r}")
    return (-int(submit_ns), job_id)
