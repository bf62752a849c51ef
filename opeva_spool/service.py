"""The job operations behind the API: submit, look up, stop, delete, read outputs.

The HTTP layer calls these with raw request values; everything is validated here or
below, and every change goes through the spool protocol, then into the index so the
caller reads its own write.
"""

import os
import time
import uuid

import yaml

from . import fsio, jobs, names
from .exceptions import BadRequest, Conflict, NotFound
from .spool import DONE, QUEUED, Location
from .states import JobState, check_transition

MAX_CONFIG_BYTES = 512 * 1024
LOG_CHUNK = 64 * 1024
FOLLOW_POLL_SECONDS = 0.25
# Listing spool/ for host names on every submission costs more than the submission's fsync.
KNOWN_HOSTS_TTL = 1.0


def parse_config_text(text, source):
    """The YAML mapping in ``text``; 400 unless it is one (safe_load only)."""
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BadRequest(f"{source} is not valid YAML: {exc}") from None
    if not isinstance(config, dict):
        raise BadRequest(f"{source} must be a YAML mapping")
    return config


class JobService:
    def __init__(self, settings, spool, index, on_publish=None):
        self.settings = settings
        self.spool = spool
        self.index = index
        self.on_publish = on_publish or (lambda entry: None)
        self._hosts, self._hosts_at = (), None

    def known_hosts(self, target=None):
        """Configured hosts and those with a running/ on the share, listed at most every second
        (and at once when ``target`` is not among them: a new agent is known immediately)."""
        now = time.monotonic()
        if self._hosts_at is None or now - self._hosts_at > KNOWN_HOSTS_TTL or target not in (None, *self._hosts):
            self._hosts = tuple(sorted(set(self.settings.hosts) | set(self.spool.worker_hosts())))
            self._hosts_at = now
        return self._hosts

    # ----- submit -------------------------------------------------------------------------

    def submit(self, body, origin="api", job_id=None):
        """Validate and publish a job; returns the original API's response fields and more."""
        job_id = names.job_id(job_id) if job_id else str(uuid.uuid4())
        config, config_file, config_text = self._config_for(body, job_id)
        if config_file is None and body.get("command") is None:
            raise BadRequest("give 'config_path', an inline 'config', or a 'command'")
        target = body.get("target_host")
        hosts = self.known_hosts(target if isinstance(target, str) and target != jobs.ANY_HOST else None)
        spec = jobs.build_spec(body, hosts, config_file, config, job_id=job_id, origin=origin)
        entry = self.spool.publish(spec, config_text, "replace" if body.get("overwrite") is True else "same")
        self.index.place(Location(QUEUED), entry)
        self.on_publish(entry)
        return {
            "job_id": spec.job_id,
            "status": JobState.QUEUED.value,
            "host": spec.target_host,
            "job_name": spec.job_name,
            "config_path": f"configs/{config_file}" if config_file else None,
            "priority": spec.priority,
            "submitted_at": spec.submitted_at,
        }

    def _config_for(self, body, job_id):
        """(parsed config, file name under configs/ or None, text to save or None)."""
        inline, path = body.get("config"), body.get("config_path")
        if inline is not None and path:
            raise BadRequest("give either 'config' or 'config_path', not both")
        if inline is not None:
            if not isinstance(inline, dict):
                raise BadRequest("'config' must be a JSON object (the experiment config)")
            save_as = body.get("save_as")
            file_name = names.config_file(save_as) if save_as else f"{job_id}.yaml"
            text = yaml.safe_dump(inline, sort_keys=False)
            if len(text) > MAX_CONFIG_BYTES:
                raise BadRequest(f"the config is larger than {MAX_CONFIG_BYTES} bytes")
            return inline, file_name, text
        if path:
            file_name = names.config_file(path)
            full = names.safe_join(self.spool.configs_dir, file_name)
            try:
                with open(full, encoding="utf-8") as handle:
                    text = handle.read(MAX_CONFIG_BYTES + 1)
            except FileNotFoundError:
                raise BadRequest(f"config {file_name!r} does not exist under configs/", field="config_path") from None
            return parse_config_text(text, f"configs/{file_name}"), file_name, None
        return None, None, None

    # ----- look-ups -----------------------------------------------------------------------

    def lookup(self, job_id):
        """The job's JobStatus (entry, location, state, host); 404 if there is no such job."""
        job = self.index.get(names.job_id(job_id))
        if job is None:
            raise NotFound(f"no job {job_id!r}", job_id=job_id, status=JobState.NOT_FOUND.value)
        return self.index.status_of(job)

    def status(self, job_id):
        job = self.lookup(job_id)
        return {
            "job_id": job.entry.job_id,
            "status": job.state.value,
            "host": job.host,
            "target_host": job.entry.target,
            "attempt": job.entry.attempt,
            "priority": job.entry.priority,
        }

    def job_info(self, job_id):
        """job_info.json (which the training image merges into) plus what the owner recorded."""
        job = self.lookup(job_id)
        folder = self.spool.folder(job.entry.job_id)
        info = fsio.read_json_object(folder.job_info)
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
                    started_at=attempt.get("started_at"), ended_at=attempt.get("ended_at"))
        return info

    def result(self, job_id):
        job = self.lookup(job_id)
        result = fsio.read_json_object(self.spool.folder(job.entry.job_id).result)
        return result if result is not None else {"status": "pending", "message": "Result not ready yet."}

    def progress(self, job_id):
        job = self.lookup(job_id)
        progress = fsio.read_json_object(self.spool.folder(job.entry.job_id).progress)
        return progress if progress is not None else {"progress": "No updates yet."}

    def list_jobs(self, status=None, host=None, limit=100, cursor=None, offset=0):
        state = None
        if status:
            try:
                state = JobState(status)
            except ValueError:
                raise BadRequest(f"unknown status {status!r}") from None
        if host and host != jobs.ANY_HOST:
            names.host(host)
        after = _parse_cursor(cursor) if cursor else None
        jobs_found, next_after, total = self.index.page(state, host or None, limit, after, offset)
        items = []
        for job in map(self.index.status_of, jobs_found):
            info = fsio.read_json_object(self.spool.folder(job.entry.job_id).job_info) or {}
            items.append({
                "job_id": job.entry.job_id,
                "status": job.state.value,
                "host": job.host,
                "submitted_at": info.get("submitted_at"),
                "job_info": info,
            })
        next_cursor = f"{-next_after[0]}:{next_after[1]}" if next_after else None
        return items, next_cursor, total

    # ----- changes ------------------------------------------------------------------------

    def stop(self, job_id, by=""):
        """Cancel a queued job at once; ask the owner of a running one to stop it."""
        job = self.lookup(job_id)
        if job.state == JobState.QUEUED:
            check_transition(job.state, JobState.CANCELED)
            if self.spool.cancel_queued(job.entry):
                self.index.place(Location(DONE, JobState.CANCELED.value), job.entry)
                return {"message": f"job {job_id} canceled before it started", "status": JobState.CANCELED.value}
            job = self._refound(job)  # a host claimed it meanwhile
        state = job.state
        check_transition(state, JobState.STOPPED)  # 409 unless dispatched or running
        self.spool.request_stop(job.entry.job_id, by)
        return {"message": f"stop requested; host {job.host} stops job {job_id}",
                "status": state.value,
                "stop_requested": True}

    def delete(self, job_id, force=False):
        """Remove a job's entry and folder; a running job only with ``force`` (it is stopped)."""
        job = self.lookup(job_id)
        if job.state == JobState.QUEUED and not self.spool.cancel_queued(job.entry):
            job = self._refound(job)
        state = job.state
        if state.active:
            if not force:
                raise Conflict(f"job {job_id} is {state.value}; stop it first or delete with ?force=1",
                               status=state.value, job_id=job_id)
            # The owner sees its entry gone and kills the attempt (Runner.stop_reason).
            self.spool.request_stop(job.entry.job_id, "delete")
        location = self.spool.find(job.entry, hint=job.location)
        if location is not None:
            self.spool.trash(self.spool.entry_path(location, job.entry))
        self.spool.trash(self.spool.folder(job.entry.job_id).path)
        self.spool.clear_stop_request(job.entry.job_id)
        self.index.forget(job.entry.job_id)
        return {"message": f"job {job_id} deleted", "job_id": job_id, "previous_status": state.value}

    def _refound(self, job):
        """The job re-found on disk after losing a race on it; its state is ``not_found`` if it is gone."""
        indexed = self.index.resolve(job.entry.job_id)
        if indexed is None:
            return job._replace(state=JobState.NOT_FOUND)
        return self.index.status_of(indexed)

    # ----- logs ---------------------------------------------------------------------------

    def log_path(self, job_id):
        job = self.lookup(job_id)
        return job, self.spool.folder(job.entry.job_id).log

    def log_stream(self, job_id, tail=None, follow=False, gone=None):
        """Chunks of the job's log: all of it or its last ``tail`` lines, then (follow) new ones until
        the job ends or ``gone()`` says the reader left (checked at every poll for new lines)."""
        job, path = self.log_path(job_id)
        return _stream_log(path, tail, follow, lambda: self._ended(job.entry.job_id), gone or _never)

    def _ended(self, job_id):
        job = self.index.get(job_id)
        return job is None or self.index.state_of(job).terminal


