"""Sweeps: one request publishes many jobs of one base config, each with its own dotted-key overrides.

A sweep is all or nothing (docs/sweeps.md has the on-disk format):

    spool/staging/sweep-<uuid>/        built by one request, private to it
        sweep.json                     the manifest: the request and every job's id, index and overrides
        jobs/<job_id>/                 each job's folder (job_info.json, config.yaml with its overrides)
        queued/<entry> | waiting/<entry>   each job's entry, named as in the queue
    spool/sweeps/<sweep_id>/           after ONE rename of the staging dir: the commit point

Everything is written without a per-file fsync and made durable by one syncfs before the
commit rename. After the commit the sweep's jobs are moved out one by one (``roll_forward``):
each job's folder into jobs/, then its entry into queued/ (or waiting/). A crash before the
commit leaves a staging dir nobody reads, removed once it is old; a crash after it leaves a
committed sweep with leftovers, which start-up and every maintenance round roll forward.
``spool/sweeps/<sweep_id>/sweep.json`` stays as the sweep's record (and ``stop.json`` beside it
once the sweep was stopped).
"""

from __future__ import annotations

import errno
import itertools
import math
import os
import re
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import yaml

from . import auth, fsio, names
from .configs import WriteMode
from .exceptions import BadRequest, Conflict, IllegalTransition, InvalidName, NotFound
from .index import JobIndex
from .jobs import CONFIG_SNAPSHOT, UNSAFE_IN_JOB_NAME, JobConfig, JobSpec, job_name_from, utc_now
from .service import JobService
from .spool import ORPHAN_MIN_AGE, QUEUED, WAITING, Entry, Location, Spool, entry_for, publish_location
from .states import JobState

MAX_SWEEP_JOBS = 10_000
INDEX_DIGITS = 4  # job ids are <sweep_id>-<index>, index 0 .. MAX_SWEEP_JOBS - 1
# A sweep id leaves room for "-<index>" within a job id's 128 characters.
MAX_SWEEP_ID_LENGTH = 128 - 1 - INDEX_DIGITS
SWEEPS = "sweeps"
SWEEP_FILE = "sweep.json"
STOP_FILE = "stop.json"
JOBS = "jobs"
STAGING_PREFIX = "sweep-"
MAX_KEY_LENGTH = 256
MAX_KEY_PARTS = 32  # with a body nested at most 100 deep, a config stays well within the YAML dumper's recursion
MAX_NAME_LENGTH = 128
DEFAULT_LIST_LIMIT = 100
# What a sweep request may hold besides the job fields below.
SWEEP_FIELDS = {"sweep_id", "name", "config_path", "config", "save_as", "overwrite", "grid", "runs",
                "allow_new_keys"}
# Fields passed on to every job of the sweep, as POST /run-simulation takes them.
JOB_FIELDS = {"target_host", "gpus", "priority", "image", "command", "env", "max_retries", "retry_on_failure",
              "submitted_by", "after", "after_any", "job_name", "resources"}
