"""The archive: ended jobs past ``archive_after_days`` leave spool/done/ for one index file per month.

    <root>/spool/archive/YYYY-MM.json   the ended jobs submitted in that month (UTC); their folders stay in jobs/

A month file is one JSON object of columns (docs/spool.md, "Archive"): a row per job, sorted
as /jobs lists (newest first), holding what /jobs, /status and job-info need without the
entry: the entry's fields (so its name can be rebuilt), the state it ended in, the host it
ran on, its submitter, name and config file, and its attempts' hosts and times (for /usage).
Strings that repeat (targets, states, hosts, submitters) are stored once per month in a table
and referred to by number.

Moving a job into the archive, crash-safe in the spool's usual way (``Archiver.archive``):
1. the month file with the job added is written to a temp file, fsynced and renamed over the old
   one (the commit point: from here the job is archived);
2. the server's index takes the new months (``JobIndex.refresh_archive``) before anything is removed;
3. only then the job's entry in done/ is removed.
A crash between 1 and 3 leaves the job in both places: every reader treats the archive row as the
job and ignores the entry (``JobIndex._place``), and the next pass removes the leftover entry.

In memory a month is a few arrays (``ArchiveMonth``), not an object per job: a million archived
jobs cost ~140 MB, and an archived job is made into an ``IndexedJob`` only when it is read.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import json
import logging
import math
import os
import threading
import time
import zlib
from array import array
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import accumulate

from . import crashpoints, fsio, locks, usage
from .jobs import ANY_HOST
from .spool import DONE, TERMINAL_DIRS, Entry, Location, Spool

log = logging.getLogger(__name__)

ARCHIVE_DIR = "archive"
MONTH_SUFFIX = ".json"
FORMAT = 1
NS_PER_DAY = 86400 * 10**9
# Plain columns (numbers and strings per row) and coded ones (a number per row into a per-month table).
NUMBER_COLUMNS = ("submit_ns", "priority", "rank", "gpus", "attempt", "legacy")
CODED_COLUMNS = ("target", "state", "host", "submitted_by")
TEXT_COLUMNS = ("job_id", "job_name", "config_file")
# One element per attempt that was claimed (Row.runs): its row, host (a code of the host table), GPUs, start, end.
RUN_COLUMNS = ("run_row", "run_host", "run_gpus", "run_start", "run_end")
# A month finds a job by its id through "by_crc": (crc32 of the id << ROW_BITS | row), sorted; equal CRCs are
# told apart by the id itself. Stored in the file, so that loading a month sorts nothing.
ROW_BITS = 32
ROW_MASK = (1 << ROW_BITS) - 1


def month_of(submit_ns: int) -> str:
    return time.strftime("%Y-%m", time.gmtime(submit_ns / 1e9))


def next_month(month: str) -> str:
    year, number = map(int, month.split("-"))
    return f"{year + number // 12:04d}-{number % 12 + 1:02d}"


def archive_dir(spool: Spool) -> str:
    return os.path.join(spool.spool_dir, ARCHIVE_DIR)


def month_path(spool: Spool, month: str) -> str:
    return os.path.join(archive_dir(spool), month + MONTH_SUFFIX)


def listed_months(spool: Spool) -> list[str]:
    """The months with an index file, oldest first (temp files start with '.' and are not listed)."""
    return sorted(name[: -len(MONTH_SUFFIX)] for name in fsio.listdir(archive_dir(spool))
                  if name.endswith(MONTH_SUFFIX) and len(name) == len("YYYY-MM") + len(MONTH_SUFFIX))


@dataclass
class Row:
    """One archived job as a month file holds it."""

    entry: Entry
    state: str
    host: str
    submitted_by: str = ""
    job_name: str = ""
    config_file: str = ""
    # Per attempt that was claimed: (host, GPUs held, started, ended) in epoch seconds, started None if it never
    # started; what /usage counts, so that it reads no attempt record of an archived job.
    runs: list[tuple[str, int, float | None, float]] = field(default_factory=list)

    @property
    def order_key(self) -> tuple[int, str]:
        return (-self.entry.submit_ns, self.entry.job_id)


def row_for(spool: Spool, location: Location, entry: Entry) -> Row:
    """What the archive keeps of a job ended at ``location``: read from its entry (its job_info.json if the
    entry cannot be read) and, for an ``any`` job, the host from its attempt record."""
    spec = spool.read_spec(location, entry)
    info = spec.to_dict() if spec is not None else (fsio.read_json_object(spool.folder(entry.job_id).job_info) or {})
    host = spool.host_at(location, entry) if entry.target == ANY_HOST else entry.target
    attempts = [usage.attempt_times(spool.read_attempt(entry._replace(attempt=number)))
                for number in range(1, entry.attempt + 1)]
    runs = [(times.host, times.gpus, times.started, _last_of(times)) for times in usage.settled(attempts)
            if times.claimed is not None or times.started is not None]
    return Row(entry, location.detail, host, str(info.get("submitted_by") or ""), str(info.get("job_name") or ""),
               str(info.get("config_file") or ""), runs)


def _last_of(times: usage.AttemptTimes) -> float:
    """When an ended attempt ended, by the best the record says."""
    for moment in (times.ended, times.last_seen, times.started, times.claimed):
        if moment is not None:
            return moment
    return 0.0


# ----- the month file ----------------------------------------------------------------------

def encode_month(month: str, rows: list[Row]) -> bytes:
    rows = sorted(rows, key=lambda row: row.order_key)
    columns: dict[str, list] = {name: [] for name in NUMBER_COLUMNS + CODED_COLUMNS + TEXT_COLUMNS + RUN_COLUMNS}
    tables: dict[str, dict[str, int]] = {name: {} for name in CODED_COLUMNS}
    for number, row in enumerate(rows):
        entry = row.entry
        for name, value in (("submit_ns", entry.submit_ns), ("priority", entry.priority), ("rank", entry.rank),
                            ("gpus", entry.gpus), ("attempt", entry.attempt), ("legacy", int(entry.legacy)),
                            ("job_id", entry.job_id), ("job_name", row.job_name), ("config_file", row.config_file)):
            columns[name].append(value)
        for name, value in (("target", entry.target), ("state", row.state), ("host", row.host),
                            ("submitted_by", row.submitted_by)):
            columns[name].append(tables[name].setdefault(value, len(tables[name])))
        hosts = tables["host"]
        for host, gpus, started, ended in row.runs:
            for name, value in (("run_row", number), ("run_host", hosts.setdefault(host, len(hosts))),
                                ("run_gpus", gpus), ("run_start", started), ("run_end", ended)):
                columns[name].append(value)
    columns["by_crc"] = sorted(id_crc(job_id) << ROW_BITS | row for row, job_id in enumerate(columns["job_id"]))
    doc = {"format": FORMAT, "month": month, "count": len(rows), "columns": columns,
           "tables": {name: list(table) for name, table in tables.items()}}
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


def id_crc(job_id: str) -> int:
    return zlib.crc32(job_id.encode())


def read_month_doc(path: str) -> dict | None:
    """A month file's columns, or None if it is gone; a file that is not one raises ValueError."""
    try:
        with open(path, "rb") as handle:
            doc = json.loads(handle.read())
    except FileNotFoundError:
        return None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{path} is not an archive month file of format {FORMAT}")
    return doc


