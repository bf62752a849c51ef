"""The on-disk protocol; docs/spool.md is its prose twin and must change with it.

    <root>/spool/staging/<uuid>/      submissions being built (same filesystem as the queue)
    <root>/spool/waiting/<entry>      published, waiting for its dependencies (only the server moves it on)
    <root>/spool/queued/<entry>       published, waiting for a claim
    <root>/spool/<host>/running/<entry>   claimed by <host> (one rename from queued/)
    <root>/spool/<host>/heartbeat.json    written by <host>'s agent
    <root>/spool/done/<state>/<entry>     ended: finished | failed | stopped | canceled
    <root>/spool/requests/<job_id>.stop   stop requests, written by the API only
    <root>/spool/trash/               two-phase deletes
    <root>/spool/inbox/<folder>/job.json  job folders dropped onto the share
    <root>/spool/rejected/<name>.<hex>/   what was set aside (an invalid dropped folder, an unreadable
                                      entry from queued/), with reason.json
    <root>/jobs/<job_id>/             the job's data; never moves while the job exists
    <root>/jobs/<job_id>/config.yaml  the job's config, snapshotted at submit (configs/ is the store's)

An entry's name is ``PPP_RRRRRRRRRRRR_TTTTTTTTTTTTTTTTTTT_<target>_GG_AAA_<job_id>.json``:
PPP is 100 - priority, R the fair-share rank (fairshare.py), T the submit time in ns, GG
the GPUs asked (GPUS_ALL for "all"), A the attempt. A sorted listing of queued/ is
therefore the dispatch order, an agent can decide from names alone whether a job is for
it and fits, and the attempt in the name is what fences a superseded attempt (its
owner's renames fail, its records are not the current one). Names of the older format
``PPP_T19_<target>_AAA_<job_id>.json`` still parse (Entry.legacy).
"""

import contextlib
import datetime as dt
import errno
import logging
import os
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

from . import crashpoints, fsio, names
from .exceptions import Conflict, SpoolError, Unavailable, storage_error
from .jobs import ANY_HOST, CONFIG_SNAPSHOT, MAX_PRIORITY, JobFolder, JobSpec, parse_utc, utc_now, utc_now_precise
from .states import TERMINAL_STATES, JobState, check_transition

log = logging.getLogger(__name__)

ENTRY_SUFFIX = ".json"
RANK_DIGITS = 12
GPUS_ALL = 99  # the GPU field of an entry name for a job asking for "all" of its host's GPUs
WAITING = "waiting"
QUEUED = "queued"
DONE = "done"
RUNNING = "running"
TERMINAL_DIRS = tuple(sorted(state.value for state in TERMINAL_STATES))
REASON_FILE = "reason.json"
# How long an unreadable entry in queued/ is left alone before it is set aside (see reject_unreadable_queued).
UNREADABLE_ENTRY_SETTLE_SECONDS = 5.0
# rejected/<name>.<hex>: the part of a name kept, so that the folder's name stays within NAME_MAX.
NAME_KEPT = 200
# Half-published folders and staging dirs younger than this may belong to a submission in flight.
ORPHAN_MIN_AGE = 60.0
# How Spool.durable makes a submission's files durable: an fsync of each by its writer (concurrent fsyncs are
# merged by the filesystem's journal), or a group commit flushing each batch with one syncfs(2) of the share.
FLUSH_SYNCFS = "syncfs"
FLUSH_FSYNC = "fsync"
COMMIT_FLUSHES = (FLUSH_SYNCFS, FLUSH_FSYNC)


