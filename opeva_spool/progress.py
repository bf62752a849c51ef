"""A job's progress over time, for plots: ``progress/history.jsonl`` and the image's ``logs/metrics.jsonl``.

The training image rewrites ``progress/progress.json`` in place (temp + rename), so each
version replaces the last. The agent running the attempt samples the file at every poll of
its runner and appends each version it has not seen yet, with the time it saw it, to
``progress/history.jsonl`` (one ``{"at": ..., "progress": {...}}`` per line). Versions
written and replaced between two polls are not seen: the history has at most one point per
poll. The file is bounded: past ``MAX_HISTORY_BYTES`` the older half is thinned to every
other point (a plot keeps its shape, with fewer points where it is oldest).

``logs/metrics.jsonl`` is the image's own (one JSON object per line, appended); it is read
here, never written. Both files are job files: read with ``fsio.open_inside`` (a job can
plant links), and a torn last line (a write in progress) is skipped until it is whole.
"""

from __future__ import annotations

import datetime
import json
import logging
import os

from . import fsio
from .exceptions import BadRequest
from .jobs import JobFolder, parse_utc, utc_now_precise

log = logging.getLogger(__name__)

HISTORY_FILE = "history.jsonl"
MAX_HISTORY_BYTES = 2 * 1024 * 1024  # ~10k points of a typical progress.json
MAX_HISTORY_POINTS_READ = 10_000  # per request; a client pages on with ?since=
MAX_METRICS_BYTES_READ = 1024 * 1024  # per request; a client pages on with ?offset=
LAST_LINE_PROBE_BYTES = 64 * 1024
# The names a progress.json gives its percentage: OPEVA's job image writes the first, the original's examples
# (and its web UI, which reads it) the second. A client reading either finds it.
PERCENT_NAMES = ("progress_pct", "percent")


def history_path(folder: JobFolder) -> str:
    return os.path.join(os.path.dirname(folder.progress), HISTORY_FILE)


def metrics_path(folder: JobFolder) -> str:
    return os.path.join(os.path.dirname(folder.log), "metrics.jsonl")


def parse_since(raw: str) -> datetime.datetime:
    """``?since=`` as an aware datetime (a bare time counts as UTC); 400 for anything else."""
    moment = parse_utc(raw)
    if moment is None:
        raise BadRequest(f"'since' must be an ISO-8601 time such as 2026-01-31T12:00:00Z, not {raw!r}")
    return moment


class ProgressRecorder:
    """Kept by a runner for its attempt: ``sample()`` appends progress.json to the history when it changed."""

    def __init__(self, folder: JobFolder) -> None:
        self.folder = folder
        self.path = history_path(folder)
        self._stat = None  # (mtime_ns, size, inode) of progress.json when last read
        self._last = None  # the last version recorded, as canonical JSON

    def sample(self) -> bool:
        """Record progress.json if it changed since the last sample; True if a point was added.

        Cheap when nothing changed (one stat). OSErrors propagate; the runner logs them
        and goes on, since a missed point must never end an attempt.
        """
        try:
            st = os.stat(self.folder.progress)
        except FileNotFoundError:
            return False
        seen = (st.st_mtime_ns, st.st_size, st.st_ino)
        if seen == self._stat:
            return False
        try:
            doc = fsio.read_job_json(self.folder.progress, self.folder.path)
        except fsio.Refused as refused:
            log.warning("job %s: progress.json %s; not recorded", self.folder.job_id, refused)
            doc = None
        self._stat = seen
        if doc is None:  # half-written or refused: the next change is looked at again
            return False
        canonical = json.dumps(doc, sort_keys=True)
        if self._last is None:
            self._last = self._last_recorded()  # an agent restarted mid-run must not repeat the last point
        if canonical == self._last:
            return False
        line = json.dumps({"at": utc_now_precise(), "progress": doc}).encode() + b"\n"
        with fsio.append_inside(self.path, self.folder.path) as handle:
            handle.write(line)
            size = handle.tell()
        self._last = canonical
        if size > MAX_HISTORY_BYTES:
            self._thin()
        return True

    def _last_recorded(self):
        try:
            handle = fsio.open_inside(self.path, self.folder.path)
        except fsio.Refused:
            return ""
        if handle is None:
            return ""
        with handle:
            end = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, end - LAST_LINE_PROBE_BYTES))
            lines = handle.read().splitlines()
        point = _json_object(lines[-1]) if lines else None
        return json.dumps(point.get("progress"), sort_keys=True) if point else ""

    def _thin(self):
        """Halve the older half of the history. Only this runner writes the file, so nothing is
        appended between the read and the rename; readers see the old or the new file whole."""
        with fsio.open_inside(self.path, self.folder.path) as handle:
            lines = handle.read().splitlines(keepends=True)
        half = len(lines) // 2
        kept = lines[:half:2] + lines[half:]
        fsio.replace_inside(self.path, self.folder.path, b"".join(kept))


def with_both_percent_names(doc: object) -> object:
    """``doc`` with both ``PERCENT_NAMES`` when it has a number under only one (the file itself is unchanged)."""
    if not isinstance(doc, dict):
        return doc
    present = [name for name in PERCENT_NAMES if name in doc]
    if len(present) != 1 or isinstance(doc[present[0]], bool) or not isinstance(doc[present[0]], (int, float)):
        return doc
    return {**doc, **{name: doc[present[0]] for name in PERCENT_NAMES}}


def read_history(folder: JobFolder, since: datetime.datetime | None = None,
                 limit: int = MAX_HISTORY_POINTS_READ) -> list[dict]:
    """The recorded points after ``since`` (all without it), oldest first, at most ``limit``.

    Raises fsio.Refused / OSError like any job file read (the service turns them into 403/503).
    """
    handle = fsio.open_inside(history_path(folder), folder.path)
    if handle is None:
        return []
    points = []
    with handle:
        for raw in handle:
            point = _json_object(raw)
            if point is None or not isinstance(point.get("progress"), dict):
                continue  # a torn last line, or garbage the job wrote over the file
            if since is not None:
                at = parse_utc(point.get("at"))
                if at is None or at <= since:
                    continue
            points.append(point)
            if len(points) >= limit:
                break
    return points


def read_metrics(folder: JobFolder, offset: int = 0) -> tuple[list[dict], int]:
    """The JSON objects of metrics.jsonl from byte ``offset``, whole lines only, and the offset to
    pass next time. A file shorter than ``offset`` was rewritten: it is read again from the start."""
    handle = fsio.open_inside(metrics_path(folder), folder.path)
    if handle is None:
        return [], 0
    with handle:
        size = handle.seek(0, os.SEEK_END)
        if offset > size:
            offset = 0
        handle.seek(offset)
        data = handle.read(MAX_METRICS_BYTES_READ)
    whole = data[: data.rfind(b"\n") + 1]  # a line still being written waits for its newline
    if not whole and len(data) == MAX_METRICS_BYTES_READ:
        # One line longer than a whole read: skip it rather than stall every later read on it.
        return [], offset + len(data)
    metrics = [doc for doc in map(_json_object, whole.splitlines()) if doc is not None]
    return metrics, offset + len(whole)


def _json_object(raw: bytes) -> dict | None:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) else None