def rows_of(doc: dict | None) -> list[Row]:
    """The rows of a month file's columns (for rewriting a month; reads go through ArchiveMonth)."""
    if not doc:
        return []
    columns, tables = doc["columns"], doc["tables"]
    rows = []
    for i in range(doc["count"]):
        target, state, host, submitter = (tables[name][columns[name][i]] for name in CODED_COLUMNS)
        entry = Entry(columns["priority"][i], columns["submit_ns"][i], target, columns["attempt"][i],
                      columns["job_id"][i], columns["rank"][i], columns["gpus"][i], bool(columns["legacy"][i]))
        rows.append(Row(entry, state, host, submitter, columns["job_name"][i], columns["config_file"][i]))
    for row, code, gpus, started, ended in zip(*(columns[name] for name in RUN_COLUMNS), strict=True):
        rows[row].runs.append((tables["host"][code], gpus, started, ended))
    return rows


def write_month(spool: Spool, month: str, rows: list[Row]) -> None:
    """Replace a month's file (temp, fsync, rename, fsync of the directory); an empty month's file is removed."""
    path = month_path(spool, month)
    if rows:
        fsio.atomic_write_bytes(path, encode_month(month, rows))
    else:
        fsio.unlink_quietly(path)
        fsio.fsync_dir(os.path.dirname(path))


