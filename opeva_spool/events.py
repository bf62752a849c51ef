"""Events: job transitions and host liveness changes, journaled on the share and streamed as SSE.

Three parts, one concern each:
- ``EventJournal``: the durable record, ``spool/events/<first-id>.jsonl`` segments of JSON
  lines (docs/spool.md, "Events journal"). The server is its only writer. Ids increase
  across restarts: a start-up resumes after the last complete line on disk.
- ``EventBus``: numbers, journals and publishes events; keeps the newest in memory for
  resuming clients and wakes waiting subscribers (one Condition, no per-client polling of data).
- ``TransitionTracker``: turns what the JobIndex learns (own writes, watchdog events,
  listings) and what the LivenessMonitor judges into events, remembering per job the
  last state it journaled. At start-up it replays the journal and emits what happened
  while the server was down, so that a client resuming with Last-Event-ID sees no gap.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator

from . import fsio
from .hosts import SUSPECT, LivenessMonitor
from .index import IndexedJob, JobIndex
from .jobs import parse_utc, utc_now_precise
from .states import JobState

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".jsonl"
SEGMENT_ID_DIGITS = 12
# A segment is closed past this size; the newest KEEP_SEGMENTS are kept (~200 bytes an event:
# about 40,000 events, days of a busy cluster, in at most 8 MiB).
SEGMENT_BYTES = 1024 * 1024
KEEP_SEGMENTS = 8
# Newest events kept in memory: resuming clients within this are served without reading disk.
MEMORY_EVENTS = 4096
# An idle stream sends a comment this often, so proxies and clients know it is alive.
KEEPALIVE_SECONDS = 15.0
# How often an idle stream wakes to see whether its client left or the server is closing: waitress
# only tells by a flag (streams.STREAM_GONE), not by a wake-up. One cheap wake-up a second each.
GONE_CHECK_SECONDS = 1.0
# How soon a job's dispatched -> running, seen only in its attempt record, becomes an event: one stat of
# the entry and one read of the record per active job (jobs on a host, a few dozen) this often.
ACTIVE_CHECK_SECONDS = 0.5
# EventSource reconnects after this many milliseconds (sent once per stream).
RETRY_MS = 2000

JOB, HOST, RESET = "job", "host", "reset"
DELETED = "deleted"
# How far along its attempt a job is: an event is only emitted forwards (see TransitionTracker.job_changed).
STAGE = {JobState.WAITING: 0, JobState.QUEUED: 1, JobState.DISPATCHED: 2, JobState.RUNNING: 3,
         JobState.FINISHED: 4, JobState.FAILED: 4, JobState.STOPPED: 4, JobState.CANCELED: 4}
ACTIVE_STATES = (JobState.DISPATCHED.value, JobState.RUNNING.value)


class EventJournal:
    """Append-only JSON lines in size-bounded segments; only the server writes it.

    Appends are written through to the page cache at once (a killed server loses nothing)
    and fsynced by ``sync`` each maintenance round: an OS crash can lose the events of the
    last round. Their ids are then handed out again; a client that saw one is ahead of the
    journal and gets a ``reset`` (EventBus.since).
    """

    def __init__(self, directory: str, segment_bytes: int = SEGMENT_BYTES, keep_segments: int = KEEP_SEGMENTS):
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.keep_segments = keep_segments
        fsio.makedirs(directory)
        self.last_id = self._recover()
        self._handle = None
        self._size = 0
        self._dirty = False

    def segments(self) -> list[tuple[int, str]]:
        """(first id, path) of each kept segment, oldest first."""
        found = []
        for name in fsio.listdir(self.directory):
            stem = name[: -len(SEGMENT_SUFFIX)]
            if name.endswith(SEGMENT_SUFFIX) and stem.isdigit():
                found.append((int(stem), os.path.join(self.directory, name)))
        return sorted(found)

    def _recover(self) -> int:
        """The last id on disk; a torn last line (a crash mid-append) is cut off so appends start on a line."""
        last = 0
        for first, path in reversed(self.segments()):
            last = max(last, first - 1)  # a segment is named after the id it was opened for
            try:
                with open(path, "rb+") as handle:
                    data = handle.read()
                    whole = data.rfind(b"\n") + 1
                    if whole < len(data):
                        log.warning("events journal %s ends in a torn line; cut off", path)
                        handle.truncate(whole)
            except OSError as exc:
                log.warning("events journal %s unreadable: %s", path, exc)
                continue
            for line in reversed(data[:whole].splitlines()):
                event = _parse_line(line)
                if event is not None:
                    return max(last, event["id"])
        return last

    def append(self, event: dict) -> None:
        """Write one event (it carries its ``id``): one line, rotating to a new segment when full."""
        line = (json.dumps(event, separators=(",", ":")) + "\n").encode()
        if self._handle is not None and self._size >= self.segment_bytes:
            self._close_segment()
        if self._handle is None:
            self._open(event["id"])
        self._handle.write(line)
        self._handle.flush()
        self._size += len(line)
        self._dirty = True
        self.last_id = event["id"]

    def _open(self, first_id: int) -> None:
        """Open the segment to append to: the last one while it has room (a restart goes on in it), else a new one."""
        segments = self.segments()
        path = segments[-1][1] if segments else None
        if path is None or _size(path) >= self.segment_bytes:
            path = os.path.join(self.directory, f"{first_id:0{SEGMENT_ID_DIGITS}d}{SEGMENT_SUFFIX}")
        self._handle = open(path, "ab")  # noqa: SIM115 - held open across appends, closed at rotation and close()
        self._size = self._handle.tell()
        for _, old in self.segments()[: -self.keep_segments]:
            fsio.unlink_quietly(old)  # a reader still reading it keeps its open handle

    def _close_segment(self) -> None:
        self.sync()
        self._handle.close()
        self._handle = None

    def sync(self) -> None:
        """Make appended events durable (maintenance calls it; cheap when nothing was appended)."""
        if self._handle is not None and self._dirty:
            self._dirty = False
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle is not None:
            self._close_segment()

    def read(self, after: int = 0) -> Iterator[dict]:
        """Kept events with id > ``after``, oldest first.

        Race: pruning can remove a segment between the listing and its opening; its events
        are then no longer kept, as if the listing had come a moment later. A line being
        appended may be read half-written: it does not parse and is left out (callers take
        what follows the last whole line from memory).
        """
        segments = self.segments()
        for position, (_, path) in enumerate(segments):
            following = segments[position + 1][0] if position + 1 < len(segments) else None
            if following is not None and following <= after + 1:
                continue  # every event in it is at or before ``after``
            try:
                with open(path, "rb") as handle:
                    lines = handle.read().splitlines()
            except OSError:
                continue
            for line in lines:
                event = _parse_line(line)
                if event is not None and event["id"] > after:
                    yield event

    def oldest(self) -> dict | None:
        """The oldest kept event, or None."""
        return next(self.read(), None)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _parse_line(line: bytes) -> dict | None:
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and isinstance(event.get("id"), int) else None


class EventBus:
    """Publishes events: journal first, then memory, then wakes every waiting stream."""

    def __init__(self, journal: EventJournal):
        self.journal = journal
        self._cond = threading.Condition()
        self._recent: list[dict] = []  # newest events, ids increasing
        self._closed = False
        self.streams = 0  # open event streams, for /metrics

    @property
    def last_id(self) -> int:
        return self.journal.last_id

    def publish(self, kind: str, **fields: object) -> dict:
        with self._cond:
            event = {"id": self.journal.last_id + 1, "type": kind, **fields, "at": utc_now_precise()}
            try:
                self.journal.append(event)
            except OSError as exc:
                # The share failing must not stop the server's work; live streams still get the event.
                log.warning("events journal append failed: %s", exc)
                self.journal.last_id = event["id"]
            self._recent.append(event)
            if len(self._recent) > 2 * MEMORY_EVENTS:
                del self._recent[:MEMORY_EVENTS]  # trimmed in halves: amortised, not a shift per event
            self._cond.notify_all()
        return event

    def since(self, after: int) -> tuple[list[dict], bool]:
        """(events with id > ``after``, whether some were lost to the client: not kept, or ``after`` is
        ahead of the journal, e.g. a client of a server whose last events an OS crash lost)."""
        with self._cond:
            last = self.journal.last_id
            if after >= last:
                return [], after > last
            recent = self._recent
            if recent and after >= recent[0]["id"] - 1:
                return recent[bisect.bisect_right(recent, after, key=_event_id):], False
        # Older than memory: from disk, to its end (every published event is appended before it is in
        # memory), then whatever was published meanwhile. Not under the lock: reading disk takes a while.
        kept = list(self.journal.read(after))
        with self._cond:
            newest = kept[-1]["id"] if kept else after
            kept += [event for event in self._recent if event["id"] > newest]
        lost = not kept or kept[0]["id"] > after + 1
        return kept, lost

    def wait(self, after: int, timeout: float) -> None:
        """Return once an event newer than ``after`` is published, the bus closes, or ``timeout`` passes."""
        with self._cond:
            if self.journal.last_id <= after and not self._closed:
                self._cond.wait(timeout)

    def wake(self) -> None:
        """Wake every waiting stream now (the server is closing: they look at STREAM_GONE and end)."""
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            self.journal.close()

    def stream(self, after: int | None, gone: Callable[[], bool], job_id: str | None = None) -> Iterator[bytes]:
        """The SSE wire form: events after ``after`` (None: only new ones), then live ones until ``gone()``."""
        with self._cond:
            self.streams += 1
        try:
            yield f"retry: {RETRY_MS}\n\n".encode()
            if after is None:
                after = self.last_id
            events, lost = self.since(after)
            if lost:
                last = self.last_id
                detail = (f"event {after} is newer than the newest kept ({last}): the journal lost it"
                          if after > last else f"events after {after} are no longer kept; what is kept follows")
                oldest = events[0]["id"] if events else last + 1
                yield _wire(RESET, {"type": RESET, "oldest_id": oldest, "last_id": last, "detail": detail})
                after = min(after, last)
            sent = time.monotonic()
            while True:
                for event in events:
                    if job_id is None or event.get("job_id") == job_id:
                        yield _wire(event["type"], event, event["id"])
                        sent = time.monotonic()
                    after = event["id"]
                if gone() or self._closed:
                    return
                if time.monotonic() - sent >= KEEPALIVE_SECONDS:
                    yield b": keepalive\n\n"
                    sent = time.monotonic()
                self.wait(after, GONE_CHECK_SECONDS)
                events, _ = self.since(after)  # from disk if this stream fell behind memory; nothing is lost
        finally:
            with self._cond:
                self.streams -= 1


def _event_id(event: dict) -> int:
    return event["id"]


def _wire(kind: str, data: dict, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class TransitionTracker:
    """Emits a job event whenever a job's state differs from the one it last journaled for it.

    ``job_changed`` is the JobIndex's on-change callback: every placement and forgetting
    of a job, whoever caused it, passes here. Listeners (metrics, the webhook) get each
    job event with the job it is about: ``listener(event, job, live)``; ``live`` is False
    for what start-up reconciliation emits about the time the server was down.
    """

    def __init__(self, bus: EventBus, index: JobIndex, monitor: LivenessMonitor,
                 listeners: tuple[Callable[[dict, IndexedJob | None, bool], None], ...] = ()):
        self.bus = bus
        self.index = index
        self.monitor = monitor
        self.listeners = listeners
        # Lock order: the index's lock may be held when job_changed is called (a delete), never the reverse:
        # nothing here takes the index's lock while holding this one (state_of and host_of take none).
        self._lock = threading.Lock()
        self._jobs: dict[str, tuple[str, int]] = {}  # job id -> (state, attempt) last journaled
        self._hosts: dict[str, str] = {}  # host -> liveness last journaled

    # ----- start-up -----------------------------------------------------------------------

    def reconcile(self) -> None:
        """Replay the journal, then emit what the freshly synced index says changed since.

        A job the journal never mentioned is history (from before the journal) unless it
        was submitted after the oldest kept event: then it is new, and appears from null.
        """
        for event in self.bus.journal.read():
            if event.get("type") == JOB and event.get("to") == DELETED:
                self._jobs.pop(event["job_id"], None)
            elif event.get("type") == JOB:
                self._jobs[event["job_id"]] = (event["to"], event.get("attempt") or 0)
            elif event.get("type") == HOST:
                self._hosts[event["host"]] = event["to"]
        oldest = self.bus.journal.oldest()
        since = parse_utc(oldest["at"]) if oldest else None
        since_ns = int(since.timestamp() * 1e9) if since else None
        present = set()
        for job in self.index.jobs():
            job_id = job.entry.job_id
            present.add(job_id)
            if job_id not in self._jobs and (since_ns is None or job.entry.submit_ns < since_ns):
                self._jobs[job_id] = self._state(job)  # history: the journal starts after it
                continue
            self._changed(job_id, job, live=False)
        for job_id in [job_id for job_id in self._jobs if job_id not in present]:
            if job_id in self.index:
                del self._jobs[job_id]  # archived: history now, as the jobs from before the journal
            else:
                self._changed(job_id, None, live=False)  # deleted while the server was down

    def archived(self, job_ids: list[str]) -> None:
        """Jobs that moved into the archive: no change of state (no event), and no longer tracked, so that what
        this tracker holds stays the live jobs, not every job ever run."""
        with self._lock:
            for job_id in job_ids:
                self._jobs.pop(job_id, None)

    # ----- job transitions ----------------------------------------------------------------

    def job_changed(self, job_id: str, job: IndexedJob | None) -> None:
        """The index placed ``job`` (None: forgot it, the job is gone)."""
        self._changed(job_id, job, live=True)

    def _changed(self, job_id, job, live):
        with self._lock:
            before = self._jobs.get(job_id)
            if job is None:
                if before is None:
                    return
                del self._jobs[job_id]
                event = self.bus.publish(JOB, job_id=job_id, **{"from": before[0], "to": DELETED},
                                         host=None, attempt=before[1])
            elif job_id not in self.index:
                # Race: a delete forgot the job between its placement and this call; the delete's own
                # call (made under the index's lock) reports it, and it must not come back here.
                return
            else:
                now = self._state(job)
                # Races: a listing made before a move can place a job back where it was a moment ago
                # (sync corrects the index later), and callbacks of two threads can come in either
                # order. Only a step forwards (a later attempt, or further along the same one) is
                # news; state is read from the shared IndexedJob under this lock, so it is the newest.
                if now[0] not in STAGE or (before is not None and _progress(now) <= _progress(before)):
                    return
                self._jobs[job_id] = now
                event = self.bus.publish(JOB, job_id=job_id, **{"from": before[0] if before else None, "to": now[0]},
                                         host=self.index.host_of(job), attempt=now[1])
        for listener in self.listeners:
            try:
                listener(event, job, live)
            except Exception:  # a listener's bug must not break the index's caller
                log.exception("event listener failed for %s", event)

    def _state(self, job: IndexedJob) -> tuple[str, int]:
        return self.index.state_of(job).value, job.entry.attempt

    def check_active(self) -> None:
        """dispatched -> running (and an ending recorded before its move) is only in the attempt record:
        look at the few active jobs (``watch_active`` does, every ACTIVE_CHECK_SECONDS)."""
        with self._lock:
            active = [job_id for job_id, (state, _) in self._jobs.items() if state in ACTIVE_STATES]
        for job_id in active:
            job = self.index.get(job_id)  # outside our lock: it may resolve, which calls job_changed
            if job is not None:
                self.job_changed(job_id, job)

    # ----- hosts --------------------------------------------------------------------------

    def check_hosts(self) -> None:
        """Emit host events for liveness changes (after ``monitor.observe``, each maintenance round).

        A host whose heartbeat this server has not seen yet counts as suspect only because the
        server just started: that is no news about the host, and is not emitted.
        """
        for host in self.monitor.hosts():
            state = self.monitor.state(host)
            if state == SUSPECT and self.monitor.describe(host)["seconds_since_seen"] is None:
                continue
            with self._lock:
                before = self._hosts.get(host)
                if before == state:
                    continue
                self._hosts[host] = state
                self.bus.publish(HOST, host=host, **{"from": before, "to": state})

    def watch_active(self, stopping: threading.Event) -> None:
        """Run ``check_active`` until ``stopping``: a thread of its own, so that a job's start is told
        within a fraction of a second rather than a maintenance round (seconds) after it."""
        while not stopping.wait(ACTIVE_CHECK_SECONDS):
            try:
                self.check_active()
            except Exception:  # a transient NFS error must not end the watch
                log.exception("checking the active jobs for events failed; trying again")

    def maintain(self) -> None:
        self.check_hosts()
        self.bus.journal.sync()


def _progress(state: tuple[str, int]) -> tuple[int, int]:
    name, attempt = state
    try:
        return attempt, STAGE.get(JobState(name), -1)
    except ValueError:  # not a state a job is put in (a journal written by another version)
        return attempt, -1