class Entry(NamedTuple):
    priority: int
    submit_ns: int
    target: str
    attempt: int
    job_id: str
    rank: int = 0  # the fair-share rank (fairshare.py): round-robin between submitters within a priority
    gpus: int = 0  # GPUs asked: a count, or GPUS_ALL
    legacy: bool = False  # a name from before ranks and GPUs were in it: rendered back as it was

    @property
    def name(self) -> str:
        if self.legacy:
            return (f"{MAX_PRIORITY - self.priority:03d}_{self.submit_ns:019d}_{self.target}"
                    f"_{self.attempt:03d}_{self.job_id}{ENTRY_SUFFIX}")
        return (
            f"{MAX_PRIORITY - self.priority:03d}_{self.rank:0{RANK_DIGITS}d}_{self.submit_ns:019d}_{self.target}"
            f"_{self.gpus:02d}_{self.attempt:03d}_{self.job_id}{ENTRY_SUFFIX}"
        )

    @classmethod
    def parse(cls, name: str) -> "Entry | None":
        """The Entry a file name encodes, or None for anything else (temp files, strays).

        The second field's width tells the two formats apart: a rank has RANK_DIGITS digits,
        the submit time of a legacy name 19.
        """
        if not name.endswith(ENTRY_SUFFIX) or name.startswith("."):
            return None
        stem = name[: -len(ENTRY_SUFFIX)]
        head = stem.split("_", 2)
        if len(head) == 3 and len(head[1]) == RANK_DIGITS:
            parts = stem.split("_", 6)
            if len(parts) != 7:
                return None
            prio, rank, ts, target, gpus, attempt, job_id = parts
            legacy = False
        else:
            parts = stem.split("_", 4)
            if len(parts) != 5:
                return None
            prio, ts, target, attempt, job_id = parts
            rank, gpus, legacy = "0", "00", True
        if not (prio.isdigit() and rank.isdigit() and ts.isdigit() and attempt.isdigit()
                and gpus.isdigit() and len(gpus) == 2):
            return None
        if not names.JOB_ID.match(job_id) or not names.HOST.match(target):
            return None
        return cls(MAX_PRIORITY - int(prio), int(ts), target, int(attempt), job_id, int(rank), int(gpus), legacy)

    @staticmethod
    def target_of(name: str) -> str | None:
        """The target field of an entry name, cheaply (None if it has none); parse() validates."""
        parts = name.split("_", 4)
        if len(parts) < 4:
            return None
        return parts[3] if len(parts[1]) == RANK_DIGITS else parts[2]

    @property
    def gpus_wanted(self) -> int | str:
        """What the job asks for as its spec says it: 0, a count, or "all"."""
        return "all" if self.gpus == GPUS_ALL else self.gpus

    def next_attempt(self) -> "Entry":
        return self._replace(attempt=self.attempt + 1)


class Location(NamedTuple):
    """Where an entry sits: kind is queued | running | done; host for running, state for done."""

    kind: str  # waiting | queued | running | done
    detail: str = ""


class JobStatus(NamedTuple):
    """One job as the protocol sees it now: its entry, where that is, its state and its host."""

    entry: Entry
    location: Location
    state: JobState
    host: str