# ----- in memory -----------------------------------------------------------------------------

class Strings:
    """Many strings as one (joined by newlines, which no id or name holds) and their offsets: a str per job
    costs ~50 bytes of overhead; this costs 4."""

    __slots__ = ("_ends", "text")

    def __init__(self, strings: list[str]):
        self.text = "\n".join(strings)
        # String i spans text[_ends[i] + i : _ends[i + 1] + i] (the i newlines before it are not counted).
        self._ends = array("I", accumulate(map(len, strings), initial=0))

    def __len__(self):
        return len(self._ends) - 1

    def __getitem__(self, i: int) -> str:
        return self.text[self._ends[i] + i:self._ends[i + 1] + i]

    def index_at(self, position: int) -> int:
        """The string the character at ``position`` of ``text`` belongs to."""
        low, high = 0, len(self)
        while low < high:  # the first i whose end (_ends[i + 1] + i) is at or past position
            middle = (low + high) // 2
            if self._ends[middle + 1] + middle < position:
                low = middle + 1
            else:
                high = middle
        return low


class ArchiveMonth:
    """One month file in memory: columns as arrays, rows in /jobs order (newest first)."""

    def __init__(self, month: str, doc: dict, stamp: tuple[int, int] | None = None):
        columns, tables = doc["columns"], doc["tables"]
        self.month = month
        self.stamp = stamp  # the file's (mtime_ns, size) when read: a changed file is read again
        self.count = doc["count"]
        self.neg_ns = array("q", [-ns for ns in columns["submit_ns"]])  # ascending: /jobs order keys
        self.priority = array("b", columns["priority"])
        self.rank = array("q", columns["rank"])
        self.gpus = array("B", columns["gpus"])
        self.attempt = array("H", columns["attempt"])
        self.legacy = array("B", columns["legacy"])
        self.tables = {name: tables[name] for name in CODED_COLUMNS}
        self.codes = {name: array("I", columns[name]) for name in CODED_COLUMNS}
        self.ids = Strings(columns["job_id"])
        self.by_crc = array("Q", columns["by_crc"])
        self.names = Strings(columns["job_name"])
        self.config_files = Strings(columns["config_file"])
        self._searched = None  # made at the first text search
        self.state_counts = Counter(self.tables["state"][code] for code in self.codes["state"])
        # The attempts that were claimed, one element each: /usage reads these. NaN: it never started.
        self.run_row, self.run_host = array("I", columns["run_row"]), array("I", columns["run_host"])
        self.run_gpus = array("H", columns["run_gpus"])
        self.run_start = array("d", [math.nan if started is None else started for started in columns["run_start"]])
        self.run_end = array("d", columns["run_end"])
        self.last_end = max(self.run_end, default=0.0)

    def searched(self, row: int) -> str:
        """What the list's text filter searches, as JobService.meta builds it for a live job."""
        return f"{self.ids[row]} {self.names[row]} {self.config_files[row]}".lower()

    def rows_with(self, text: str) -> set[int]:
        """The rows whose ``searched`` holds ``text`` (lower-case): a few scans of one string, not one per row."""
        if self._searched is None:
            self._searched = Strings([self.searched(row) for row in range(self.count)])
        found, position = set(), self._searched.text.find(text)
        while position >= 0:
            row = self._searched.index_at(position)
            found.add(row)
            # On from the next row's start: a row is found once however often it holds the text.
            position = self._searched.text.find(text, self._searched._ends[row + 1] + row + 1)
        return found

    def rows_with_id_prefix(self, prefix: str) -> list[int]:
        """The rows whose job id starts with ``prefix`` (a sweep's jobs: ``<sweep_id>-``)."""
        text, found = self.ids.text, []
        position = 0 if text.startswith(prefix) else text.find("\n" + prefix)
        while position >= 0:
            start = position + (text[position] == "\n")
            found.append(self.ids.index_at(start))
            position = text.find("\n" + prefix, start)
        return found

    def find(self, job_id: str) -> int | None:
        """The row of the job ``job_id``, or None."""
        crc = id_crc(job_id)
        i = bisect.bisect_left(self.by_crc, crc << ROW_BITS)
        while i < self.count and self.by_crc[i] >> ROW_BITS == crc:
            row = self.by_crc[i] & ROW_MASK
            if self.ids[row] == job_id:
                return row
            i += 1
        return None

    def value(self, name: str, row: int) -> str:
        return self.tables[name][self.codes[name][row]]

    def entry(self, row: int) -> Entry:
        return Entry(self.priority[row], -self.neg_ns[row], self.value("target", row), self.attempt[row],
                     self.ids[row], self.rank[row], self.gpus[row], bool(self.legacy[row]))

    def key(self, row: int) -> tuple[int, str]:
        return (self.neg_ns[row], self.ids[row])

    def row_of(self, entry: Entry) -> int | None:
        """The row of ``entry``'s job (same id and submit time), or None."""
        row = bisect.bisect_left(self.neg_ns, -entry.submit_ns)
        while row < self.count and self.neg_ns[row] == -entry.submit_ns:
            if self.ids[row] == entry.job_id:
                return row
            row += 1
        return None

    def first_after(self, after: tuple[int, str] | None) -> int:
        """The first row whose order key is greater than ``after``."""
        if after is None:
            return 0
        row = bisect.bisect_left(self.neg_ns, after[0])
        while row < self.count and self.neg_ns[row] == after[0] and self.ids[row] <= after[1]:
            row += 1
        return row


