"""The in-memory job index: answers /status and /jobs without re-reading the tree.

It holds, per job, only the entry (parsed from its file name) and where it is. It is
fed three ways, and none of them alone is trusted:
- the server's own writes (publish, cancel, delete, requeue) update it synchronously,
  so a client reads its own writes;
- watchdog events from the spool directories (hints: inotify misses other NFS hosts);
- ``sync()``, a periodic listing of the spool (the truth), and ``resolve()``, which
  re-finds a single job by stat when the index's idea of it turns out to be stale.
A running entry's finer state (dispatched, running, or ended but not yet moved) is read
from its attempt record on each request: one small file, only for jobs on a host.
"""

import bisect
import os
import threading

from .jobs import ANY_HOST
from .spool import DONE, QUEUED, RUNNING, Location
from .states import JobState

# Coarse buckets the index can tell from locations alone; "active" is everything in a running/.
ACTIVE = "active"
STATUS_BUCKET = {
    JobState.QUEUED: QUEUED,
    JobState.DISPATCHED: ACTIVE,
    JobState.RUNNING: ACTIVE,
}


class JobRecord:
    __slots__ = ("entry", "location", "ran_on", "generation")

    def __init__(self, entry, location, ran_on, generation):
        self.entry = entry
        self.location = location
        self.ran_on = ran_on  # the host it ran on, when the index saw it on one
        self.generation = generation

    @property
    def bucket(self):
        if self.location.kind == RUNNING:
            return ACTIVE
        if self.location.kind == DONE:
            return self.location.detail
        return QUEUED

    @property
    def order_key(self):
        return (-self.entry.submit_ns, self.entry.job_id)

    @property
    def host(self):
        if self.location.kind == RUNNING:
            return self.location.detail
        return self.ran_on or self.entry.target