def _parse_cursor(cursor):
    submit_ns, _, job_id = cursor.partition(":")
    if not submit_ns.isdigit() or not names.JOB_ID.match(job_id):
        raise BadRequest(f"invalid cursor {cursor!r}")
    return (-int(submit_ns), job_id)


def tail_offset(handle, lines):
    """Byte offset where the last ``lines`` lines start, reading backwards in blocks."""
    end = handle.seek(0, os.SEEK_END)
    if lines <= 0:
        return end
    position, newlines = end, 0
    # A trailing newline ends the last line rather than starting an empty one.
    if end:
        handle.seek(end - 1)
        if handle.read(1) == b"\n":
            position -= 1
    while position > 0:
        size = min(LOG_CHUNK, position)
        position -= size
        handle.seek(position)
        block = handle.read(size)
        for i in range(len(block) - 1, -1, -1):
            if block[i] == 10:
                newlines += 1
                if newlines == lines:
                    return position + i + 1
    return 0


def _open_or_none(path):
    try:
        return open(path, "rb")
    except FileNotFoundError:
        return None


def _never():
    return False


def _stream_log(path, tail, follow, ended, gone):
    handle = _open_or_none(path)
    if handle is None and not follow:
        return
    try:
        if handle is not None and tail is not None:
            handle.seek(tail_offset(handle, tail))
        finishing = False
        while not gone():  # a follower that left, or a closing server, ends the stream within a poll
            if handle is None:
                handle = _open_or_none(path)
            chunk = handle.read(LOG_CHUNK) if handle else b""
            if chunk:
                yield chunk
                continue
            if not follow or finishing:
                return
            # One more pass after the job ended: its last lines may land just before that.
            finishing = ended()
            if not finishing:
                time.sleep(FOLLOW_POLL_SECONDS)
    finally:
        if handle is not None:
            handle.close()
