"""``opeva-spool fsck``: check a shared root against docs/spool.md, and repair what is safe to repair.

Every check reads the share the way the server and the agents do (listings, one ``stat`` or read
per item) and never takes a lock: the server and agents may be running. That is why a finding
carries its age and why ``repair`` leaves alone anything younger than ``min_age`` (default: the
threshold its owner uses: ORPHAN_MIN_AGE, 60 s, as the server's recovery; STALE_BUILD_SECONDS for a
dataset build's status): a staging dir, a folder without an entry, an ended attempt
not moved yet may be a submission, a delete or an ending in flight, which its owner completes
itself a moment later. A running entry is judged by its host's heartbeat, as the server does: only
an entry of a host silent for ``offline_after`` is the server's to requeue or fail.

Each repair is one of the protocol's own moves (``Spool.trash``, ``complete_finished``'s rename,
``requeue``, ``recover_lost``, ``sweeps.roll_forward``, ``set_aside``), so a repair racing a live
owner loses or wins whole, like that owner's own rename would. What has no safe move (two entries
of one job, an ending that contradicts its entry's place) is reported only, for a person to decide.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections import defaultdict
from dataclasses import asdict, dataclass

from . import archive, fsio, names, sweeps
from .jobs import JobFolder
from .sitedata.mongo import iso_now
from .sitedata.store import STALE_BUILD_SECONDS
from .spool import DONE, ORPHAN_MIN_AGE, QUEUED, RUNNING, WAITING, Entry, Location, Spool, asks_retry
from .states import EndReason, JobState

REQUEST_SUFFIX = ".stop"
FSCK_SOURCE = "fsck"  # rejected/<name>.<hex>/reason.json "source" of what fsck set aside
STAGED_PARTS = (sweeps.JOBS, QUEUED, WAITING)  # what a sweep's staging dir holds besides sweep.json
# Where the dataset store (sitedata/store.py) builds and keeps its build status, under datasets/.
STAGING_DIR, BUILDS_DIR = ".staging", ".builds"
BUILD_INTERRUPTED = "interrupted: the server building it stopped before the build ended (opeva-spool fsck)"


@dataclass
class Finding:
    """One thing that does not match docs/spool.md: ``kind`` a slug, ``path`` under the root, ``detail`` a
    sentence, ``repair`` what ``--repair`` does about it ("" when nothing is safe), ``repaired`` whether it did,
    ``pending`` when the item is young enough to be in flight (reported, not counted, not repaired)."""

    kind: str
    path: str
    detail: str
    repair: str = ""
    repaired: bool = False
    pending: bool = False

    @property
    def problem(self) -> bool:
        """Whether this finding still needs a person or a repair (what the exit status counts)."""
        return not self.pending and not self.repaired


@dataclass
class Report:
    root: str
    findings: list[Finding]
    jobs: int = 0
    entries: int = 0

    @property
    def problems(self) -> list[Finding]:
        return [finding for finding in self.findings if finding.problem]

    @property
    def clean(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"root": self.root, "clean": self.clean, "jobs": self.jobs, "entries": self.entries,
                "problems": len(self.problems), "findings": [asdict(finding) for finding in self.findings]}


class Checker:
    """One pass over a root: ``run()`` returns the Report (with ``repair``, after repairing what is safe)."""

    def __init__(self, root: str, repair: bool = False, min_age: float | None = None,
                 offline_after: float = 30.0) -> None:
        self.spool = Spool(root)
        self.repair = repair
        self.min_age = min_age  # None: each item's owner's own threshold (ORPHAN_MIN_AGE, STALE_BUILD_SECONDS)
        self.offline_after = offline_after
        self.findings: list[Finding] = []
        self.now = time.time()  # run() sets the share's own

    def run(self) -> Report:
        if not os.path.isdir(self.spool.queued_dir):
            raise FileNotFoundError(f"{self.spool.root} is not an initialised shared root (it has no spool/queued/)")
        self.now = self._share_now()
        staged = self._check_sweeps()
        places = self._check_entries()
        folders = set(fsio.listdir(self.spool.jobs_dir))
        # Race: the listings are not one snapshot. An entry moving to a place listed earlier (a release from
        # waiting/ into queued/, a requeue) is missed by a pass, so a job counts as having no entry only if a
        # second pass, made after the folders were listed, misses it too (a publish commits its folder first).
        listed_again = self._entry_places()
        self._check_duplicates(places)
        # Read after the listings: an archived job's month file is written before its entry leaves done/.
        archived = archive.archived_ids(self.spool)
        self._check_folders(places, folders, staged | listed_again.keys() | archived)
        self._check_records(places)
        self._check_staging()
        self._check_trash()
        self._check_requests(places, listed_again)
        self._check_dataset_builds()
        return Report(self.spool.root, self.findings, len(folders), sum(map(len, places.values())))

    # ----- helpers --------------------------------------------------------------------------

    def _shown(self, path: str) -> str:
        return os.path.relpath(path, self.spool.root)

    def _find(self, kind: str, path: str, detail: str, repair: str = "", young: bool = False,
              fix=None) -> Finding:
        """Record a finding; with --repair, run ``fix`` (a callable returning whether it did something) unless the
        item is ``young`` (in flight, maybe). A fix that fails leaves the finding a problem, with its error."""
        finding = Finding(kind, self._shown(path), detail, repair, pending=young)
        if self.repair and fix is not None and not young:
            try:
                finding.repaired = bool(fix())
                if not finding.repaired:
                    finding.detail += " (it changed meanwhile; nothing was done)"
            except OSError as exc:
                finding.detail += f" (repair failed: {exc})"
        self.findings.append(finding)
        return finding

    def _young(self, path: str, owners_threshold: float = ORPHAN_MIN_AGE) -> bool:
        return self._age(path) < (owners_threshold if self.min_age is None else self.min_age)

    def _age(self, path: str) -> float:
        """Seconds since ``path`` changed, on the share's clock (see _share_now); 0.0 if it is gone."""
        try:
            return self.now - os.lstat(path).st_mtime
        except OSError:
            return 0.0

    def _share_now(self) -> float:
        """The share's clock now: the mtime of a file made for it. Ages are mtimes set by the file server's
        clock, and this machine's may be off by more than a heartbeat: judged by it, a live host could look
        silent. (Read-only share: this machine's clock, and nothing can be repaired anyway.)"""
        probe = fsio.temp_name(self.spool.staging_dir, "fsck-clock")
        try:
            with open(probe, "xb"):
                pass
            try:
                return os.lstat(probe).st_mtime
            finally:
                fsio.unlink_quietly(probe)
        except OSError:
            return time.time()

    # ----- the checks -----------------------------------------------------------------------

    def _check_sweeps(self) -> set[str]:
        """Committed sweeps whose jobs are not all moved out (the server rolls them forward at start-up and
        every round); returns the job ids still staged in them, whose folders are then not orphans."""
        staged = set()
        root = sweeps.sweeps_dir(self.spool)
        for sweep_id in fsio.listdir(root):
            directory = os.path.join(root, sweep_id)
            if not sweeps.has_leftovers(directory):
                continue
            staged |= {entry.job_id for kind in (QUEUED, WAITING)
                       for entry in map(Entry.parse, fsio.listdir(os.path.join(directory, kind))) if entry}
            staged |= set(fsio.listdir(os.path.join(directory, sweeps.JOBS)))
            self._find("sweep_not_rolled_forward", directory,
                       f"sweep {sweep_id} is committed but some of its jobs were not moved into the queue",
                       "move them in (sweeps.roll_forward)", self._young(directory),
                       lambda directory=directory: sweeps.roll_forward(self.spool, directory) or True)
        return staged

    def _entry_dirs(self):
        """(Location, directory) of every place entries live, including running/ of every host on the share."""
        for location in self.spool.locations():
            yield location, self.spool.location_dir(location)

    def _entry_places(self) -> dict[str, list[tuple[Location, Entry]]]:
        """Job id -> the places of its entries, from one listing of every entry directory (no finding)."""
        places = defaultdict(list)
        for location, entry in self.spool.scan():
            places[entry.job_id].append((location, entry))
        return places

    def _check_entries(self) -> dict[str, list[tuple[Location, Entry]]]:
        """List every entry directory: names that do not parse, leftover temp files; returns job id -> places."""
        places = defaultdict(list)
        for location, directory in self._entry_dirs():
            try:
                listed = os.listdir(directory)
            except FileNotFoundError:
                continue
            for name in listed:
                path = os.path.join(directory, name)
                if name.startswith("."):
                    # A writer's temp file (fsio.temp_name): only entries are renamed into these directories,
                    # so one here that outlived min_age is a crashed writer's.
                    self._find("stale_temp_file", path, "a temp file left by a crashed writer", "remove it",
                               self._young(path), lambda path=path: _remove(path))
                    continue
                entry = Entry.parse(name)
                if entry is None:
                    self._find("unparsable_name", path, "a file whose name is not an entry name; every reader "
                               "ignores it", "set it aside into spool/rejected/", self._young(path),
                               lambda path=path: self.spool.set_aside(path, FSCK_SOURCE, "not an entry name"))
                    continue
                if not stat.S_ISREG(_lstat_mode(path)):
                    self._find("entry_not_a_file", path, "an entry name on something that is not a regular file",
                               "set it aside into spool/rejected/", self._young(path),
                               lambda path=path, job_id=entry.job_id: self.spool.set_aside(
                                   path, FSCK_SOURCE, "not a regular file", job_id=job_id))
                    continue
                places[entry.job_id].append((location, entry))
        return places

    def _check_duplicates(self, places) -> None:
        for job_id, where in places.items():
            if len(where) < 2:
                continue
            # Race: an entry that moved forward between two listings (a claim, an ending) was listed twice;
            # only entries that are all still there are two entries.
            where[:] = [place for place in where if os.path.lexists(self.spool.entry_path(*place))]
            if len(where) > 1:
                shown = ", ".join(self._shown(self.spool.entry_path(*place)) for place in where)
                self._find("duplicate_entries", self.spool.entry_path(*where[0]),
                           f"job {job_id} has {len(where)} entries ({shown}); a job has exactly one, and which one "
                           f"is right cannot be told safely: remove the wrong ones by hand")

    def _check_folders(self, places, folders, known) -> None:
        for job_id, where in places.items():
            if job_id in folders or not where:
                continue
            location, entry = where[0]
            path = self.spool.entry_path(location, entry)
            if not os.path.lexists(path) or os.path.isdir(self.spool.folder(job_id).path):
                continue  # moved or deleted meanwhile, or published between the listings
            # An OS crash can lose a new folder's rename (its job_info.json is rebuilt from the entry, which holds the
            # whole spec); a delete trashes the entry first, so the entry vanishing meanwhile means a delete won.
            self._find("entry_without_folder", path, f"job {job_id} has an entry but no folder jobs/{job_id}/",
                       "re-create the folder and its job_info.json from the entry", False,
                       lambda location=location, entry=entry: self._refold(location, entry))
        for job_id in sorted(folders - places.keys() - known):
            path = self.spool.folder(job_id).path
            if not names.JOB_ID.match(job_id):
                self._find("unparsable_name", path, "a folder under jobs/ whose name is no job id; readers ignore it")
                continue
            self._find("folder_without_entry", path,
                       f"job folder {job_id} has no entry anywhere (a submission that never committed, or a delete "
                       f"that was interrupted)", "move it to the trash", self._young(path),
                       lambda path=path: self.spool.trash(path))

    def _refold(self, location: Location, entry: Entry) -> bool:
        spec = self.spool.read_spec(location, entry)
        if spec is None:
            return False  # moved (deleted) meanwhile, or no spec: nothing to rebuild from
        folder = self.spool.folder(entry.job_id)
        # mkdir of the one folder: if the job is deleted right now, this makes an orphan the next fsck or
        # the server's start-up recovery collects, never a job.
        os.mkdir(folder.path)
        fsio.atomic_write_json(folder.job_info, spec.job_info())
        return True

    def _check_records(self, places) -> None:
        """The attempt record of each entry against the entry's place (the state rule of docs/spool.md)."""
        for where in places.values():
            if len(where) != 1:
                continue  # reported as duplicates
            location, entry = where[0]
            if not os.path.lexists(self.spool.entry_path(location, entry)):
                continue  # moved on since it was listed: its owner is at work
            if location.kind == RUNNING:
                self._check_running(location.detail, entry)
            elif location.kind == DONE:
                self._check_done(location.detail, entry)
            if entry.attempt > 1 and location.kind in (RUNNING, DONE):
                self._check_attempt_logs(entry)

    def _record_path(self, entry: Entry) -> str:
        return JobFolder(self.spool.jobs_dir, entry.job_id).attempt_record(entry.attempt)

    def _check_running(self, host: str, entry: Entry) -> None:
        path = self.spool.entry_path(Location(RUNNING, host), entry)
        record = self.spool.read_attempt(entry) or {}
        record_young = self._young(self._record_path(entry))
        if asks_retry(record):
            self._find("retry_not_requeued", path,
                       f"job {entry.job_id} attempt {entry.attempt} ended asking for a retry, but its entry is still "
                       f"in {host}'s running/", f"requeue it as attempt {entry.attempt + 1}", record_young,
                       lambda: self.spool.requeue(entry, host) is not None)
            return
        ending = self.spool.recorded_ending(entry)
        if ending is not None:
            self._find("ending_not_moved", path,
                       f"job {entry.job_id} attempt {entry.attempt} is recorded {ending.value}, but its entry is "
                       f"still in {host}'s running/", f"move it to done/{ending.value}/", record_young,
                       lambda: fsio.rename_claim(path, self.spool.entry_path(Location(DONE, ending.value), entry)))
            return
        # Silence as the server judges it: since the heartbeat last changed; a host whose agent never wrote one
        # (an HTTP worker before its first beat) counts from the last change of its running/ (a claim).
        beat = self.spool.heartbeat_path(host)
        silent = self._age(beat if os.path.exists(beat) else self.spool.running_dir(host))
        if silent < self.offline_after:
            return  # its host is alive: its agent owns the attempt
        if (fsio.read_json_object(beat) or {}).get("detached"):
            # A Slurm host's job runs on at the cluster without its agent: a requeue would run it twice.
            self._find("running_on_silent_cluster_host", path,
                       f"job {entry.job_id} attempt {entry.attempt} is {record.get('state', 'dispatched')} on Slurm "
                       f"host {host}, whose agent has been silent for {silent:.0f} s; the cluster may still run it",
                       "restart the host's agent: it adopts the job (docs/guarantees.md, A lost Slurm agent)")
            return
        self._find("running_on_silent_host", path,
                   f"job {entry.job_id} attempt {entry.attempt} is {record.get('state', 'dispatched')} on host {host}, "
                   f"whose heartbeat has not changed for {silent:.0f} s", "requeue it or fail it per max_retries "
                   "(host_lost), as the server does for an offline host", False,
                   lambda: self.spool.recover_lost(entry, host, EndReason.HOST_LOST) is not None)

    def _check_done(self, state: str, entry: Entry) -> None:
        path = self.spool.entry_path(Location(DONE, state), entry)
        record = self.spool.read_attempt(entry)
        recorded = (record or {}).get("state")
        if record is None or recorded == state:
            return  # no record: canceled before it ran, or a lost record (the place decides)
        try:
            was = JobState(recorded)
        except ValueError:
            was = JobState.UNKNOWN
        if state == JobState.FAILED.value and was in (JobState.DISPATCHED, JobState.RUNNING):
            # Spool.fail_lost renames first and records after: a crash between them leaves exactly this.
            self._find("ending_not_recorded", path,
                       f"job {entry.job_id} attempt {entry.attempt} is in done/failed/ but its record says "
                       f"{recorded}", "record it failed (host_lost)", self._young(self._record_path(entry)),
                       lambda: self.spool.write_attempt(entry, record.get("host", ""), record.get("agent_id", ""),
                                                        JobState.FAILED, reason=EndReason.HOST_LOST,
                                                        ended_at=record.get("updated_at")) is not None)
            return
        if state == JobState.FAILED.value and asks_retry(record):
            return  # a retry's record whose requeue lost to a fail_lost: the job failed
        self._find("record_contradicts_place", path,
                   f"job {entry.job_id} attempt {entry.attempt} is in done/{state}/ but its record says {recorded}; "
                   f"readers follow the entry's place")

    def _check_attempt_logs(self, entry: Entry) -> None:
        """Every earlier attempt that started kept its log: the runner of each later attempt that started moved
        logs/<id>.log aside to logs/<id>.attempt-<n>.log before running (an attempt that never started has none)."""
        if not (self.spool.read_attempt(entry) or {}).get("started_at"):
            return  # the current attempt has not rotated the log yet
        folder = self.spool.folder(entry.job_id)
        for number in range(1, entry.attempt):
            record = self.spool.read_attempt(entry._replace(attempt=number)) or {}
            log_path = folder.attempt_log(number)
            if record.get("started_at") and not os.path.lexists(log_path):
                self._find("attempt_log_missing", log_path,
                           f"attempt {number} of job {entry.job_id} started, but its log is not kept")

    def _check_staging(self) -> None:
        for name in fsio.listdir(self.spool.staging_dir):
            path = os.path.join(self.spool.staging_dir, name)
            # A sweep being staged adds its files under jobs/ and queued/ of its staging dir, whose own mtime
            # then stays put: the newest of the three tells whether it is still being written.
            young = any(self._young(part) for part in (path, *(os.path.join(path, sub) for sub in STAGED_PARTS))
                        if os.path.lexists(part))
            self._find("stale_staging", path, "a submission that was never published", "remove it", young,
                       lambda path=path: _remove(path))

    def _check_trash(self) -> None:
        # The server empties the trash every maintenance round: what stays is a stopped server's, or held by
        # .nfs* files of a process that still has a file of it open (those are left, as the server leaves them).
        for name in fsio.listdir(self.spool.trash_dir):
            path = os.path.join(self.spool.trash_dir, name)
            self._find("stale_trash", path, "deleted, not yet removed", "remove it", self._young(path),
                       lambda path=path: _remove(path))

    def _check_requests(self, places, listed_again) -> None:
        for name in fsio.listdir(self.spool.requests_dir):
            path = os.path.join(self.spool.requests_dir, name)
            job_id = name[: -len(REQUEST_SUFFIX)] if name.endswith(REQUEST_SUFFIX) else ""
            if not names.JOB_ID.match(job_id):
                self._find("unparsable_name", path, "a file in spool/requests/ that is no stop request",
                           "set it aside into spool/rejected/", self._young(path),
                           lambda path=path: self.spool.set_aside(path, FSCK_SOURCE, "not a stop request"))
                continue
            where = [*places.get(job_id, ()), *listed_again.get(job_id, ())]
            active = any(location.kind in (RUNNING, QUEUED, WAITING) for location, _ in where)
            if not active:
                # The server clears these every round; a request for an ended or deleted job stops nothing, but one
                # left behind would stop a later job submitted under the same id.
                self._find("stale_stop_request", path, f"a stop request for job {job_id}, which "
                           f"{'has ended' if where else 'does not exist'}", "remove it", self._young(path),
                           lambda job_id=job_id: _remove(self.spool.stop_request_path(job_id)))

    def _check_dataset_builds(self) -> None:
        """Builds whose server died mid-way (datasets/.staging/<name>, a status still ``building``): the store
        itself takes such a name over after STALE_BUILD_SECONDS without a status change, the same age used here."""
        staging_root = os.path.join(self.spool.datasets_dir, STAGING_DIR)
        builds = os.path.join(self.spool.datasets_dir, BUILDS_DIR)
        for name in fsio.listdir(staging_root):
            staging = os.path.join(staging_root, name)
            status_path = os.path.join(builds, f"{name}.json")
            status = fsio.read_json_object(status_path) or {}
            building = status.get("state") == "building"
            self._find("dataset_build_interrupted" if building else "stale_staging", staging,
                       f"dataset {name} is being built by no one: its status has not changed for "
                       f"{self._age(status_path):.0f} s" if building else f"the staging of dataset {name}, "
                       f"whose build is over ({status.get('state', 'no status')})",
                       "remove its staging and record the build failed" if building else "remove it",
                       self._young(status_path if building else staging, STALE_BUILD_SECONDS),
                       lambda staging=staging, status_path=status_path, building=building:
                       self._end_build(staging, status_path, building))

    @staticmethod
    def _end_build(staging: str, status_path: str, building: bool) -> bool:
        if building:
            status = fsio.read_json_object(status_path) or {}
            status.update(state="failed", stage="failed", error=BUILD_INTERRUPTED, updated_at=iso_now())
            fsio.atomic_write_json(status_path, status)
        return _remove(staging)


def _lstat_mode(path: str) -> int:
    try:
        return os.lstat(path).st_mode
    except OSError:
        return stat.S_IFREG  # gone meanwhile: not garbage


def _remove(path: str) -> bool:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        fsio.unlink_quietly(path)
    return not os.path.lexists(path)


def check(root: str, repair: bool = False, min_age: float | None = None, offline_after: float = 30.0) -> Report:
    """Check (and with ``repair``, repair) the shared root ``root``; see Checker."""
    return Checker(root, repair, min_age, offline_after).run()
