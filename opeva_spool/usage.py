"""Accounting: how long jobs waited and ran, and who used how much (``GET /usage``), from attempt records.

Everything is derived from what the protocol already writes: the submit time in the entry's name and,
per attempt, ``claimed_at``, ``started_at``, ``ended_at``, ``host`` and ``gpus`` in
``jobs/<id>/attempts/<n>.json``. An ended attempt's record never changes again, so what it says is
read once and kept (``AttemptLedger``); a running attempt is read each time and counted up to now.
Nothing is stored on the share: a restarted server reads the records again.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, NamedTuple

from . import jobs
from .exceptions import BadRequest
from .spool import DONE, RUNNING, Entry, Spool
from .states import JobState

if TYPE_CHECKING:  # the index imports the archive, which uses this module's reading of attempt records
    from .index import IndexedJob, JobIndex

log = logging.getLogger(__name__)

BY_USER, BY_HOST = "user", "host"
USAGE_GROUPINGS = (BY_USER, BY_HOST)
SECONDS_PER_HOUR = 3600.0
# Rounding of the figures served: a millisecond of waiting, a thousandth of an (GPU-)hour.
SECONDS_DIGITS = 3
HOURS_DIGITS = 3
# States of a job whose first attempt was never claimed: it has no attempt record to read.
UNCLAIMED_STATES = frozenset({JobState.QUEUED, JobState.WAITING})


class AttemptTimes(NamedTuple):
    """What one attempt's record says about time and resources (epoch seconds; None where it says nothing)."""

    host: str
    gpus: int
    claimed: float | None
    started: float | None
    ended: float | None  # None while it runs (or for a superseded attempt whose owner never wrote its end)
    last_seen: float | None  # the record's updated_at: the end of an attempt taken away without an ending

    def run_seconds(self, now: float, since: float | None = None) -> float:
        """Seconds it ran (from start to end, or to now while it runs), only those after ``since`` if given."""
        if self.started is None:
            return 0.0
        end = self.ended if self.ended is not None else now
        start = self.started if since is None else max(self.started, since)
        return max(0.0, end - start)


NOT_CLAIMED = AttemptTimes("", 0, None, None, None, None)


def _epoch(value: object) -> float | None:
    moment = jobs.parse_utc(value)
    return moment.timestamp() if moment is not None else None


def attempt_times(record: dict | None) -> AttemptTimes:
    """The times of an attempt record (None: not written yet, the attempt was never claimed)."""
    if not record:
        return NOT_CLAIMED
    gpus = record.get("gpus")
    return AttemptTimes(host=str(record.get("host") or ""), gpus=len(gpus) if isinstance(gpus, list) else 0,
                        claimed=_epoch(record.get("claimed_at")), started=_epoch(record.get("started_at")),
                        ended=_epoch(record.get("ended_at")), last_seen=_epoch(record.get("updated_at")))


def parse_since(text: str | None) -> float | None:
    """``?since=`` as epoch seconds: an ISO 8601 time or date (no offset: UTC); 400 for anything else."""
    if not text:
        return None
    moment = jobs.parse_utc(text)
    if moment is None:
        raise BadRequest(f"'since' must be an ISO 8601 time such as 2026-12-01 or 2026-12-01T08:00:00Z, "
                         f"not {text!r}", field="since")
    return moment.timestamp()


class AttemptLedger:
    """The times of every attempt, each ended attempt's record read once.

    Keyed by (job id, submit ns, attempt): a new job reusing a deleted one's id has another submit
    time, so it never gets the old job's figures. Race: two requests may read the same record at once
    and both store it; the values agree, and the lock only keeps the dict consistent.
    """

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self._ended: dict[tuple[str, int, int], AttemptTimes] = {}
        self._lock = threading.Lock()

    def attempt(self, entry: Entry, number: int) -> AttemptTimes:
        key = (entry.job_id, entry.submit_ns, number)
        with self._lock:
            known = self._ended.get(key)
        if known is not None:
            return known
        times = attempt_times(self.spool.read_attempt(entry._replace(attempt=number)))
        # Only an ending is final. A superseded attempt without one (its host was lost) may still get its
        # end written late by its old owner, so it is read again next time.
        if times.ended is not None:
            with self._lock:
                self._ended[key] = times
        return times

    def attempts(self, entry: Entry) -> list[AttemptTimes]:
        """Attempts 1 to the entry's, oldest first."""
        return [self.attempt(entry, number) for number in range(1, entry.attempt + 1)]

    def forget_all_but(self, keep: Iterable[tuple[str, int]]) -> None:
        """Drop what is kept for jobs not in ``keep`` ((job id, submit ns) pairs): deleted jobs."""
        keep = set(keep)
        with self._lock:
            for key in [key for key in self._ended if key[:2] not in keep]:
                del self._ended[key]

    # ----- one job ----------------------------------------------------------------------------

    def job_times(self, entry: Entry, state: JobState, now: float | None = None) -> dict:
        """``queue_wait_seconds`` and ``run_seconds`` of one job, as /jobs items and job-info show them.

        Queue wait is from submit to the first claim (so it includes any wait for dependencies); until
        the first claim it is the wait so far, and None for a job that ended without ever being claimed
        (canceled). Run time is the sum over its attempts of start to end (to now while one runs).
        """
        now = time.time() if now is None else now
        attempts = [] if entry.attempt == 1 and state in UNCLAIMED_STATES else self.attempts(entry)
        first = attempts[0] if attempts else NOT_CLAIMED
        submitted = entry.submit_ns / 1e9
        if first.claimed is not None:
            # The record's times have whole seconds: a claim in the submit's second must not read as negative.
            wait = max(0.0, first.claimed - submitted)
        elif not state.terminal:
            wait = max(0.0, now - submitted)
        else:
            wait = None
        run = sum(times.run_seconds(now) for times in settled(attempts))
        return {"queue_wait_seconds": round(wait, SECONDS_DIGITS) if wait is not None else None,
                "run_seconds": round(run, SECONDS_DIGITS)}