class Spool:
    def __init__(self, root: str, commit_flush: str = FLUSH_FSYNC) -> None:
        self.root = os.path.abspath(root)
        self.spool_dir = os.path.join(self.root, "spool")
        self.jobs_dir = os.path.join(self.root, "jobs")
        self.configs_dir = os.path.join(self.root, "configs")
        self.datasets_dir = os.path.join(self.root, "datasets")
        self.staging_dir = os.path.join(self.spool_dir, "staging")
        self.queued_dir = os.path.join(self.spool_dir, QUEUED)
        self.waiting_dir = os.path.join(self.spool_dir, WAITING)
        self.done_dir = os.path.join(self.spool_dir, DONE)
        self.requests_dir = os.path.join(self.spool_dir, "requests")
        self.trash_dir = os.path.join(self.spool_dir, "trash")
        self.inbox_dir = os.path.join(self.spool_dir, "inbox")
        self.rejected_dir = os.path.join(self.spool_dir, "rejected")
        self.commit_flush = commit_flush
        # Group commits: of files (commit_flush syncfs: one syncfs per batch), and of commit renames (the
        # directories' fsyncs), apart so that a batch of renames never waits behind a writeback of file data.
        self._files_commit = fsio.GroupCommit(self._flush_files)
        self._dirs_commit = fsio.GroupCommit(fsio.fsync_each)
        self._readable_queued = set()  # see reject_unreadable_queued

    # ----- layout -------------------------------------------------------------------------

    def ensure_layout(self) -> None:
        for path in (self.jobs_dir, self.configs_dir, self.datasets_dir, self.staging_dir,
                     self.queued_dir, self.waiting_dir, self.requests_dir, self.trash_dir, self.inbox_dir,
                     self.rejected_dir, *(self.done_path(state) for state in TERMINAL_DIRS)):
            fsio.makedirs(path)

    def running_dir(self, host: str) -> str:
        return os.path.join(self.spool_dir, host, RUNNING)

    def heartbeat_path(self, host: str) -> str:
        return os.path.join(self.spool_dir, host, "heartbeat.json")

    def drain_path(self, host: str) -> str:
        return os.path.join(self.spool_dir, host, "drain")

    def request_drain(self, host: str, undo: bool = False) -> None:
        """Ask ``host``'s agent to take no new jobs (``undo`` lifts it); a file the agent reads."""
        path = self.drain_path(names.host(host))
        if undo:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            return
        fsio.makedirs(os.path.dirname(path))
        fsio.atomic_write_json(path, {"host": host, "requested_at": utc_now()})

    def done_path(self, state: str) -> str:
        return os.path.join(self.done_dir, state)

    def location_of_dir(self, directory: str) -> Location | None:
        """The Location a directory holds entries for, or None (the inverse of location_dir)."""
        if directory == self.queued_dir:
            return Location(QUEUED)
        if directory == self.waiting_dir:
            return Location(WAITING)
        parent, leaf = os.path.split(directory)
        if leaf == RUNNING and os.path.dirname(parent) == self.spool_dir:
            return Location(RUNNING, os.path.basename(parent))
        if parent == self.done_dir and leaf in TERMINAL_DIRS:
            return Location(DONE, leaf)
        return None

    def location_dir(self, location: Location) -> str:
        if location.kind == QUEUED:
            return self.queued_dir
        if location.kind == WAITING:
            return self.waiting_dir
        if location.kind == RUNNING:
            return self.running_dir(location.detail)
        return self.done_path(location.detail)

    def entry_path(self, location: Location, entry: Entry) -> str:
        return os.path.join(self.location_dir(location), entry.name)

    def folder(self, job_id: str) -> JobFolder:
        return JobFolder(self.jobs_dir, job_id)

    def worker_hosts(self) -> list[str]:
        """Hosts that have (or had) a running/ directory on the share."""
        return sorted(
            name for name in fsio.listdir(self.spool_dir)
            if names.HOST.match(name) and name not in names.RESERVED_HOSTS
            and os.path.isdir(self.running_dir(name))
        )

    def known_hosts(self, configured: Iterable[str]) -> list[str]:
        """The hosts jobs may name: the ``configured`` ones and those whose agent ever ran on this share."""
        return sorted(set(configured) | set(self.worker_hosts()))

    def locations(self) -> Iterator[Location]:
        """Every place an entry can be, queue first."""
        yield Location(QUEUED)
        yield Location(WAITING)
        for host in self.worker_hosts():
            yield Location(RUNNING, host)
        for state in TERMINAL_DIRS:
            yield Location(DONE, state)

    def scan(self, include_done: bool = True) -> Iterator[tuple[Location, Entry]]:
        """(Location, Entry) for every entry on disk; a listing, no file is opened."""
        for location in self.locations():
            if location.kind == DONE and not include_done:
                continue
            for name in fsio.listdir(self.location_dir(location)):
                entry = Entry.parse(name)
                if entry:
                    yield location, entry

    def find(self, entry: Entry, hint: Location | None = None) -> Location | None:
        """Where ``entry`` is now (stat per candidate, no listing), or None."""
        candidates = list(self.locations())
        if hint is not None and hint in candidates:
            candidates.remove(hint)
            candidates.insert(0, hint)
        for location in candidates:
            if os.path.exists(self.entry_path(location, entry)):
                return location
        return None

    # ----- the state rule -----------------------------------------------------------------

    def state_at(self, location: Location, entry: Entry) -> JobState:
        """A job's state: where its entry is, and for an entry on a host, its attempt record.

        queued/ means queued, waiting/ waiting and done/<state>/ that state. In a running/ the record tells
        dispatched (none yet), running, or ended-but-not-yet-moved (a crash between finish's
        record and its rename), except that an ending asking for a retry means queued (a crash
        between retry's record and its rename); a record that cannot be understood is ``unknown``.
        """
        if location.kind == QUEUED:
            return JobState.QUEUED
        if location.kind == WAITING:
            return JobState.WAITING
        if location.kind == DONE:
            return JobState(location.detail)
        attempt = self.read_attempt(entry)
        if attempt is None:
            return JobState.DISPATCHED
        if asks_retry(attempt):
            return JobState.QUEUED  # its retry's rename is pending (see retry): the job is not over
        try:
            return JobState(attempt.get("state"))
        except ValueError:
            return JobState.UNKNOWN

    def host_at(self, location: Location, entry: Entry, ran_on: str | None = None) -> str:
        """The host a job is on or ran on: its running/'s, else ``ran_on``, else its record's, else its target."""
        if location.kind == RUNNING:
            return location.detail
        if ran_on:
            return ran_on
        if location.kind == DONE and entry.target == ANY_HOST:
            return (self.read_attempt(entry) or {}).get("host") or entry.target
        return entry.target

    # ----- publish ------------------------------------------------------------------------

    def publish(self, spec: JobSpec, config: bytes | None = None, rank: int = 0) -> Entry:
        """Make a job visible atomically; returns its Entry (``rank``: its fair-share rank).

        The job folder (``staging/<uuid>/``, with job_info.json and the snapshot of its
        ``config``, config.yaml) and the entry (``staging/<uuid>.entry``) are built in
        staging/; the folder is renamed to jobs/<id> (refused if the id exists: a rename onto
        a non-empty directory fails), then the entry is renamed into queued/ (waiting/ for a
        job with dependencies: ``publish_location``). That last rename
        is the commit point: until then the job is not in the queue, and a crash in between
        leaves a folder with no entry, which ``recover_orphans`` removes. The staged files are
        flushed before it (``durable``) and the rename after it, by a group commit shared with concurrent
        submissions (``durable_dirs``): when this returns, the job is durable. The output
        sub-folders are made by the agent that runs the job (``Runner``), not here:
        publishing is the hot path.
        """
        target = self.folder(spec.job_id).path
        if os.path.exists(target):
            raise Conflict(f"job {spec.job_id!r} already exists", job_id=spec.job_id)
        stage = os.path.join(self.staging_dir, uuid.uuid4().hex)
        entry = entry_for(spec, time.time_ns(), rank)
        location = publish_location(spec)
        entry_stage = stage + ".entry"
        entry_path = self.entry_path(location, entry)
        folder_moved = committed = False
        try:
            # Staging is private to this call, so files are written in place (no temp + rename), and
            # flushed together below (``durable``: with commit_flush syncfs, with everyone's).
            os.mkdir(stage)
            fsio.write_new(os.path.join(stage, "job_info.json"), fsio.json_bytes(spec.job_info()), durable=False)
            if config is not None:
                fsio.write_new(os.path.join(stage, CONFIG_SNAPSHOT), config, durable=False)
            fsio.write_new(entry_stage, fsio.json_bytes(spec.to_dict()), durable=False)
            try:
                os.rename(stage, target)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise Conflict(f"job {spec.job_id!r} already exists", job_id=spec.job_id) from None
                raise
            folder_moved = True
            # Flush 1, before the commit: the entry holds the whole spec (readers fall back to it if an OS
            # crash loses job_info.json), so an entry in queued/ is always whole; the config snapshot is in no
            # entry, so it and the folder's rename must survive on their own. (kill -9 of the server needs no
            # flush at all: the page cache survives it; the flushes are for an OS or NFS server crash.)
            self.durable(entry_stage, *((os.path.join(target, CONFIG_SNAPSHOT), self.jobs_dir) if config else ()))
            crashpoints.reach("publish.committing")
            os.rename(entry_stage, entry_path)
            committed = True
            crashpoints.reach("publish.committed")
            # Flush 2: the commit rename itself. Only then may the caller answer.
            self.durable_dirs(os.path.dirname(entry_path))
            return entry
        except BaseException as exc:
            # A failed flush after the commit: the entry is visible but not known durable, so it is taken back if
            # no agent claimed it meanwhile (one rename, racing the claim); a claimed job runs, the caller is
            # told it failed all the same (JobService.submit says the job may exist).
            if committed and fsio.rename_claim(entry_path, entry_stage) is True:
                committed = False
            if not committed:
                # Nothing was committed (a full or read-only share fails here): leave nothing behind. The
                # folder, if already renamed, is still ours alone (no entry names it: nobody can claim, stop or
                # delete it), so it goes back to staging; if even that fails (a read-only share), it is an
                # orphan that recover_orphans and fsck collect.
                if folder_moved:
                    with contextlib.suppress(OSError):
                        os.rename(target, stage)
                shutil.rmtree(stage, ignore_errors=True)
                fsio.unlink_quietly(entry_stage)
            if isinstance(exc, fsio.FlushError):
                raise flush_refusal(exc, spec.job_id, committed) from exc
            raise

    def durable(self, *paths: str) -> None:
        """Return once what was written to the files ``paths`` (and renames in directories among them) is
        durable, as ``commit_flush`` says: fsynced by this caller, or by a group commit (``fsio.GroupCommit``)
        shared with every concurrent caller. Raises FlushError if that failed; nothing of it is then known
        durable."""
        if self.commit_flush == FLUSH_SYNCFS:
            self._files_commit.sync(paths)
            return
        # Each caller fsyncs its own files, concurrently: a local filesystem's journal merges concurrent fsyncs
        # into one commit (ext4's jbd2 does), which is the group commit there, without a writeback of the
        # whole filesystem.
        try:
            fsio.fsync_each(paths)
        except OSError as exc:
            raise fsio.FlushError(exc.errno, exc.strerror, exc.filename) from exc

    def durable_dirs(self, *directories: str) -> None:
        """Like ``durable``, for renames only: the batch's directories are fsynced (on NFS a rename is durable
        at the server when it returns; on a local filesystem this is a journal commit, not a writeback)."""
        self._dirs_commit.sync(directories)

    def _flush_files(self, paths: set[str]) -> None:
        fsio.sync_filesystem(self.root)  # one call, whatever the batch holds

    def upgrade_legacy_queued(self) -> list[Entry]:
        """Rename queued entries of the older name format (no rank, no GPUs) into the current one; returns
        the new entries. They get rank 0: queued before fair sharing, they stay ahead within their priority.

        Race: an agent may claim the old name meanwhile; then this rename fails and the claim stands.
        """
        upgraded = []
        for name in fsio.listdir(self.queued_dir):
            entry = Entry.parse(name)
            if entry is None or not entry.legacy:
                continue
            spec = self.read_spec(Location(QUEUED), entry)
            if spec is None:
                continue  # claimed meanwhile, or garbage that reject_unreadable_queued sets aside
            new = entry_for(spec, entry.submit_ns, 0)._replace(attempt=entry.attempt)
            if fsio.rename_claim(os.path.join(self.queued_dir, name), self.entry_path(Location(QUEUED), new)):
                upgraded.append(new)
        if upgraded:
            self.durable_dirs(self.queued_dir)
        return upgraded

    def read_spec(self, location: Location, entry: Entry) -> JobSpec | None:
        """The entry's JobSpec, or None if the entry is gone or is not one (see ``_read_entry``)."""
        return _read_entry(self.entry_path(location, entry), entry)[0]

    # ----- claim, run, finish (the owner's side) ------------------------------------------

    def claim(self, entry: Entry, host: str, agent_id: str) -> bool:
        """Move a queued entry into ``host``'s running/; True if this agent owns it now.

        Exactly one claimer wins because rename is atomic at the server, and only one
        agent works for a host name on a machine (agent.HostPresence). That settles the
        NFS case of a retransmitted rename reporting ENOENT although it succeeded: the
        entry is in our running/ and no other agent has written its attempt record, so
        the rename was ours. (With a record from another agent, that agent won.)
        """
        src = os.path.join(self.queued_dir, entry.name)
        running = self.running_dir(host)
        dst = os.path.join(running, entry.name)
        moved = fsio.rename_claim(src, dst)
        if moved is None:
            record = fsio.read_json_object(self.folder(entry.job_id).attempt_record(entry.attempt))
            moved = record is None or record.get("agent_id") == agent_id
        if not moved:
            return False
        crashpoints.reach("claim.renamed")
        self.write_attempt(entry, host, agent_id, JobState.DISPATCHED, claimed_at=utc_now())
        return True

    def write_attempt(self, entry: Entry, host: str, agent_id: str, state: JobState | str,
                      **details) -> dict | None:
        """Write the attempt record jobs/<id>/attempts/<n>.json (only attempt n's owner does); returns it.

        Returns None, writing nothing, when the job's folder is gone: the job was deleted,
        which supersedes every attempt of it.
        """
        folder = self.folder(entry.job_id)
        path = folder.attempt_record(entry.attempt)
        record = fsio.read_json_object(path) or {}
        if record.get("state") not in (None, JobState(state).value):
            check_transition(record["state"], state)  # an ended attempt is never rewritten
        record.update(details)
        record.update(job_id=entry.job_id, attempt=entry.attempt, host=host, agent_id=agent_id,
                      state=JobState(state).value, updated_at=utc_now())
        # Race: a delete can rename the job folder into the trash at any moment. Only the leaf
        # attempts/ is ever made here, and every path below resolves through jobs/<id>, so a
        # write after the delete fails instead of re-creating the deleted job's folder.
        try:
            fsio.make_leaf_dir(os.path.dirname(path))
            fsio.atomic_write_json(path, record)
        except OSError as exc:
            if not fsio.is_gone(exc):
                raise
            log.info("job %s is deleted; attempt %s's record is not written", entry.job_id, entry.attempt)
            return None
        return record

    def read_attempt(self, entry: Entry) -> dict | None:
        """The attempt record, or None (not written yet, half-written, or planted as a link out of the
        job's folder: jobs write under their folder, and a record must not be taken from elsewhere)."""
        folder = self.folder(entry.job_id)
        try:
            return fsio.read_job_json(folder.attempt_record(entry.attempt), folder.path)
        except fsio.Refused as refused:
            log.warning("job %s attempt %s's record %s; ignored", entry.job_id, entry.attempt, refused)
            return None

    def finish(self, entry: Entry, host: str, agent_id: str, state: JobState | str, **details) -> bool:
        """Record the end of an attempt, then move its entry to done/<state>/.

        The record comes first: a crash between the two leaves a running entry whose
        record is terminal, which readers report as terminal and ``complete_finished``
        moves later. If the rename finds the entry gone, this attempt was superseded
        (requeued after the host was judged lost, or deleted): returns False and the
        record, written under a stale attempt number, is ignored by every reader (for a
        deleted job there is no folder left to write it into, and none is made).
        """
        state = JobState(state)
        self.write_attempt(entry, host, agent_id, state, ended_at=utc_now(), **details)
        crashpoints.reach("finish.recorded")
        src = os.path.join(self.running_dir(host), entry.name)
        moved = fsio.rename_claim(src, os.path.join(self.done_path(state.value), entry.name))
        if moved is False:
            return False
        fsio.fsync_dir(self.done_path(state.value))
        return True

    def recorded_ending(self, entry: Entry) -> JobState | None:
        """The terminal state the attempt's record holds, or None (no record yet, not ended, or ended
        asking for a retry: such an entry is requeued, never moved to done/ by its record)."""
        record = self.read_attempt(entry) or {}
        if asks_retry(record):
            return None
        try:
            state = JobState(record.get("state"))
        except ValueError:
            return None
        return state if state.terminal else None

    def complete_finished(self, host: str) -> None:
        """Move entries whose terminal record is written but which are still in running/."""
        for name in fsio.listdir(self.running_dir(host)):
            entry = Entry.parse(name)
            ending = self.recorded_ending(entry) if entry else None
            if ending:
                fsio.rename_claim(os.path.join(self.running_dir(host), name),
                                  os.path.join(self.done_path(ending.value), name))

    # ----- requests from the API ----------------------------------------------------------

    def cancel_queued(self, entry: Entry, location: Location | None = None) -> bool:
        """Cancel a queued (or, given its ``location``, waiting) entry by winning the rename race against
        claimers (or the dependency resolver's release); True if canceled."""
        src = self.entry_path(location or Location(QUEUED), entry)
        moved = fsio.rename_claim(src, os.path.join(self.done_path(JobState.CANCELED.value), entry.name))
        # Ambiguous (NFS retransmit) means the target exists: only this call moves to canceled/.
        return moved is not False

    def release_waiting(self, entry: Entry) -> bool:
        """Move a waiting entry into queued/ (its dependencies are met); True if it moved.

        Only the server moves entries out of waiting/ (release, cancel, delete), so the rename
        races only a stop or delete of the same job; whichever rename wins decides.
        """
        moved = fsio.rename_claim(self.entry_path(Location(WAITING), entry),
                                  self.entry_path(Location(QUEUED), entry))
        if moved is False:
            return False
        self.durable_dirs(self.queued_dir)
        return True

    def cancel_waiting(self, entry: Entry, reason: str, **details) -> bool:
        """End a waiting entry as canceled with ``reason`` (a dependency failed); True if it moved.

        The server writes the attempt record (it acts as the owner of an attempt that never
        ran) before the rename: a crash between the two leaves a waiting entry, which the next
        resolution cancels again. If a stop or delete won the rename, the record's reason is moot.
        """
        self.write_attempt(entry, "", "", JobState.CANCELED, reason=reason, ended_at=utc_now(), **details)
        return self.cancel_queued(entry, Location(WAITING))

    def stop_request_path(self, job_id: str) -> str:
        return os.path.join(self.requests_dir, f"{job_id}.stop")

    def request_stop(self, job_id: str, by: str = "") -> None:
        fsio.atomic_write_json(self.stop_request_path(job_id), {"job_id": job_id, "requested_at": utc_now(),
                                                               "requested_by": by})

    def stop_requested(self, job_id: str) -> bool:
        return os.path.exists(self.stop_request_path(job_id))

    def clear_stop_request(self, job_id: str) -> None:
        try:
            os.unlink(self.stop_request_path(job_id))
        except OSError as exc:
            if not fsio.is_gone(exc):
                raise

    def requeue(self, entry: Entry, host: str) -> Entry | None:
        """Put a lost host's running entry back in the queue as the next attempt.

        One rename, racing the owner's finish(): if the owner finished first, the rename
        fails and the job keeps its ending. Returns the new Entry or None.
        """
        new = entry.next_attempt()
        moved = fsio.rename_claim(os.path.join(self.running_dir(host), entry.name),
                                  os.path.join(self.queued_dir, new.name))
        crashpoints.reach("requeue.renamed")
        return new if moved is not False else None

    def retry(self, entry: Entry, host: str, agent_id: str, delay: float, **details) -> Entry | None:
        """End a failed attempt asking for a retry ``delay`` seconds from now, and requeue the job.

        The owner writes the attempt's record ``failed`` with ``retry_at`` first, then renames
        running/<entry> to queued/<entry attempt+1> (``requeue``: one rename, with its fencing).
        In that order no agent can claim the next attempt before ``retry_at`` is on disk for it to
        see (``retry_at``). A crash between the two leaves a running entry whose record asks for
        a retry: readers call the job queued (``state_at``), and the entry is requeued like an
        attempt of a lost host, by the restarted agent or the server. If the rename finds the
        entry gone, this attempt was superseded (requeued after a lost lease, or deleted):
        returns None, and the record, of a stale attempt, is history only. (A requeue by the
        server aims at the same name, attempt+1, so the job is queued once either way.)
        """
        if self.write_attempt(entry, host, agent_id, JobState.FAILED, ended_at=utc_now(),
                              retry_at=utc_now_precise(delay), **details) is None:
            return None  # the job is deleted
        crashpoints.reach("retry.recorded")
        return self.requeue(entry, host)

    def retry_at(self, entry: Entry) -> dt.datetime | None:
        """When a queued ``entry`` may be claimed: the ``retry_at`` its previous attempt's record asks
        for (an attempt > 1 after a failure with retry_on_failure); None if at any time."""
        if entry.attempt <= 1:
            return None
        record = self.read_attempt(entry._replace(attempt=entry.attempt - 1)) or {}
        return parse_utc(record.get("retry_at"))

    def log_attempt(self, entry: Entry) -> int:
        """The earlier attempt whose output the job's log holds until ``entry``'s runner moves it aside: the newest
        that started (or ended: one that could not start notes why in the log). One requeued before it started
        wrote nothing."""
        for number in range(entry.attempt - 1, 0, -1):
            record = self.read_attempt(entry._replace(attempt=number)) or {}
            if record.get("started_at") or record.get("ended_at"):
                return number
        return entry.attempt - 1

    def recover_lost(self, entry: Entry, host: str, reason: str) -> tuple[Location, Entry] | None:
        """A running attempt whose agent is gone: requeue it if the job's max_retries allow, else fail it.

        Returns (Location, Entry) of where the job went, or None if its owner's own move won.
        """
        spec = self.read_spec(Location(RUNNING, host), entry)
        if spec is not None and entry.attempt <= spec.max_retries:
            requeued = self.requeue(entry, host)
            return (Location(QUEUED), requeued) if requeued else None
        if self.fail_lost(entry, host, reason):
            return Location(DONE, JobState.FAILED.value), entry
        return None

    def fail_lost(self, entry: Entry, host: str, reason: str) -> bool:
        """End a lost host's running entry as failed; the server acts as the owner of record."""
        src = os.path.join(self.running_dir(host), entry.name)
        dst = os.path.join(self.done_path(JobState.FAILED.value), entry.name)
        if fsio.rename_claim(src, dst) is False:
            return False
        record = self.read_attempt(entry) or {}
        self.write_attempt(entry, host, record.get("agent_id", ""), JobState.FAILED, reason=reason,
                           ended_at=utc_now())
        return True

    # ----- delete, setting aside and recovery ---------------------------------------------

    def trash(self, path: str) -> bool:
        """Phase one of a delete: one rename out of sight; False if ``path`` is gone. ``empty_trash`` does phase two.

        Of concurrent callers for one path exactly one rename succeeds: that is what makes
        one of several concurrent DELETEs of a job the winner (JobService.delete).
        """
        target = os.path.join(self.trash_dir, f"{uuid.uuid4().hex}-{os.path.basename(path)}")
        try:
            os.rename(path, target)
        except OSError as exc:
            if fsio.is_gone(exc):
                return False
            raise
        return True

    def empty_trash(self) -> None:
        # .nfsXXXX files (deleted while open elsewhere) make rmtree fail: leave them for later.
        for name in fsio.listdir(self.trash_dir):
            shutil.rmtree(os.path.join(self.trash_dir, name), ignore_errors=True)
            try:
                os.unlink(os.path.join(self.trash_dir, name))
            except OSError:
                pass

    def set_aside(self, path: str, source: str, reason: str, **facts) -> bool:
        """Move ``path`` (a folder, file or link) into ``rejected/<name>.<hex>/`` beside a reason.json.

        What is set aside goes *inside* a fresh folder of ours, so reason.json never lands
        in (or through a link in) what was moved. Returns False if ``path`` is gone.
        """
        name = os.path.basename(path)
        target = os.path.join(self.rejected_dir, f"{name[:NAME_KEPT]}.{uuid.uuid4().hex[:8]}")
        os.mkdir(target)
        try:
            os.rename(path, os.path.join(target, name))
        except OSError as exc:
            os.rmdir(target)
            if fsio.is_gone(exc):
                return False
            raise
        fsio.atomic_write_json(os.path.join(target, REASON_FILE),
                               {"name": name, "source": source, "reason": reason, "rejected_at": utc_now(), **facts})
        log.warning("%s/%s set aside into %s: %s", source, name, target, reason)
        return True

    def rejected_summary(self, limit: int = 5) -> dict:
        """How many things were set aside into rejected/, and the newest few names (for /health)."""
        rejected = fsio.listdir(self.rejected_dir)
        rejected.sort(key=lambda name: fsio.age(os.path.join(self.rejected_dir, name)))
        return {"count": len(rejected), "newest": rejected[:limit]}

    def reject_unreadable_queued(self, min_age: float = UNREADABLE_ENTRY_SETTLE_SECONDS) -> list[Entry]:
        """Set aside the entries in queued/ that cannot be read as their job's spec; returns them.

        An entry is staged, fsynced and renamed into queued/ whole, so one that cannot be read
        is never one being written: it is garbage (a planted file, a directory, a link), which
        agents skip forever. ``min_age`` (by mtime) only spares a reader's stale view of a
        file another NFS host renamed a moment ago. An entry never changes, so each name is
        read once; ``_readable_queued`` remembers those that read fine while they are queued.
        """
        listed, rejected = set(), []
        for name in fsio.listdir(self.queued_dir):
            listed.add(name)
            entry = Entry.parse(name)
            if entry is None or name in self._readable_queued:
                continue
            path = os.path.join(self.queued_dir, name)
            spec, problem = _read_entry(path, entry)
            if spec is not None:
                self._readable_queued.add(name)
            elif problem and fsio.age(path) >= min_age and self.set_aside(
                    path, QUEUED, f"spool/queued/{name} {problem}", job_id=entry.job_id):
                rejected.append(entry)
        self._readable_queued &= listed
        return rejected

    def recover_orphans(self, unknown: Callable[[Iterable[str]], set[str]],
                        min_age: float = ORPHAN_MIN_AGE) -> list[str]:
        """Clean what a crash in the middle of publish() or delete can leave behind.

        Staging dirs older than ``min_age`` are removed (never published). A job folder
        with no entry anywhere and older than ``min_age`` belongs to a submission that
        never got its 2xx, or to a delete that trashed the entry and died before the
        folder: it goes to the trash. ``unknown`` picks, from the folder names, the ids of no
        job (the index's ``unknown_among``: live and archived jobs, in bulk).
        """
        removed = []
        for name in fsio.listdir(self.staging_dir):
            path = os.path.join(self.staging_dir, name)
            if fsio.age(path) > min_age:
                shutil.rmtree(path, ignore_errors=True)
                fsio.unlink_quietly(path)  # a staged entry is a file
        for job_id in sorted(unknown(fsio.listdir(self.jobs_dir))):
            path = os.path.join(self.jobs_dir, job_id)
            if fsio.age(path) > min_age and self.trash(path):
                removed.append(job_id)
        return removed

    def check_one_filesystem(self) -> str | None:
        """None if the whole tree is on one filesystem (renames need it), else a sentence."""
        devices = {}
        for path in (self.root, self.spool_dir, self.jobs_dir, self.configs_dir, self.queued_dir,
                     self.done_dir, self.trash_dir, self.staging_dir):
            try:
                devices[path] = os.stat(path).st_dev
            except OSError as exc:
                return f"cannot stat {path}: {exc.strerror}"
        if len(set(devices.values())) > 1:
            return "the shared root spans several filesystems; renames between them fail (EXDEV)"
        return None

    def check_writable(self) -> str | None:
        """None if a file can be created and removed in the shared root (for /health), else a sentence."""
        probe = fsio.temp_name(self.staging_dir, "health")
        try:
            try:
                with open(probe, "xb") as handle:
                    handle.write(b"ok")
            finally:  # also when the write failed (a full disk): leave no probe behind
                if os.path.lexists(probe):
                    os.unlink(probe)  # not unlink_quietly: a probe that cannot be removed is a failure too
        except OSError as exc:
            return f"the shared root is not writable: {exc}"
        return None