class ArchiveSet:
    """Every loaded month, newest first. Never changed once made
    (``with_changes`` makes the next one): readers use the one they took without a lock."""

    def __init__(self, months: dict[str, ArchiveMonth] | None = None):
        self.months = months or {}
        self._order = [self.months[month] for month in sorted(self.months, reverse=True)]  # newest first
        self._size = sum(month.count for month in self._order)
        self._state_counts = Counter()
        for month in self._order:
            self._state_counts.update(month.state_counts)

    def __len__(self):
        return self._size

    def with_changes(self, changed: dict[str, ArchiveMonth | None]) -> ArchiveSet:
        """A new set with the ``changed`` months (None: a month now empty) swapped in."""
        months = dict(self.months)
        for month, loaded in changed.items():
            if loaded is None:
                months.pop(month, None)
            else:
                months[month] = loaded
        return ArchiveSet(months)

    def find(self, job_id: str) -> tuple[ArchiveMonth, int] | None:
        """(month, row) of an archived job, or None: a binary search in C per month."""
        for month in self._order:
            row = month.find(job_id)
            if row is not None:
                return month, row
        return None

    def max_ranks(self) -> dict[int, int]:
        """Priority -> the highest fair-share rank of an archived job (the clock they leave behind, fairshare.py)."""
        ranks: dict[int, int] = {}
        for month in self._order:
            for priority, rank in zip(month.priority, month.rank, strict=True):
                if rank > ranks.get(priority, -1):
                    ranks[priority] = rank
        return ranks

    def holds(self, entry: Entry) -> bool:
        """Whether ``entry``'s job is archived (an entry left in done/ by a crash between the month file's rename
        and the entry's removal: see the module's docstring)."""
        month = self.months.get(month_of(entry.submit_ns))
        return month is not None and month.row_of(entry) is not None

    def rows_after(self, after: tuple[int, str] | None, states: frozenset[str] | None = None,
                   host: str | None = None, submitter: str | None = None, text: str | None = None,
                   ) -> Iterator[tuple[tuple[int, str], ArchiveMonth, int]]:
        """(order key, month, row) of archived jobs in /jobs order after ``after``; of ``states``, of ``host`` and
        ``submitter`` (exactly) and holding ``text`` (lower-case) in their id, name or config file, if given."""
        for month in self._order:
            if month.count == 0 or (after is not None and month.key(month.count - 1) <= after):
                continue
            wanted = {name: {code for code, value in enumerate(month.tables[name]) if value in accepted}
                      for name, accepted in (("state", states), ("host", host and {host}),
                                             ("submitted_by", submitter and {submitter}))
                      if accepted is not None}
            if any(not codes for codes in wanted.values()):
                continue  # no job of this month has that state or submitter
            matching = month.rows_with(text) if text else None
            if matching is not None and not matching:
                continue
            first = month.first_after(after)
            rows = range(first, month.count) if matching is None else sorted(row for row in matching if row >= first)
            for name, codes in wanted.items():
                rows = _having(rows, month.codes[name], codes)
            for row in rows:
                yield month.key(row), month, row

    def count(self, states: frozenset[str] | None = None) -> int:
        if states is None:
            return len(self)
        return sum(self._state_counts[state] for state in states)

    def state_counts(self) -> Counter:
        return self._state_counts