class JobIndex:
    def __init__(self, spool):
        self.spool = spool
        self._lock = threading.RLock()
        self._records = {}
        self._order = []  # order keys, newest first
        self._buckets = {}  # bucket -> order keys, newest first
        self._generation = 0

    def __len__(self):
        return len(self._records)

    def __contains__(self, job_id):
        return job_id in self._records

    # ----- feeding ------------------------------------------------------------------------

    def place(self, location, entry):
        """The entry is now at ``location`` (from a listing, an event or our own write)."""
        with self._lock:
            record = self._records.get(entry.job_id)
            if record is None:
                record = JobRecord(entry, location, None, self._generation)
                self._records[entry.job_id] = record
                bisect.insort(self._order, record.order_key)
                bisect.insort(self._buckets.setdefault(record.bucket, []), record.order_key)
                return record
            if location.kind == DONE and record.location.kind != DONE and entry.attempt < record.entry.attempt:
                return record  # a superseded attempt's late move; the current attempt is what counts
            self._unbucket(record)
            if record.location.kind == RUNNING:
                record.ran_on = record.location.detail
            record.entry, record.location, record.generation = entry, location, self._generation
            bisect.insort(self._buckets.setdefault(record.bucket, []), record.order_key)
            return record

    def vacate(self, location, entry):
        """The entry left ``location`` (a delete or a move event); find where it went."""
        with self._lock:
            record = self._records.get(entry.job_id)
            if record is None or record.location != location or record.entry != entry:
                return
        self.resolve(entry.job_id)

    def forget(self, job_id):
        with self._lock:
            record = self._records.pop(job_id, None)
            if record is not None:
                self._unbucket(record)
                _remove_sorted(self._order, record.order_key)

    def _unbucket(self, record):
        _remove_sorted(self._buckets.get(record.bucket, []), record.order_key)

    def resolve(self, job_id):
        """Re-find one job on disk by stat; updates and returns its record (None if gone)."""
        with self._lock:
            record = self._records.get(job_id)
        if record is None:
            return None
        location = self.spool.find(record.entry, hint=record.location)
        if location is None:
            # A requeue renames the entry to its next attempt in queued/.
            requeued = record.entry.next_attempt()
            if os.path.exists(self.spool.entry_path(Location(QUEUED), requeued)):
                return self.place(Location(QUEUED), requeued)
            with self._lock:
                # Someone may have placed it anew (a requeue renames the entry) meanwhile.
                if self._records.get(job_id) is record and self.spool.find(record.entry) is None:
                    self.forget(job_id)
                    return None
                return self._records.get(job_id)
        return self.place(location, record.entry)

    def sync(self, include_done=True):
        """Reconcile with a listing of the spool; done/ is large, so callers list it less often."""
        with self._lock:
            self._generation += 1
            started = self._generation
        seen = {}
        for location, entry in self.spool.scan(include_done=include_done):
            previous = seen.get(entry.job_id)
            # An entry moving during the listing can be seen twice; the later stage wins.
            if previous is None or _stage(location) >= _stage(previous[0]):
                seen[entry.job_id] = (location, entry)
        for location, entry in seen.values():
            record = self._records.get(entry.job_id)
            if record is None or record.location != location or record.entry != entry:
                self.place(location, entry)
        with self._lock:
            missing = [
                job_id for job_id, record in self._records.items()
                if job_id not in seen and record.generation < started
                and (include_done or record.location.kind != DONE)
            ]
        for job_id in missing:
            self.resolve(job_id)

    # ----- reading ------------------------------------------------------------------------

    def get(self, job_id):
        """The record, re-resolved if its entry is no longer where the index thought."""
        with self._lock:
            record = self._records.get(job_id)
        if record is None:
            return None
        if record.location.kind == DONE:
            return record  # entries in done/ only ever leave by a delete, which we do ourselves
        if self.spool.find(record.entry, hint=record.location) != record.location:
            return self.resolve(job_id)
        return record

    def state_of(self, record):
        """The job's state; for an entry on a host, from its attempt record."""
        if record.location.kind == QUEUED:
            return JobState.QUEUED
        if record.location.kind == DONE:
            return JobState(record.location.detail)
        attempt = self.spool.read_attempt(record.entry)
        if attempt is None:
            return JobState.DISPATCHED
        try:
            return JobState(attempt.get("state"))
        except ValueError:
            return JobState.UNKNOWN

    def host_of(self, record):
        """The host a job ran on; for an ended ``any`` job the index did not see run, from its record."""
        if record.ran_on is None and record.location.kind == DONE and record.entry.target == ANY_HOST:
            attempt = self.spool.read_attempt(record.entry) or {}
            record.ran_on = attempt.get("host") or record.entry.target
        return record.host

    def job_ids(self):
        with self._lock:
            return set(self._records)

    def page(self, status=None, host=None, limit=100, after=None, offset=0):
        """Records newest first, filtered; ``after`` is the order key of the last one seen.

        Returns (records, next_after, total); total is None when counting would mean
        looking at every job (host filters, states read from attempt records).
        """
        with self._lock:
            if status is None:
                keys = self._order
            else:
                keys = self._buckets.get(STATUS_BUCKET.get(status, status.value), [])
            start = bisect.bisect_right(keys, after) if after is not None else 0
            start += offset
            exact = host is None and status not in (JobState.DISPATCHED, JobState.RUNNING)
            total = len(keys) if exact else None
            records = []
            position = start
            while position < len(keys) and len(records) < limit:
                record = self._records[keys[position][1]]
                position += 1
                if host is not None and self.host_of(record) != host:
                    continue
                if status in (JobState.DISPATCHED, JobState.RUNNING) and self.state_of(record) != status:
                    continue
                records.append(record)
            next_after = keys[position - 1] if position < len(keys) and records else None
        return records, next_after, total

    def counts(self):
        with self._lock:
            return {bucket: len(keys) for bucket, keys in self._buckets.items() if keys}


def _remove_sorted(keys, key):
    position = bisect.bisect_left(keys, key)
    if position < len(keys) and keys[position] == key:
        del keys[position]


def _stage(location):
    return {QUEUED: 0, RUNNING: 1, DONE: 2}[location.kind]

