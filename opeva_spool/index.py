"""The in-memory job index: answers /status and /jobs without re-reading the tree.

It holds, per job, only the entry (parsed from its file name) and where it is. It is
fed three ways, and none of them alone is trusted:
- the server's own writes (publish, cancel, delete, requeue) update it synchronously,
  so a client reads its own writes;
- watchdog events from the spool directories (hints: inotify misses other NFS hosts);
- ``sync()``, a periodic listing of the spool (the truth), and ``resolve()``, which
  re-finds a single job by stat when the index's idea of it turns out to be stale.
  A directory is listed again only when its mtime moved (``MtimeGate``): an idle round is a
  stat per directory, and done/ holds only jobs ended within ``archive_after_days``.
Ended jobs older than ``archive_after_days`` are in the archive (archive.py): loaded from its
month files as arrays, never listed, and made into an IndexedJob (``ArchivedJob``) only when read.
Events and listings can be older than the server's own writes: a deleted job leaves a
tombstone so that they cannot bring it back (``deleted``).
The state rule itself (location + attempt record) is the spool's (``Spool.state_at``); a
running entry's finer state is read from its attempt record on each request: one small
file, only for jobs on a host.
"""

from __future__ import annotations

import bisect
import heapq
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable

from . import archive, fsio
from .spool import DONE, QUEUED, RUNNING, WAITING, Entry, JobStatus, Location
from .states import TERMINAL_STATES, JobState

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
# A directory's mtime is trusted to tell "nothing changed since the listing" only once it is this old when
# listed: a change within the same timestamp tick (coarse on some NFS servers) would not move it.
MTIME_SETTLE_NS = 2 * 10**9
ENDED = frozenset(state.value for state in TERMINAL_STATES)


class MtimeGate:
    """Whether a directory may have changed since it was last looked at: its mtime moved since, or it was too recent
    then to be trusted (MTIME_SETTLE_NS). One stat instead of a listing per look at an unchanged directory."""

    def __init__(self, settle_ns: int = MTIME_SETTLE_NS) -> None:
        self.settle_ns = settle_ns
        self._seen: dict[str, int | None] = {}

    def changed(self, directory: str) -> bool:
        """True (and remembered as looked at now) if ``directory`` is to be looked at again."""
        try:
            mtime_ns = os.stat(directory).st_mtime_ns
        except OSError:
            return True
        if self._seen.get(directory) == mtime_ns:
            return False
        # Race: a change after this stat moves the mtime again, so it is seen next time.
        self._seen[directory] = mtime_ns if time.time_ns() - mtime_ns > self.settle_ns else None
        return True

    def forget(self, directory: str) -> None:
        """Look at ``directory`` next time whatever its mtime (the look just made failed)."""
        self._seen.pop(directory, None)


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