def _having(rows: Iterator[int], column: array, codes: set[int]) -> Iterator[int]:
    return (row for row in rows if column[row] in codes)


def load_month(spool: Spool, month: str) -> ArchiveMonth | None:
    path = month_path(spool, month)
    try:
        before = os.stat(path)
    except FileNotFoundError:
        return None
    doc = read_month_doc(path)
    return ArchiveMonth(month, doc, (before.st_mtime_ns, before.st_size)) if doc else None


def changed_months(spool: Spool, loaded: dict[str, ArchiveMonth]) -> dict[str, ArchiveMonth | None]:
    """The months whose file differs from what is ``loaded`` (read anew; None: the file is gone)."""
    changed: dict[str, ArchiveMonth | None] = {}
    listed = listed_months(spool)
    for month in listed:
        try:
            info = os.stat(month_path(spool, month))
        except FileNotFoundError:
            continue
        current = loaded.get(month)
        if current is None or current.stamp != (info.st_mtime_ns, info.st_size):
            try:
                changed[month] = load_month(spool, month)
            except ValueError as exc:  # a damaged month file: say so and keep what was loaded
                log.error("archive: %s", exc)
    for month in set(loaded) - set(listed):
        changed[month] = None
    return changed


# ----- archiving and deleting --------------------------------------------------------------

@dataclass
class Outcome:
    """What a pass did (or, dry, would do)."""

    archived: list[str] = field(default_factory=list)  # job ids moved into the archive
    leftovers: int = 0  # entries in done/ of jobs already archived (a crash's), removed
    deleted: list[str] = field(default_factory=list)  # job ids deleted (folder and archive row)
    remaining: int = 0  # archivable entries left for the next pass (over the pass's limit)
    would_archive: list[Entry] = field(default_factory=list)  # dry run: the entries archive() left in done/

    def to_dict(self) -> dict:
        return {"archived": len(self.archived), "leftovers_removed": self.leftovers,
                "deleted": len(self.deleted), "deleted_jobs": self.deleted, "remaining": self.remaining}


