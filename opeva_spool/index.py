"""The in-memory job index: answers /status and /jobs without re-reading the tree.

It holds, per job, only the entry (parsed from its file name) and where it is. It is
fed three ways, and none of them alone is trusted:
- the server's own writes (publish, cancel, delete, requeue) update it synchronously,
  so a client reads its own writes;
- watchdog events from the spool directories (hints: inotify misses other NFS hosts);
- ``sync()``, a periodic listing of the spool (the truth), and ``resolve()``, which
  re-finds a single job by stat when the index's idea of it turns out to be stale.
Events and listings can be older than the server's own writes: a deleted job leaves a
tombstone so that they cannot bring it back (``deleted``).
The state rule itself (location + attempt record) is the spool's (``Spool.state_at``); a
running entry's finer state is read from its attempt record on each request: one small
file, only for jobs on a host.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from collections.abc import Callable

from .spool import DONE, QUEUED, RUNNING, WAITING, Entry, JobStatus, Location
from .states import JobState

# Coarse buckets the index can tell from locations alone; "active" is everything in a running/.
ACTIVE = "active"
STATUS_BUCKET = {
    JobState.WAITING: WAITING,
    JobState.QUEUED: QUEUED,
    JobState.DISPATCHED: ACTIVE,
    JobState.RUNNING: ACTIVE,
}
# How long a deleted entry's tombstone is kept: far longer than any event delay (the polling observer's
# poll, a second) or a listing of the spool takes.
TOMBSTONE_SECONDS = 300.0


class IndexedJob:
    __slots__ = ("entry", "generation", "location", "meta", "ran_on")

    def __init__(self, entry, location, ran_on, generation):
        self.entry = entry
        self.meta = None  # what list filters match on, read once from the entry (see JobService.meta)
        self.location = location
        self.ran_on = ran_on  # the host it ran on, when the index saw it on one
        self.generation = generation

    @property
    def bucket(self) -> str:
        if self.location.kind == RUNNING:
            return ACTIVE
        if self.location.kind == DONE:
            return self.location.detail
        return self.location.kind  # queued or waiting

    @property
    def order_key(self) -> tuple[int, str]:
        return (-self.entry.submit_ns, self.entry.job_id)

    @property
    def host(self) -> str:
        if self.location.kind == RUNNING:
            return self.location.detail
        return self.ran_on or self.entry.target


class JobIndex:
    def __init__(self, spool):
        self.spool = spool
        # Called with (job_id, IndexedJob) after each placement and (job_id, None) when a job is forgotten;
        # the event tracker sets it (events.TransitionTracker.job_changed).
        self.on_change = lambda job_id, job: None
        self._lock = threading.RLock()
        self._jobs = {}
        self._order = []  # order keys, newest first
        self._buckets = {}  # bucket -> order keys, newest first
        self._generation = 0
        self._tombstones = {}  # (job_id, submit_ns) of deleted entries -> when, oldest first

    def __len__(self):
        return len(self._jobs)

    def __contains__(self, job_id):
        return job_id in self._jobs

    # ----- feeding ------------------------------------------------------------------------

    def place(self, location: Location, entry: Entry) -> IndexedJob | None:
        """The entry is now at ``location`` (from a listing, an event or our own write); None if it was deleted."""
        job = self._place(location, entry)
        if job is not None:
            self.on_change(entry.job_id, job)  # outside the lock: it may read the job's attempt record
        return job

    def _place(self, location, entry):
        with self._lock:
            if (entry.job_id, entry.submit_ns) in self._tombstones:
                return None  # late news of a deleted job (see deleted)
            job = self._jobs.get(entry.job_id)
            if job is None:
                job = IndexedJob(entry, location, None, self._generation)
                self._jobs[entry.job_id] = job
                bisect.insort(self._order, job.order_key)
                bisect.insort(self._buckets.setdefault(job.bucket, []), job.order_key)
                return job
            if entry.submit_ns == job.entry.submit_ns and entry.attempt < job.entry.attempt:
                # Race: news of an earlier attempt (a watcher event delivered late, e.g. the claim of an attempt
                # requeued since, or a superseded attempt's late move) must not take the job back: attempts
                # only ever grow, and readers hold this very IndexedJob.
                return job
            self._unbucket(job)
            if job.location.kind == RUNNING:
                job.ran_on = job.location.detail
            job.entry, job.location, job.generation = entry, location, self._generation
            bisect.insort(self._buckets.setdefault(job.bucket, []), job.order_key)
            return job

    def vacate(self, location: Location, entry: Entry) -> None:
        """The entry left ``location`` (a delete or a move event); find where it went."""
        with self._lock:
            job = self._jobs.get(entry.job_id)
            if job is None or job.location != location or job.entry != entry:
                return
        self.resolve(entry.job_id)

    def forget(self, job_id: str) -> None:
        with self._lock:
            job = self._jobs.pop(job_id, None)
            if job is not None:
                self._unbucket(job)
                _remove_sorted(self._order, job.order_key)
                self.on_change(job_id, None)

    def deleted(self, entry: Entry) -> None:
        """The job of ``entry`` was deleted: forget it, and ignore any later placement of its entry.

        Race: an event (delivered by another thread, or a poll later) or a listing made before the
        delete can arrive after it, and would place the job back. A deleted entry never comes
        back (a new job under the same id has a new submit time), so its tombstone is exact;
        tombstones only expire to bound memory.
        """
        now = time.monotonic()
        with self._lock:
            self.forget(entry.job_id)
            self._tombstones[(entry.job_id, entry.submit_ns)] = now
            while now - next(iter(self._tombstones.values())) > TOMBSTONE_SECONDS:
                del self._tombstones[next(iter(self._tombstones))]

    def _unbucket(self, job):
        _remove_sorted(self._buckets.get(job.bucket, []), job.order_key)

    def resolve(self, job_id: str) -> IndexedJob | None:
        """Re-find one job on disk by stat; updates and returns it (None if gone)."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            return None
        location = self.spool.find(job.entry, hint=job.location)
        if location is None:
            # A requeue renames the entry to its next attempt in queued/.
            requeued = job.entry.next_attempt()
            if os.path.exists(self.spool.entry_path(Location(QUEUED), requeued)):
                return self.place(Location(QUEUED), requeued)
            with self._lock:
                # Someone may have placed it anew (a requeue renames the entry) meanwhile.
                if self._jobs.get(job_id) is job and self.spool.find(job.entry) is None:
                    self.forget(job_id)
                    return None
                return self._jobs.get(job_id)
        return self.place(location, job.entry)

    def sync(self, include_done: bool = True) -> None:
        """Reconcile with a listing of the spool; done/ is large, so callers list it less often."""
        with self._lock:
            self._generation += 1
            started = self._generation
        seen = {}
        for location, entry in self.spool.scan(include_done=include_done):
            previous = seen.get(entry.job_id)
            # An entry moving during the listing can be seen twice; the later attempt, then the later stage wins.
            if previous is None or (entry.attempt, _stage(location)) >= (previous[1].attempt, _stage(previous[0])):
                seen[entry.job_id] = (location, entry)
        for location, entry in seen.values():
            job = self._jobs.get(entry.job_id)
            if job is None or job.location != location or job.entry != entry:
                self.place(location, entry)
        with self._lock:
            missing = [
                job_id for job_id, job in self._jobs.items()
                if job_id not in seen and job.generation < started
                and (include_done or job.location.kind != DONE)
            ]
        for job_id in missing:
            self.resolve(job_id)

    # ----- reading ------------------------------------------------------------------------

    def get(self, job_id: str) -> IndexedJob | None:
        """The indexed job, re-resolved if its entry is no longer where the index thought."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            return None
        if job.location.kind == DONE:
            return job  # entries in done/ only ever leave by a delete, which we do ourselves
        if self.spool.find(job.entry, hint=job.location) != job.location:
            return self.resolve(job_id)
        return job

    def state_of(self, job: IndexedJob) -> JobState:
        return self.spool.state_at(job.location, job.entry)

    def host_of(self, job: IndexedJob) -> str:
        """The host a job is on or ran on; for an ended ``any`` job the index did not see run, from its attempt record
        (remembered: an ended job does not move again)."""
        if job.ran_on is None and job.location.kind == DONE:
            job.ran_on = self.spool.host_at(job.location, job.entry)
        return job.host

    def status_of(self, job: IndexedJob) -> JobStatus:
        """The spool's JobStatus for an indexed job."""
        return JobStatus(job.entry, job.location, self.state_of(job), self.host_of(job))

    def job_ids(self) -> set[str]:
        with self._lock:
            return set(self._jobs)

    def jobs(self) -> list[IndexedJob]:
        with self._lock:
            return list(self._jobs.values())

    def page(self, status: JobState | None = None, host: str | None = None, limit: int = 100,
             after: tuple[int, str] | None = None, offset: int = 0,
             match: Callable[[IndexedJob], bool] | None = None,
             ) -> tuple[list[IndexedJob], tuple[int, str] | None, int | None]:
        """Indexed jobs newest first, filtered; ``after`` is the order key of the last one seen.

        Returns (jobs, next_after, total); total is None when counting would mean
        looking at every job (host filters, ``match``, states read from attempt records).
        The filters run outside the lock on a copy of the keys: they may read files (attempt
        records, entries for ``match``), and the index must keep taking events meanwhile.
        """
        with self._lock:
            keys = self._order if status is None else self._buckets.get(STATUS_BUCKET.get(status, status.value), [])
            start = bisect.bisect_right(keys, after) if after is not None else 0
            start += offset
            exact = host is None and match is None and status not in (JobState.DISPATCHED, JobState.RUNNING)
            total = len(keys) if exact else None
            keys = keys[start:] if not exact else keys[start:start + limit + 1]
        jobs = []
        position = 0
        while position < len(keys) and len(jobs) < limit:
            job = self._jobs.get(keys[position][1])
            position += 1
            if job is None:
                continue  # deleted since the copy
            if host is not None and self.host_of(job) != host:
                continue
            if status in (JobState.DISPATCHED, JobState.RUNNING) and self.state_of(job) != status:
                continue
            if match is not None and not match(job):
                continue
            jobs.append(job)
        next_after = keys[position - 1] if position < len(keys) and jobs else None
        return jobs, next_after, total

    def active(self) -> list[IndexedJob]:
        """The jobs on a host (dispatched or running: which one is in each attempt record), newest first."""
        with self._lock:
            return [self._jobs[job_id] for _, job_id in self._buckets.get(ACTIVE, [])]

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {bucket: len(keys) for bucket, keys in self._buckets.items() if keys}


def _remove_sorted(keys, key):
    position = bisect.bisect_left(keys, key)
    if position < len(keys) and keys[position] == key:
        del keys[position]


def _stage(location):
    return {WAITING: 0, QUEUED: 1, RUNNING: 2, DONE: 3}[location.kind]