def settled(attempts: list[AttemptTimes]) -> list[AttemptTimes]:
    """The attempts with their ends settled: every attempt but the last has ended, and one that was taken
    away without an ending (a lost host) ran until its record was last written."""
    settled = []
    for number, times in enumerate(attempts, start=1):
        if times.ended is None and number < len(attempts):
            times = times._replace(ended=times.last_seen if times.last_seen is not None else times.started)
        settled.append(times)
    return settled


class UsageRow:
    """One line of /usage: jobs, attempts and hours of one user or host."""

    __slots__ = ("attempts", "gpu_seconds", "job_ids", "run_seconds")

    def __init__(self) -> None:
        self.job_ids: set[str] = set()
        self.attempts = 0
        self.run_seconds = 0.0
        self.gpu_seconds = 0.0

    def add(self, job_id: str, run_seconds: float, gpus: int) -> None:
        self.job_ids.add(job_id)
        self.attempts += 1
        self.run_seconds += run_seconds
        self.gpu_seconds += run_seconds * gpus

    def as_dict(self, by: str, name: str) -> dict:
        return {by: name, "jobs": len(self.job_ids), "attempts": self.attempts,
                "run_hours": round(self.run_seconds / SECONDS_PER_HOUR, HOURS_DIGITS),
                "gpu_hours": round(self.gpu_seconds / SECONDS_PER_HOUR, HOURS_DIGITS)}


class Usage:
    """``GET /usage``: per user or per host, the jobs and attempts that ran and their run and GPU hours."""

    def __init__(self, index: JobIndex, ledger: AttemptLedger, submitter_of: Callable[[IndexedJob], str]) -> None:
        self.index = index
        self.ledger = ledger
        self.submitter_of = submitter_of
        # One report at a time: a second one waits and then finds every record it needs already read,
        # instead of reading them all again beside the first. The first report after a start reads every
        # ended attempt's record and every job's submitter (100,000 jobs: ~18 s and ~60 MB kept); it is not
        # done ahead at start-up, where it would slow every request of the first half-minute.
        self._lock = threading.Lock()

    def report(self, by: str = BY_USER, since: str | None = None, now: float | None = None) -> dict:
        """Rows for the attempts that were claimed and ran at some moment after ``since`` (all, if None):
        their run time after ``since`` (to now for one still running), times the GPUs it held for
        GPU hours. A row's ``jobs`` counts the jobs with such an attempt. Sorted by GPU hours, then
        run hours, then name; ``total`` sums the rows."""
        if by not in USAGE_GROUPINGS:
            raise BadRequest(f"'by' must be one of {list(USAGE_GROUPINGS)}, not {by!r}", field="by")
        start = parse_since(since)
        with self._lock:
            return self._report(by, start, time.time() if now is None else now)

    def _report(self, by: str, start: float | None, now: float) -> dict:
        rows: dict[str, UsageRow] = {}
        total = UsageRow()
        present = []
        for job in self.index.jobs():
            entry = job.entry
            present.append((entry.job_id, entry.submit_ns))
            if entry.attempt == 1 and job.location.kind not in (RUNNING, DONE):
                continue  # queued or waiting for the first time: nothing ran
            for times in settled(self.ledger.attempts(entry)):
                if times.claimed is None and times.started is None:
                    continue  # never claimed (or its record is not written yet)
                if start is not None and (times.ended if times.ended is not None else now) < start:
                    continue  # over before the window
                name = self.submitter_of(job) if by == BY_USER else times.host
                seconds = times.run_seconds(now, start)
                rows.setdefault(name, UsageRow()).add(entry.job_id, seconds, times.gpus)
                total.add(entry.job_id, seconds, times.gpus)
        self._archived(rows, total, by, start)
        self.ledger.forget_all_but(present)
        ordered = sorted(rows.items(), key=lambda item: (-item[1].gpu_seconds, -item[1].run_seconds, item[0]))
        return {"by": by, "since": _iso(start), "until": _iso(now),
                "rows": [row.as_dict(by, name) for name, row in ordered],
                "total": {key: value for key, value in total.as_dict(by, "").items() if key != by}}


    def _archived(self, rows: dict[str, UsageRow], total: UsageRow, by: str, start: float | None) -> None:
        """Add the archived jobs' attempts, from their month files' run columns (no record is read again). A job is
        counted by (month, row) rather than by its id: no string is made per archived job."""
        for number, month in enumerate(self.index.archive.months.values()):
            if start is not None and month.last_end < start:
                continue  # every attempt of the month ended before the window
            by_user = by == BY_USER
            names = month.tables["submitted_by" if by_user else "host"]
            for run in range(len(month.run_row)):
                if start is not None and month.run_end[run] < start:
                    continue
                row, began = month.run_row[run], month.run_start[run]
                seconds = 0.0 if math.isnan(began) else max(0.0, month.run_end[run] - (began if start is None
                                                                                       else max(began, start)))
                name = names[month.codes["submitted_by"][row] if by_user else month.run_host[run]]
                key = number << 32 | row
                rows.setdefault(name, UsageRow()).add(key, seconds, month.run_gpus[run])
                total.add(key, seconds, month.run_gpus[run])


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