class Archiver:
    """One pass of archiving and retention over a spool; the server's maintenance and ``opeva-spool archive``
    run it. ``index`` (the server's JobIndex, or None in the CLI) takes each new month before entries go."""

    def __init__(self, spool: Spool, index=None, lock_dir: str = ""):
        self.spool = spool
        self.index = index
        self._lock_path = locks.local_lock_path(lock_dir, spool.root, "archive", "lock")
        self._thread_lock = threading.Lock()

    @contextlib.contextmanager
    def writing(self):
        """One writer of month files at a time: a month is rewritten whole, and two rewrites at once would lose one's
        rows. An API delete of an ended job holds it too, so that a pass never archives a job being deleted. A local
        flock (flock is not shared over NFS): run ``opeva-spool archive`` on the server's machine."""
        fsio.makedirs(os.path.dirname(self._lock_path))
        with self._thread_lock, open(self._lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def run(self, archive_after_days: float, delete_after_days: float = 0, now_ns: int | None = None,
            dry_run: bool = False, limit: int | None = None) -> Outcome:
        now_ns = time.time_ns() if now_ns is None else now_ns
        fsio.makedirs(archive_dir(self.spool))
        days = [d for d in (archive_after_days, delete_after_days) if d and d > 0]
        outcome = Outcome()
        with self.writing():
            self._run(days, delete_after_days, now_ns, dry_run, limit, outcome)
        return outcome

    def _run(self, days, delete_after_days, now_ns, dry_run, limit, outcome):
        if days:
            # A job is deleted only once archived: with delete_after_days the shorter, that is when it is archived.
            self.archive(now_ns - int(min(days) * NS_PER_DAY), outcome, dry_run, limit)
        if delete_after_days and delete_after_days > 0:
            self.delete(now_ns - int(delete_after_days * NS_PER_DAY), outcome, dry_run)

    def archive(self, cutoff_ns: int, outcome: Outcome, dry_run: bool = False, limit: int | None = None) -> None:
        """Move the ended jobs submitted before ``cutoff_ns`` from done/ into their month files."""
        due: dict[str, list[tuple[Location, Entry]]] = defaultdict(list)
        for state in TERMINAL_DIRS:
            location = Location(DONE, state)
            for name in fsio.listdir(self.spool.done_path(state)):
                entry = Entry.parse(name)
                if entry is not None and entry.submit_ns < cutoff_ns:
                    due[month_of(entry.submit_ns)].append((location, entry))
        taken, placed_all = 0, []
        for month in sorted(due):  # oldest first
            placed = due[month][: None if limit is None else max(0, limit - taken)]
            outcome.remaining += len(due[month]) - len(placed)
            if not placed:
                continue
            taken += len(placed)
            placed_all += placed
            rows = {row.entry.job_id: row for row in rows_of(read_month_doc(month_path(self.spool, month)))}
            new = [(location, entry) for location, entry in placed
                   if entry.job_id not in rows or rows[entry.job_id].entry.submit_ns != entry.submit_ns]
            outcome.archived.extend(entry.job_id for _, entry in new)
            outcome.leftovers += len(placed) - len(new)
            if dry_run:
                outcome.would_archive.extend(entry for _, entry in new)
                continue
            for location, entry in new:
                rows[entry.job_id] = row_for(self.spool, location, entry)
            if new:
                write_month(self.spool, month, list(rows.values()))  # the commit point of these rows
                crashpoints.reach("archive.month_written")
        if dry_run or not placed_all:
            return
        if self.index is not None:
            self.index.refresh_archive()  # before any entry goes: see the module's docstring
        for location, entry in placed_all:
            fsio.unlink_quietly(self.spool.entry_path(location, entry))
        for state in TERMINAL_DIRS:
            fsio.fsync_dir(self.spool.done_path(state))

    def delete(self, cutoff_ns: int, outcome: Outcome, dry_run: bool = False) -> None:
        """Delete the archived jobs submitted before ``cutoff_ns``: their rows (the commit point), then their folders.

        A crash between the two leaves folders with no job, which the server's start-up moves to the trash
        (``Spool.recover_orphans``), as after a crash in the middle of an API delete.
        """
        if dry_run:  # what this pass would have archived first
            outcome.deleted.extend(entry.job_id for entry in outcome.would_archive if entry.submit_ns < cutoff_ns)
        for month in listed_months(self.spool):
            if month > month_of(cutoff_ns):
                break
            rows = rows_of(read_month_doc(month_path(self.spool, month)))
            gone = [row for row in rows if row.entry.submit_ns < cutoff_ns]
            if not gone:
                continue
            outcome.deleted.extend(row.entry.job_id for row in gone)
            if dry_run:
                continue
            write_month(self.spool, month, [row for row in rows if row.entry.submit_ns >= cutoff_ns])
            crashpoints.reach("archive.rows_deleted")
            if self.index is not None:
                self.index.refresh_archive()
            for row in gone:
                self.spool.trash(self.spool.folder(row.entry.job_id).path)
        if not dry_run and outcome.deleted:
            self.spool.empty_trash()

    def remove_row(self, entry: Entry) -> bool:
        """Take one archived job out of its month file, holding ``writing()`` (an API delete; the caller trashes its
        folder after, as ``delete`` does); False if it was not there (another delete won)."""
        month = month_of(entry.submit_ns)
        rows = rows_of(read_month_doc(month_path(self.spool, month)))
        kept = [row for row in rows if (row.entry.job_id, row.entry.submit_ns) != (entry.job_id, entry.submit_ns)]
        if len(kept) == len(rows):
            return False
        write_month(self.spool, month, kept)
        if self.index is not None:
            self.index.refresh_archive()
        return True


def archived_ids(spool: Spool) -> set[str]:
    """Every archived job's id, read from the month files (for fsck, which looks at every job anyway)."""
    ids = set()
    for month in listed_months(spool):
        doc = read_month_doc(month_path(spool, month))
        if doc:
            ids.update(doc["columns"]["job_id"])
    return ids