class ArchivedJob(IndexedJob):
    """An archived job, made from its month's row when read (it never moves again)."""

    __slots__ = ()

    @classmethod
    def of(cls, month: archive.ArchiveMonth, row: int) -> ArchivedJob:
        entry = month.entry(row)
        job = cls(entry, Location(DONE, month.value("state", row)), month.value("host", row), 0)
        job.meta = (month.value("submitted_by", row), month.searched(row))
        return job


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
        self.archive = archive.ArchiveSet()
        # Called with the ids of live jobs that moved into the archive (not a change of state: no event).
        self.on_archived: Callable[[list[str]], None] = lambda job_ids: None
        self._refreshing = threading.Lock()
        self._listings = MtimeGate()

    def __len__(self):
        return len(self._jobs) + len(self.archive)

    def __contains__(self, job_id):
        return job_id in self._jobs or self.archive.find(job_id) is not None

    # ----- the archive --------------------------------------------------------------------

    def refresh_archive(self) -> None:
        """Load the month files that changed (all of them at start-up), and drop the live jobs they now hold.

        Race: the archiver (this server's, or ``opeva-spool archive`` beside it) removes an entry from
        done/ only after its month file is renamed into place, and this server's archiver calls this
        before removing: a job is never missing from both. Until the entry is gone, a listing or an
        event may still place it: ``_place`` refuses an entry the archive holds, so it is one job.
        """
        with self._refreshing:  # one at a time: a slower refresh must not swap in an older set after a newer one
            if not self._listings.changed(archive.archive_dir(self.spool)):
                return  # a month file is replaced by a rename, which moves the directory's mtime
            changed = archive.changed_months(self.spool, self.archive.months)
            if not changed:
                return
            loaded = self.archive.with_changes(changed)  # outside the index's lock: seconds at a million jobs
            with self._lock:
                self.archive = loaded
                moved = {key[1] for state in ENDED for key in self._buckets.get(state, [])
                         if loaded.holds(self._jobs[key[1]].entry)}
                if moved:  # many at once (a pass archives thousands): each list is rebuilt once, not cut per job
                    for job_id in moved:
                        del self._jobs[job_id]
                    self._order = [key for key in self._order if key[1] not in moved]
                    for state in ENDED:
                        if state in self._buckets:
                            self._buckets[state] = [key for key in self._buckets[state] if key[1] not in moved]
        self.on_archived(sorted(moved))

    def unknown_among(self, job_ids: Iterable[str]) -> set[str]:
        """Those of ``job_ids`` that are no job, live or archived: set operations a month at a time, not a lookup
        per id (start-up recovery passes every folder name under jobs/)."""
        unknown = set(job_ids)
        with self._lock:
            unknown.difference_update(self._jobs)
        for month in self.archive.months.values():
            if unknown:
                unknown.difference_update(month.ids.text.split("\n"))
        return unknown

    def archived_states(self, prefix: str, submitted_at: str) -> Counter:
        """States of the archived jobs whose id starts with ``prefix`` (a sweep's), submitted together at
        ``submitted_at`` (ISO): only that month and the next are looked at."""
        counts = Counter()
        month = submitted_at[:7]
        for name in (month, archive.next_month(month)) if len(month) == 7 else ():
            loaded = self.archive.months.get(name)
            for row in loaded.rows_with_id_prefix(prefix) if loaded else ():
                counts[loaded.value("state", row)] += 1
        return counts

    def _drop(self, job):
        del self._jobs[job.entry.job_id]
        self._unbucket(job)
        _remove_sorted(self._order, job.order_key)

    def _archived(self, job_id):
        found = self.archive.find(job_id)
        return ArchivedJob.of(*found) if found else None

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
            if job is None and location.kind == DONE and self.archive.holds(entry):
                return None  # an entry a crash (or a listing made before its removal) left beside its archive row
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
            job = self._jobs.get(job_id)
            if job is not None:
                self._drop(job)
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
            return self._archived(job_id)
        location = self.spool.find(job.entry, hint=job.location)
        if location is None and job.location.kind == DONE:
            # Archived by another process (opeva-spool archive) since this index listed it?
            self.refresh_archive()
            if self.archive.holds(job.entry):
                return self._archived(job_id)
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

    def sync(self, include_done: bool = False) -> None:
        """Reconcile with a listing of the spool's directories whose mtime moved (``include_done``: every one),
        and the archive's month files if they changed. Entries only arrive and leave by renames and unlinks,
        which move their directory's mtime; and done/ holds only jobs ended within archive_after_days."""
        self.refresh_archive()
        with self._lock:
            self._generation += 1
            started = self._generation
        seen = {}
        listed = set()
        for location in self.spool.locations():
            names = self._list(location, include_done)
            if names is None:
                continue
            listed.add(location)
            for name in names:
                entry = Entry.parse(name)
                if entry is None:
                    continue
                previous = seen.get(entry.job_id)
                # An entry moving during the listing can be seen twice; the later attempt, then the later stage wins.
                if previous is None or (entry.attempt, _stage(location)) >= (previous[1].attempt,
                                                                             _stage(previous[0])):
                    seen[entry.job_id] = (location, entry)
        for location, entry in seen.values():
            job = self._jobs.get(entry.job_id)
            if job is None or job.location != location or job.entry != entry:
                self.place(location, entry)
        with self._lock:
            missing = [
                job_id for job_id, job in self._jobs.items()
                if job_id not in seen and job.generation < started and job.location in listed
            ] if listed else []
        for job_id in missing:
            self.resolve(job_id)

    def _list(self, location: Location, force: bool) -> list[str] | None:
        """The names in ``location``'s directory; None if its mtime did not move since it was last listed."""
        directory = self.spool.location_dir(location)
        if not self._listings.changed(directory) and not force:
            return None
        try:
            return fsio.listdir(directory)
        except OSError:
            self._listings.forget(directory)
            raise

    # ----- reading ------------------------------------------------------------------------

    def get(self, job_id: str) -> IndexedJob | None:
        """The indexed job, re-resolved if its entry is no longer where the index thought."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            return self._archived(job_id)
        if job.location.kind == DONE:
            # Entries in done/ only leave by a delete, which we do ourselves, or into the archive, where the job
            # reads the same (a refresh of the archive drops it from here).
            return job
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
        """The ids of the live jobs (not the archived ones: test those with ``in``)."""
        with self._lock:
            return set(self._jobs)

    def jobs(self) -> list[IndexedJob]:
        """The live jobs: queued, waiting, on a host, or ended within ``archive_after_days``."""
        with self._lock:
            return list(self._jobs.values())

    def page(self, status: JobState | None = None, host: str | None = None, limit: int = 100,
             after: tuple[int, str] | None = None, offset: int = 0,
             match: Callable[[IndexedJob], bool] | None = None, submitter: str | None = None,
             text: str | None = None) -> tuple[list[IndexedJob], tuple[int, str] | None, int | None]:
        """Indexed jobs newest first, filtered; ``after`` is the order key of the last one seen.

        ``submitter`` and ``text`` (lower-case) say what ``match`` looks for, so that the archived jobs are
        narrowed on their month's columns first instead of being made into jobs one by one to be matched.

        Returns (jobs, next_after, total); total is None when counting would mean
        looking at every job (host filters, ``match``, states read from attempt records).
        The filters run outside the lock on a copy of the keys: they may read files (attempt
        records, entries for ``match``), and the index must keep taking events meanwhile.
        """
        exact = host is None and match is None and status not in (JobState.DISPATCHED, JobState.RUNNING)
        archived_states = None if status is None else frozenset({status.value} & ENDED)
        with self._lock:
            keys = self._order if status is None else self._buckets.get(STATUS_BUCKET.get(status, status.value), [])
            start = bisect.bisect_right(keys, after) if after is not None else 0
            total = len(keys) + self.archive.count(archived_states) if exact else None
            # Exact: no filter drops a job, so no more than this many of the live ones can be used.
            live = keys[start:start + offset + limit + 1] if exact else keys[start:]
            months = self.archive  # never changed: a refresh makes a new set, so this iteration sees one version
        rows = () if archived_states == frozenset() else months.rows_after(after, archived_states, host, submitter,
                                                                             text)
        merged = heapq.merge(((key, None, 0) for key in live), rows, key=lambda item: item[0])
        for _ in range(offset):
            if next(merged, None) is None:
                break
        jobs = []
        last = None
        for key, month, row in merged:
            if len(jobs) >= limit:
                return jobs, last, total  # there is more
            last = key
            job = self._jobs.get(key[1]) if month is None else ArchivedJob.of(month, row)
            if job is None:
                continue  # deleted since the copy
            if host is not None and self.host_of(job) != host:
                continue
            if status in (JobState.DISPATCHED, JobState.RUNNING) and self.state_of(job) != status:
                continue
            if match is not None and not match(job):
                continue
            jobs.append(job)
        return jobs, None, total

    def active(self) -> list[IndexedJob]:
        """The jobs on a host (dispatched or running: which one is in each attempt record), newest first."""
        with self._lock:
            return [self._jobs[job_id] for _, job_id in self._buckets.get(ACTIVE, [])]

    def counts(self) -> dict[str, int]:
        with self._lock:
            counts = {bucket: len(keys) for bucket, keys in self._buckets.items() if keys}
            for state, count in self.archive.state_counts().items():
                counts[state] = counts.get(state, 0) + count
            return counts


def _remove_sorted(keys, key):
    position = bisect.bisect_left(keys, key)
    if position < len(keys) and keys[position] == key:
        del keys[position]


def _stage(location):
    return {WAITING: 0, QUEUED: 1, RUNNING: 2, DONE: 3}[location.kind]