# A manifest's fields left out of its header (the part kept in memory and listed by GET /sweeps).
BULKY_FIELDS = ("jobs", "runs")
SORT_ORDERS = ("asc", "desc")
UNSTARTED = (JobState.QUEUED.value, JobState.WAITING.value, JobState.NOT_FOUND.value)
# The C emitter when PyYAML has it: a thousand snapshots are dumped in one request.
YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_SLUG_EDGE = re.compile(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$")


# ----- expansion and overrides (pure) ---------------------------------------------------------

def expand(grid: object = None, runs: object = None) -> list[dict]:
    """The override sets of a sweep, in job order: the product of ``grid``'s value lists (the last
    key varying fastest), or ``runs`` as given. 400 for anything malformed or over MAX_SWEEP_JOBS."""
    if (grid is None) == (runs is None):
        raise BadRequest("give either 'grid' ({dotted key: [values]}) or 'runs' ([{dotted key: value}])")
    if grid is not None:
        if not isinstance(grid, dict) or not grid:
            raise BadRequest("'grid' must be an object of dotted keys, each with a list of values", field="grid")
        for key, values in grid.items():
            check_key(key, "grid")
            if not isinstance(values, list) or not values:
                raise BadRequest(f"grid key {key!r} must have a non-empty list of values", field="grid", key=key)
        _check_count(math.prod(len(values) for values in grid.values()))
        keys = list(grid)
        return [dict(zip(keys, combination, strict=True)) for combination in itertools.product(*grid.values())]
    if not isinstance(runs, list) or not runs:
        raise BadRequest("'runs' must be a non-empty list of objects of dotted keys", field="runs")
    _check_count(len(runs))
    for number, run in enumerate(runs):
        if not isinstance(run, dict):
            raise BadRequest(f"runs[{number}] must be an object of dotted keys", field="runs")
        for key in run:
            check_key(key, f"runs[{number}]")
    return [dict(run) for run in runs]


def _check_count(count: int) -> None:
    if count > MAX_SWEEP_JOBS:
        raise BadRequest(f"a sweep can have at most {MAX_SWEEP_JOBS} jobs; this one would have {count}", jobs=count)


def check_key(key: object, where: str) -> list[str]:
    """A dotted key's parts; 400 naming ``where`` it came from unless it is one."""
    parts = key.split(".") if isinstance(key, str) and len(key) <= MAX_KEY_LENGTH else []
    if not parts or not all(parts) or len(parts) > MAX_KEY_PARTS:
        raise BadRequest(f"{where}: {key!r} is not a dotted key such as 'algorithm.hyperparameters.lr' "
                         f"(at most {MAX_KEY_PARTS} parts, {MAX_KEY_LENGTH} characters)", field=where)
    return parts


def apply_overrides(config: dict, overrides: dict, allow_new_keys: bool = False) -> dict:
    """``config`` with each dotted key of ``overrides`` set to its value; ``config`` is not changed.

    Only the mappings and lists on an override's path are copied; the rest is shared with
    ``config`` (a sweep builds thousands of these, and deep copies would dominate). A part of a key
    indexes a list when the node is one ("layers.0.units"). A key missing from the config is a
    400 naming it, unless ``allow_new_keys``, which adds it (and the mappings on its way).
    """
    result = dict(config)
    copied = {id(result)}  # containers this call made: safe to change in place
    for key, value in overrides.items():
        parts = check_key(key, "override")
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = _child(node, part, key, parts[:depth], allow_new_keys)
            if id(child) not in copied:
                child = dict(child) if isinstance(child, dict) else list(child)
                copied.add(id(child))
                _put(node, part, child)
            node = child
        _child(node, parts[-1], key, parts[:-1], allow_new_keys, leaf=True)
        _put(node, parts[-1], value)
    return result


def _child(node, part, key, path, allow_new_keys, leaf=False):
    """The value at ``part`` of ``node`` (a mapping or list), or a new mapping (None for a leaf) when the key
    is missing and may be added; 400 naming ``key`` when it cannot be followed."""
    where = ".".join(path) or "the config"
    if isinstance(node, dict):
        if part not in node:
            if allow_new_keys:
                return None if leaf else {}
            raise BadRequest(f"override key {key!r} does not exist in the base config ({where} has no {part!r}); "
                             "set allow_new_keys to add keys", field="override", key=key)
        child = node[part]
    else:
        if not (part.isdigit() and int(part) < len(node)):
            raise BadRequest(f"override key {key!r}: {where} is a list of {len(node)}; {part!r} is not an index "
                             "of it", field="override", key=key)
        child = node[int(part)]
    if leaf or isinstance(child, (dict, list)):
        return child
    raise BadRequest(f"override key {key!r}: {'.'.join((*path, part))} is a {type(child).__name__}, not a mapping "
                     "or list", field="override", key=key)


def _put(node, part, value):
    node[int(part) if isinstance(node, list) else part] = value


def lookup(document: object, key: str) -> object:
    """The value at a dotted key of a JSON document (a part indexes a list), or None if there is none."""
    node = document
    for part in key.split("."):
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def config_text(values: dict) -> str:
    """A config as YAML, as ConfigStore.serialise writes one (with the C emitter where PyYAML has it)."""
    return yaml.dump(values, Dumper=YAML_DUMPER, sort_keys=False)


class Snapshots:
    """The config snapshots (YAML) of one base config under many override sets.

    Dumping YAML is a sweep's largest CPU cost, and most of each snapshot is the base's. The
    text of a block mapping is the concatenation of its entries' texts, so each top-level
    section of the base that an override set leaves alone (apply_overrides shares it: the same
    object) is dumped once and reused, and only the sections overrides touch are dumped per job.
    """

    def __init__(self, config: JobConfig) -> None:
        self.config = config
        self._sections: dict[object, str] = {}  # top-level key of the base -> its entry's YAML

    def text(self, values: dict, overrides: dict) -> str:
        if not overrides:
            return self.config.text  # the base as it was given, comments and all
        parts = []
        for key, value in values.items():
            if key in self.config.values and self.config.values[key] is value:
                if key not in self._sections:
                    self._sections[key] = config_text({key: value})
                parts.append(self._sections[key])
            else:
                parts.append(config_text({key: value}))
        return "".join(parts)


def sort_jobs(rows: list[dict], order: str) -> list[dict]:
    """Rows by their ``value``: numbers in ``order``, then other values as text, then rows without one
    (in sweep order: a sweep whose jobs have not ended yet still lists every job)."""
    numbers = [row for row in rows if _is_number(row["value"])]
    others = [row for row in rows if row["value"] is not None and not _is_number(row["value"])]
    missing = [row for row in rows if row["value"] is None]
    descending = order == "desc"
    numbers.sort(key=lambda row: row["value"], reverse=descending)
    others.sort(key=lambda row: str(row["value"]), reverse=descending)
    return numbers + others + missing


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # NaN is no number


def sweep_status(counts: dict[str, int]) -> str:
    """One word for a sweep: running while any job is on a host, else queued, else waiting, else
    finished when every job finished, else ended."""
    for state, word in ((JobState.RUNNING, "running"), (JobState.DISPATCHED, "running"),
                        (JobState.QUEUED, "queued"), (JobState.WAITING, "waiting")):
        if counts.get(state.value):
            return word
    return "finished" if set(counts) <= {JobState.FINISHED.value} else "ended"


def valid_sweep_id(value: object) -> str:
    """``value`` if it can name a sweep (and, with "-<index>", its jobs), else 400."""
    if not isinstance(value, str) or len(value) > MAX_SWEEP_ID_LENGTH or not names.JOB_ID.match(value) \
            or ".." in value:
        raise InvalidName(f"invalid sweep_id: {value!r} (letters, digits and _ . -, at most "
                          f"{MAX_SWEEP_ID_LENGTH} characters)", field="sweep_id")
    return value


def _is_sweep_id(name: str) -> bool:
    try:
        return valid_sweep_id(name) == name
    except InvalidName:
        return False


def job_id_of(sweep_id: str, index: int) -> str:
    return f"{sweep_id}-{index:0{INDEX_DIGITS}d}"


def sweep_of(job_id: str) -> str | None:
    """The sweep id a job id of the form <sweep_id>-<index> names, or None."""
    sweep_id, dash, index = job_id.rpartition("-")
    return sweep_id if dash and len(index) == INDEX_DIGITS and index.isdigit() else None


# ----- on disk --------------------------------------------------------------------------------

def sweeps_dir(spool: Spool) -> str:
    return os.path.join(spool.spool_dir, SWEEPS)


def has_leftovers(directory: str) -> bool:
    """Whether a committed sweep still holds jobs to move out (roll_forward removes the folders it emptied)."""
    return any(os.path.isdir(os.path.join(directory, part)) for part in (JOBS, QUEUED, WAITING))


def roll_forward(spool: Spool, directory: str) -> list[tuple[Location, Entry]]:
    """Move a committed sweep's jobs out of ``directory`` in dispatch order: each job's folder into
    jobs/, then its entry into queued/ (or waiting/); returns what was placed.

    Idempotent, so a crash anywhere in it is undone by calling it again: a folder already moved is
    skipped, and an entry is only moved after its folder (an agent may claim it at once). A job id
    taken meanwhile by another job (a dropped job folder of that name) cannot be moved: its staged
    folder and entry are set aside into rejected/ with the reason, never run with another's folder.
    """
    placed = []
    for kind in (QUEUED, WAITING):
        staged = os.path.join(directory, kind)
        for name in sorted(fsio.listdir(staged)):
            entry = Entry.parse(name)
            if entry is None:
                continue
            staged_entry = os.path.join(staged, name)
            staged_folder = os.path.join(directory, JOBS, entry.job_id)
            try:
                os.rename(staged_folder, spool.folder(entry.job_id).path)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    reason = f"job id {entry.job_id} was taken by another job before the sweep's job was moved in"
                    for path in (staged_entry, staged_folder):
                        spool.set_aside(path, SWEEPS, reason, job_id=entry.job_id)
                    continue
                if not fsio.is_gone(exc):
                    raise
            try:
                os.rename(staged_entry, spool.entry_path(Location(kind), entry))
            except OSError as exc:
                if not fsio.is_gone(exc):
                    raise
                continue  # moved by an earlier roll-forward
            placed.append((Location(kind), entry))
    for part in (QUEUED, WAITING, JOBS):
        try:
            os.rmdir(os.path.join(directory, part))
        except OSError as exc:
            if not fsio.is_gone(exc) and exc.errno != errno.ENOTEMPTY:
                raise
    return placed


def recover(spool: Spool) -> list[tuple[Location, Entry]]:
    """Roll every committed sweep forward; the server calls this at start-up before it lists the spool
    (and before recover_orphans, which would take a moved folder whose entry is still staged for an orphan)."""
    placed = []
    root = sweeps_dir(spool)
    for sweep_id in fsio.listdir(root):
        directory = os.path.join(root, sweep_id)
        if has_leftovers(directory):
            placed += roll_forward(spool, directory)
    return placed


# ----- the service ----------------------------------------------------------------------------

class Plan(NamedTuple):
    """A validated sweep in memory: what ``SweepService.stage`` writes and ``commit`` publishes."""

    sweep_id: str
    location: Location  # where its entries go: queued/, or waiting/ for a sweep with dependencies
    specs: list[tuple[JobSpec, bytes]]  # each job's spec and config snapshot, in sweep order
    manifest: dict
    stage: str  # its staging dir
    inline_config: JobConfig | None  # a base config given inline, saved under configs/ as jobs' are


class SweepService:
    """The sweep operations behind the API and the inbox: submit, list, show, stop, delete, recovery."""

    def __init__(self, spool: Spool, index: JobIndex, jobs: JobService) -> None:
        self.spool = spool
        self.index = index
        self.jobs = jobs
        self.root = sweeps_dir(spool)
        fsio.makedirs(self.root)
        self._lock = threading.Lock()
        # Sweep ids and staging dirs a request of this server works on: maintenance leaves them alone,
        # and a second request for the same sweep gets a 409 instead of racing the first.
        self._busy: set[str] = set()
        self._headers: dict[str, dict] = {}  # sweep id -> manifest header; a manifest never changes
        # Sweeps known to have all their jobs moved out: maintenance looks only at the others (a listing
        # of sweeps/ a round instead of a look into every sweep).
        self._moved_out: set[str] = set()

    # ----- submit -----------------------------------------------------------------------------

    def submit(self, body: dict, origin: str = "api", inbox_folder: str = "") -> dict:
        """Validate a sweep, then publish all its jobs or none; returns its id, status and job ids."""
        plan = self.plan(body, origin, inbox_folder)
        with self._working(os.path.basename(plan.stage), plan.sweep_id):
            if plan.inline_config is not None:
                self.jobs.configs.write(plan.inline_config.file_name, plan.inline_config.text,
                                        WriteMode.REPLACE if body.get("overwrite") is True else WriteMode.SAME)
            self.stage(plan)
            self.commit(plan)
            self._move_out(plan.sweep_id)
        first = plan.specs[0][0]
        return {
            "sweep_id": plan.sweep_id,
            "name": plan.manifest["name"],
            "status": JobState.WAITING.value if plan.location.kind == WAITING else JobState.QUEUED.value,
            "job_count": len(plan.specs),
            "job_ids": [spec.job_id for spec, _ in plan.specs],
            "config_path": plan.manifest["config_path"],
            "submitted_at": first.submitted_at,
        }

    def plan(self, body: dict, origin: str = "api", inbox_folder: str = "") -> Plan:
        """The sweep of a request, validated and built in memory (every job's spec and config snapshot);
        nothing is written. 400 or 409 for what cannot be published."""
        unknown = sorted(set(body) - SWEEP_FIELDS - JOB_FIELDS)
        if unknown:
            raise BadRequest(f"unknown fields {unknown}; a sweep takes {sorted(SWEEP_FIELDS | JOB_FIELDS)}")
        name = body.get("name") or ""
        if not isinstance(name, str) or len(name) > MAX_NAME_LENGTH:
            raise BadRequest(f"'name' must be a string of at most {MAX_NAME_LENGTH} characters", field="name")
        allow_new_keys = body.get("allow_new_keys", False)
        if not isinstance(allow_new_keys, bool):
            raise BadRequest("'allow_new_keys' must be true or false", field="allow_new_keys")
        sweep_id = self._sweep_id(body.get("sweep_id"), name)
        if os.path.lexists(self._dir(sweep_id)):
            raise Conflict(f"sweep {sweep_id!r} already exists", sweep_id=sweep_id)
        override_sets = expand(body.get("grid"), body.get("runs"))
        config, inline = self.jobs.config_for(body, sweep_id)
        if config is None:
            raise BadRequest("a sweep needs a base config: give 'config_path' or an inline 'config'")
        specs = self._specs(body, sweep_id, name, config, override_sets, allow_new_keys, origin, inbox_folder)
        taken = [spec.job_id for spec, _ in specs if spec.job_id in self.index]
        if taken:
            raise Conflict(f"job ids of sweep {sweep_id!r} are taken: {taken[:10]}", sweep_id=sweep_id)
        first = specs[0][0]
        manifest = {
            "sweep_id": sweep_id, "name": name, "submitted_by": first.submitted_by, "submitted_at": first.submitted_at,
            "origin": origin, "inbox_folder": inbox_folder, "config_path": f"configs/{config.file_name}",
            "grid": body.get("grid"), "runs": body.get("runs"), "allow_new_keys": allow_new_keys,
            "job_fields": {key: body[key] for key in sorted(JOB_FIELDS) if key in body},
            "job_count": len(specs),
            "jobs": [{"job_id": spec.job_id, "sweep_index": spec.sweep_index, "overrides": spec.overrides}
                     for spec, _ in specs],
        }
        stage = os.path.join(self.spool.staging_dir, f"{STAGING_PREFIX}{uuid.uuid4().hex}")
        return Plan(sweep_id, publish_location(first), specs, manifest, stage, config if inline else None)

    def stage(self, plan: Plan) -> None:
        """Write the planned sweep into its staging dir, durably; nothing of it is visible yet.

        The ranks are taken here, after every check: a request refused earlier must not push its
        submitter's later jobs back.
        """
        first = plan.specs[0][0]
        ranks = self.jobs.fairshare.ranks(first.priority, first.submitted_by, len(plan.specs))
        submitted = time.time_ns()
        entries = [entry_for(spec, submitted + number, rank)
                   for number, ((spec, _), rank) in enumerate(zip(plan.specs, ranks, strict=True))]
        try:
            self._write(plan, entries)
            fsio.sync_filesystem(plan.stage)
        except BaseException:
            shutil.rmtree(plan.stage, ignore_errors=True)  # nothing was committed
            raise

    def commit(self, plan: Plan) -> None:
        """The commit point: one rename of the staging dir into sweeps/ (409 if the sweep exists)."""
        try:
            os.rename(plan.stage, self._dir(plan.sweep_id))
        except OSError as exc:
            shutil.rmtree(plan.stage, ignore_errors=True)
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise Conflict(f"sweep {plan.sweep_id!r} already exists", sweep_id=plan.sweep_id) from None
            raise
        fsio.fsync_dir(self.root)

    @staticmethod
    def _sweep_id(given, name):
        if given is not None:
            return valid_sweep_id(given)
        slug = _SLUG_EDGE.sub("", UNSAFE_IN_JOB_NAME.sub("-", name))[:60] or "sweep"
        return f"{slug}-{uuid.uuid4().hex[:8]}"

    def _specs(self, body, sweep_id, name, config, override_sets, allow_new_keys, origin, inbox_folder):
        """(JobSpec, config snapshot bytes) of every job, all validated before anything is written."""
        job_body = {key: body[key] for key in JOB_FIELDS if key in body}
        base_name = body.get("job_name") or name or job_name_from(config.values, sweep_id)
        if not isinstance(base_name, str):
            raise BadRequest("'job_name' must be a string", field="job_name")
        snapshots = Snapshots(config)
        specs = []
        for index, overrides in enumerate(override_sets):
            values = apply_overrides(config.values, overrides, allow_new_keys)
            job_config = JobConfig(config.file_name, values, snapshots.text(values, overrides))
            job_id = job_id_of(sweep_id, index)
            job_body["job_name"] = f"{base_name[:MAX_NAME_LENGTH - 1 - INDEX_DIGITS]}-{index:0{INDEX_DIGITS}d}"
            spec = self.jobs.build_spec(job_body, job_id=job_id, config=job_config, origin=origin,
                                        inbox_folder=inbox_folder)
            spec.sweep, spec.sweep_index, spec.overrides = sweep_id, index, overrides
            specs.append((spec, job_config.data))
        return specs

    @staticmethod
    def _write(plan: Plan, entries: list[Entry]) -> None:
        """Write the whole sweep into its staging dir; private to this request, so in place and with no
        fsync (fsio.sync_filesystem makes it all durable at once). (Threads creating the files side by side
        were measured no faster on a busy 2-core machine.)"""
        os.mkdir(plan.stage)
        folders, staged_entries = os.path.join(plan.stage, JOBS), os.path.join(plan.stage, plan.location.kind)
        os.mkdir(folders)
        os.mkdir(staged_entries)
        for (spec, config), entry in zip(plan.specs, entries, strict=True):
            folder = os.path.join(folders, spec.job_id)
            os.mkdir(folder)
            fsio.write_new(os.path.join(folder, "job_info.json"), fsio.json_bytes(spec.job_info()), durable=False)
            fsio.write_new(os.path.join(folder, CONFIG_SNAPSHOT), config, durable=False)
            fsio.write_new(os.path.join(staged_entries, entry.name), fsio.json_bytes(spec.to_dict()), durable=False)
        fsio.write_new(os.path.join(plan.stage, SWEEP_FILE), fsio.json_bytes(plan.manifest), durable=False)

    def _move_out(self, sweep_id: str) -> None:
        """Roll a committed sweep forward (unless known done) and tell the index and the embedded worker."""
        if sweep_id in self._moved_out:
            return
        for location, entry in roll_forward(self.spool, self._dir(sweep_id)):
            self.index.place(location, entry)
            self.jobs.on_publish(entry)
        self._moved_out.add(sweep_id)

    # ----- reads ------------------------------------------------------------------------------

    def manifest(self, sweep_id: str) -> dict | None:
        """The sweep's manifest (sweep.json), or None if there is no such sweep (or its sweep.json is not one:
        anyone who can write to the share could put anything there)."""
        doc = fsio.read_json_object(os.path.join(self._dir(valid_sweep_id(sweep_id)), SWEEP_FILE))
        if doc is None or doc.get("sweep_id") != sweep_id or not isinstance(doc.get("jobs"), list) \
                or not all(isinstance(item, dict) and isinstance(item.get("job_id"), str) for item in doc["jobs"]):
            return None
        return doc

    def header(self, sweep_id: str) -> dict | None:
        """The manifest without its per-job lists, with the stop record (kept in memory)."""
        header = self._headers.get(sweep_id)
        if header is None:
            manifest = self.manifest(sweep_id)
            if manifest is None:
                return None
            header = self._headers[sweep_id] = self._header_of(manifest)
        return header

    def _header_of(self, manifest):
        header = {key: value for key, value in manifest.items() if key not in BULKY_FIELDS}
        header["job_count"] = len(manifest["jobs"])
        return {**header, **self._stop_record(manifest["sweep_id"])}

    def _stop_record(self, sweep_id):
        record = fsio.read_json_object(os.path.join(self._dir(sweep_id), STOP_FILE)) or {}
        return {"stop_requested_at": record.get("requested_at"), "stop_requested_by": record.get("requested_by")}

    def list(self, limit: int = DEFAULT_LIST_LIMIT) -> list[dict]:
        """Sweeps newest first, each with its jobs counted by state (one pass over the index)."""
        headers = [header for header in map(self.header, filter(_is_sweep_id, fsio.listdir(self.root)))
                   if header is not None]
        headers.sort(key=lambda header: (str(header.get("submitted_at") or ""), header["sweep_id"]), reverse=True)
        headers = headers[:limit]
        counts = {header["sweep_id"]: Counter() for header in headers}
        for job in self.index.jobs():
            tally = counts.get(sweep_of(job.entry.job_id))
            if tally is not None:
                tally[self.index.state_of(job).value] += 1
        for header in headers:  # its jobs archived since (an ended sweep past archive_after_days)
            counts[header["sweep_id"]].update(self.index.archived_states(f"{header['sweep_id']}-",
                                                                         str(header.get("submitted_at") or "")))
        rows = []
        for header in headers:
            tally = counts[header["sweep_id"]]
            gone = header["job_count"] - sum(tally.values())
            if gone > 0:
                tally[JobState.NOT_FOUND.value] = gone
            rows.append({**header, "counts": dict(tally), "status": sweep_status(tally)})
        return rows

    def show(self, sweep_id: str, sort: str | None = None, order: str = "asc") -> dict:
        """The sweep's manifest, its jobs counted by state, and its jobs (with ``sort``'s value from each
        job's results/result.json, sorted by it)."""
        if order not in SORT_ORDERS:
            raise BadRequest(f"'order' must be one of {list(SORT_ORDERS)}", field="order")
        if sort is not None:
            check_key(sort, "sort")
        manifest = self._manifest_or_404(sweep_id)
        rows = []
        for item in manifest["jobs"]:
            job = self.index.get(item["job_id"])
            status = self.index.state_of(job).value if job is not None else JobState.NOT_FOUND.value
            value = None if sort is None or status in UNSTARTED else self._result_value(item["job_id"], sort)
            rows.append({"job_id": item["job_id"], "sweep_index": item.get("sweep_index"),
                         "overrides": item.get("overrides"), "status": status, "value": value})
        counts = Counter(row["status"] for row in rows)
        if sort is not None:
            rows = sort_jobs(rows, order)
        return {**self._header_of(manifest), "runs": manifest.get("runs"), "counts": dict(counts),
                "status": sweep_status(counts), "sort": sort, "order": order, "jobs": rows}

    def _result_value(self, job_id, key):
        folder = self.spool.folder(job_id)
        try:
            return lookup(fsio.read_job_json(folder.result, folder.path), key)
        except (fsio.Refused, OSError):  # one unreadable result must not fail the sweep's table
            return None

    # ----- changes ----------------------------------------------------------------------------

    def stop(self, sweep_id: str, by: str = "") -> dict:
        """Cancel the sweep's queued and waiting jobs and ask the hosts of its running ones to stop them."""
        manifest = self._manifest_or_404(sweep_id)
        auth.current().check_owner(manifest.get("submitted_by") or "", f"sweep {sweep_id}")
        with self._working(sweep_id):
            self._move_out(sweep_id)
            fsio.atomic_write_json(os.path.join(self._dir(sweep_id), STOP_FILE),
                                   {"requested_at": utc_now(), "requested_by": by})
            self._headers.pop(sweep_id, None)
            outcome = Counter()
            # In dispatch order: the head of the sweep is what agents would claim next.
            for item in manifest["jobs"]:
                try:
                    answer = self.jobs.stop(item["job_id"], by)
                except NotFound:
                    outcome["not_found"] += 1
                except IllegalTransition:  # it had ended
                    outcome["already_ended"] += 1
                else:
                    outcome["canceled" if answer["status"] == JobState.CANCELED.value else "stop_requested"] += 1
        return {"message": f"sweep {sweep_id} stopped", "sweep_id": sweep_id, **{key: outcome[key] for key in
                ("canceled", "stop_requested", "already_ended", "not_found")}}

    def delete(self, sweep_id: str, force: bool = False) -> dict:
        """Delete every job of the sweep, then the sweep; 409 while some run, unless ``force``.

        The jobs go first and the manifest last: a crash in between leaves the sweep listed with
        fewer jobs, and deleting it again finishes the work.
        """
        manifest = self._manifest_or_404(sweep_id)
        auth.current().check_owner(manifest.get("submitted_by") or "", f"sweep {sweep_id}")
        with self._working(sweep_id):
            self._move_out(sweep_id)
            job_ids = [item["job_id"] for item in manifest["jobs"]]
            if not force:
                active = [job_id for job_id in job_ids if self._active(job_id)]
                if active:
                    raise Conflict(f"{len(active)} jobs of sweep {sweep_id} are running; stop the sweep first "
                                   "or delete with ?force=1", sweep_id=sweep_id, job_ids=active[:100])
            deleted, left = 0, []
            for job_id in job_ids:
                try:
                    self.jobs.delete(job_id, force=force)
                    deleted += 1
                except NotFound:
                    pass
                except Conflict:  # claimed since the check above
                    left.append(job_id)
            if left:
                raise Conflict(f"{len(left)} jobs of sweep {sweep_id} started while it was being deleted; "
                               "stop the sweep first or delete with ?force=1", sweep_id=sweep_id, job_ids=left[:100])
            self.spool.trash(self._dir(sweep_id))
            self._headers.pop(sweep_id, None)
            self._moved_out.discard(sweep_id)
        return {"message": f"sweep {sweep_id} deleted", "sweep_id": sweep_id, "deleted_jobs": deleted}

    def _active(self, job_id):
        job = self.index.get(job_id)
        return job is not None and self.index.state_of(job).active

    # ----- recovery ---------------------------------------------------------------------------

    def maintain(self) -> None:
        """Roll forward committed sweeps a crash (or an error while moving) left half moved, and remove
        old staging dirs of sweeps that were never committed; both only where no request of this
        server is at work."""
        for sweep_id in fsio.listdir(self.root):
            if sweep_id not in self._moved_out and self._claim(sweep_id):
                try:
                    self._move_out(sweep_id)
                finally:
                    self._release(sweep_id)
        for name in fsio.listdir(self.spool.staging_dir):
            path = os.path.join(self.spool.staging_dir, name)
            if name.startswith(STAGING_PREFIX) and fsio.age(path) > ORPHAN_MIN_AGE and self._claim(name):
                try:
                    shutil.rmtree(path, ignore_errors=True)
                finally:
                    self._release(name)

    # ----- helpers ----------------------------------------------------------------------------

    def _dir(self, sweep_id: str) -> str:
        return os.path.join(self.root, sweep_id)

    def _manifest_or_404(self, sweep_id):
        manifest = self.manifest(sweep_id)
        if manifest is None:
            raise NotFound(f"no sweep {sweep_id!r}", sweep_id=sweep_id)
        return manifest

    def _claim(self, *keys: str) -> bool:
        with self._lock:
            if self._busy.intersection(keys):
                return False
            self._busy.update(keys)
            return True

    def _release(self, *keys: str) -> None:
        with self._lock:
            self._busy.difference_update(keys)

    @contextmanager
    def _working(self, *keys: str) -> Iterator[None]:
        """Hold ``keys`` (sweep ids, staging names) for this request; 409 if another request holds one."""
        if not self._claim(*keys):
            raise Conflict(f"sweep {keys[-1]!r} is being changed by another request; try again", sweep_id=keys[-1])
        try:
            yield
        finally:
            self._release(*keys)