def asks_retry(record: dict) -> bool:
    """Whether an attempt record ended failed asking for a retry (``Spool.retry``)."""
    return record.get("state") == JobState.FAILED.value and bool(record.get("retry_at"))


def entry_for(spec: JobSpec, submit_ns: int, rank: int) -> Entry:
    """The first attempt's Entry of a job being published."""
    gpus = GPUS_ALL if spec.gpus == "all" else int(spec.gpus or 0)
    return Entry(spec.priority, submit_ns, spec.target_host, 1, spec.job_id, rank, gpus)


def flush_refusal(exc: OSError, job_id: str, published: bool) -> SpoolError:
    """The JSON error of a submission whose flush failed: 507/503 as for any write the share refused (full, over
    quota, read-only), else 503; ``published``: an agent claimed the job before it could be taken back."""
    if published:
        return Unavailable(f"the shared root failed to make the submission durable ({exc.strerror}), but an agent "
                           f"had already claimed job {job_id}: it runs; it may be lost if the share crashes",
                           job_id=job_id, reason=errno.errorcode.get(exc.errno, "EIO"))
    return storage_error(exc) or Unavailable(
        f"the shared root failed to make the submission durable ({exc.strerror}): nothing was published; try again",
        reason=errno.errorcode.get(exc.errno, "EIO"))


def publish_location(spec: JobSpec) -> Location:
    """Where a job's entry is published: waiting/ while it has dependencies, else queued/."""
    return Location(WAITING) if spec.after or spec.after_any else Location(QUEUED)


def _read_entry(path, entry):
    """(JobSpec, None) for a readable entry; (None, None) if it is gone; (None, what is wrong) for garbage."""
    try:
        mode = os.lstat(path).st_mode
    except OSError as exc:
        if fsio.is_gone(exc):
            return None, None
        raise
    if not stat.S_ISREG(mode):
        return None, "is not a regular file"  # a directory, a link, a FIFO (opening one would block)
    doc = fsio.read_json(path)
    if doc is None:
        return (None, "is not valid JSON") if os.path.lexists(path) else (None, None)
    if not isinstance(doc, dict) or doc.get("job_id") != entry.job_id:
        return None, f"is not a job spec of job {entry.job_id}"
    try:
        return JobSpec.from_dict(doc), None
    except TypeError:  # a required field is missing
        return None, f"is not a job spec of job {entry.job_id}"
