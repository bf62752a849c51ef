"""Datasets: site data in MongoDB -> step-aligned frames -> a CityLearn folder under ``datasets/``.

A build is validated synchronously (so bad input is a 4xx and nothing is written), then runs
in a background thread into ``datasets/.staging/<name>`` and is renamed into place at the end:
a dataset folder is complete or absent. The staging ``mkdir`` is the claim on the name, which
holds across hosts sharing the root. Progress lives in ``datasets/.builds/<name>.json``.
"""

import datetime as dt
import logging
import math
import os
import re
import shutil
import threading
import time
import uuid
import zipfile

import numpy as np
import pandas as pd

from .. import fsio, names
from ..exceptions import BadRequest, Conflict, NotFound, SpoolError
from . import citylearn
from .mongo import Mongo, iso, site_timezone

log = logging.getLogger(__name__)

MAX_STEPS = 200_000
MAX_DESCRIPTION = 2000
DEFAULT_PERIOD = 60
# Gaps up to this long are interpolated; longer ones copy the same time of another day.
SHORT_GAP_MINUTES = 120
# A building stays plugged-in session only while it keeps reporting the EV at least this often.
SESSION_BREAK_MINUTES = 60
# A claim whose status has not moved for this long belongs to a build that died with its server.
STALE_BUILD_SECONDS = 600
MAX_REPORTED_GAPS = 200
METADATA_FILE = "dataset.json"
ZIP_CHUNK = 64 * 1024
_EV_ID = re.compile(r"[^A-Za-z0-9_.-]")


class Datasets:
    def __init__(self, settings, sitedata):
        self.sitedata = sitedata
        self.root = os.path.join(settings.shared_root, "datasets")
        self.builds = os.path.join(self.root, ".builds")
        self.staging = os.path.join(self.root, ".staging")
        self._threads = {}
        self._lock = threading.Lock()

    # --- building -------------------------------------------------------------------------

    def start_build(self, body):
        plan = self._plan(body)
        fsio.makedirs(self.builds)
        fsio.makedirs(self.staging)
        staging = self._claim(plan.name)
        with self._lock:
            thread = threading.Thread(target=self._run, args=(plan, staging), name=f"dataset-{plan.name}", daemon=True)
            self._threads[plan.name] = thread
        self._write_status(plan.name, state="building", progress_pct=0.0, stage="queued", warnings=plan.warnings,
                           gaps=[], error=None, site=plan.site, created_at=iso(_now()))
        thread.start()
        return {"name": plan.name, "status": "building", "status_url": f"/dataset/status/{plan.name}"}

    def _plan(self, body):
        name = names.dataset(body.get("name"))
        site = body.get("site_id")
        period = _int_field(body, "period", DEFAULT_PERIOD, 1, 1440)
        if 1440 % period:
            raise BadRequest("period must divide a day (e.g. 5, 15, 30, 60 minutes)", field="period")
        configs = body.get("citylearn_configs") or {}
        if not isinstance(configs, dict):
            raise BadRequest("citylearn_configs must be an object of schema.json overrides", field="citylearn_configs")
        description = body.get("description") or ""
        if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
            raise BadRequest(f"description must be a string of at most {MAX_DESCRIPTION} characters", field="description")
        if os.path.lexists(names.safe_join(self.root, name)):
            raise Conflict(f"dataset {name!r} already exists", name=name)
        db = self.sitedata.mongo.site_db(site)
        schema = self.sitedata.schema(site)
        warnings = []
        tz = site_timezone(schema)
        if tz is None:
            tz = dt.timezone.utc
            warnings.append("the site schema names no timezone: the calendar columns use UTC")
        start = _timestamp(body, "from_ts", tz)
        until = _timestamp(body, "until_ts", tz)
        if start >= until:
            raise BadRequest("from_ts must be earlier than until_ts", field="from_ts")
        span = until - start
        steps = span // dt.timedelta(minutes=period)
        if steps < 2:
            raise BadRequest("the range holds fewer than two periods; CityLearn needs at least two time steps")
        if steps > MAX_STEPS:
            raise BadRequest(f"the range holds {steps} periods; at most {MAX_STEPS} are allowed")
        if span % dt.timedelta(minutes=period):
            warnings.append(f"the range is not a whole number of periods: the last {span % dt.timedelta(minutes=period)} are left out")
        end = start + steps * dt.timedelta(minutes=period)
        buildings = list(schema["buildings"])
        with self.sitedata.mongo.session():
            empty = [b for b in buildings
                     if db[f"building_{b}"].find_one({"timestamp": {"$gte": start, "$lt": end}}, {"_id": 1}) is None]
        if empty:
            raise BadRequest(
                f"no data between {iso(start)} and {iso(end)} for building(s) {', '.join(empty)} "
                f"(collections {', '.join('building_' + b for b in empty)})", buildings=empty)
        return Plan(name, site, db, schema, tz, period, start, steps, configs, description, warnings)

    def _claim(self, name):
        staging = names.safe_join(self.staging, name)
        try:
            os.mkdir(staging)
        except FileExistsError:
            if not self._stale(name):
                raise Conflict(f"dataset {name!r} is being built", name=name, status_url=f"/dataset/status/{name}") from None
            shutil.rmtree(staging, ignore_errors=True)
            try:
                os.mkdir(staging)
            except FileExistsError:
                raise Conflict(f"dataset {name!r} is being built", name=name) from None
        return staging

    def _stale(self, name):
        with self._lock:
            thread = self._threads.get(name)
        if thread is not None and thread.is_alive():
            return False
        path = self._status_path(name)
        try:
            return time.time() - os.stat(path).st_mtime > STALE_BUILD_SECONDS
        except FileNotFoundError:
            return True

    def _run(self, plan, staging):
        try:
            result = Builder(plan, staging, lambda pct, stage: self._progress(plan.name, pct, stage)).build()
            final = names.safe_join(self.root, plan.name)
            if os.path.lexists(final):
                raise Conflict(f"dataset {plan.name!r} appeared while it was being built")
            os.rename(staging, final)
            fsio.fsync_dir(self.root)
            self._progress(plan.name, 100.0, "done", state="ready", **result)
        except Exception as exc:  # the build thread's only exit: record why and clean up
            if isinstance(exc, SpoolError):
                error = exc.detail
            else:
                log.exception("dataset build %s failed", plan.name)
                error = f"{type(exc).__name__}: {exc}"
            self._progress(plan.name, None, "failed", state="failed", error=error)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            with self._lock:
                self._threads.pop(plan.name, None)

    def wait(self, name, timeout=None):
        """Block until this process's build of ``name`` ends (tests, shutdown)."""
        with self._lock:
            thread = self._threads.get(name)
        if thread is not None:
            thread.join(timeout)

    # --- status -------------------------------------------------------------------------

    def _status_path(self, name):
        return names.safe_join(self.builds, f"{names.dataset(name)}.json")

    def _write_status(self, name, **fields):
        fields.update(name=name, updated_at=iso(_now()))
        fsio.atomic_write_json(self._status_path(name), fields, durable=fields.get("state") != "building")

    def _progress(self, name, pct, stage, **fields):
        status = fsio.read_json_object(self._status_path(name)) or {}
        if pct is not None:
            status["progress_pct"] = round(pct, 1)
        status.update(stage=stage, **fields)
        status.pop("name", None)
        self._write_status(name, **status)

    def status(self, name):
        status = fsio.read_json_object(self._status_path(name))
        if status is None:
            if not os.path.isdir(names.safe_join(self.root, name)):
                raise NotFound(f"no dataset or build named {name!r}", name=name)
            status = {"name": name, "state": "ready", "progress_pct": 100.0, "warnings": [], "gaps": [], "error": None}
        return status

    # --- finished datasets --------------------------------------------------------------------

    def list(self):
        entries = []
        for name in sorted(fsio.listdir(self.root)):
            path = os.path.join(self.root, name)
            try:
                stat = os.stat(path)
            except OSError:
                continue
            meta = (fsio.read_json_object(os.path.join(path, METADATA_FILE)) or {}) if os.path.isdir(path) else {}
            entries.append({
                "name": name,
                "size": _tree_size(path) if os.path.isdir(path) else stat.st_size,
                "created_at": meta.get("created_at") or iso(dt.datetime.fromtimestamp(stat.st_mtime, dt.timezone.utc)),
                "description": meta.get("description", ""),
                "site": meta.get("site"),
                "period": meta.get("period"),
                "from_ts": meta.get("from_ts"),
                "until_ts": meta.get("until_ts"),
            })
        return entries

    def path(self, name):
        """The path of an existing dataset (folder or plain file); 404 when there is none."""
        path = names.safe_join(self.root, names.dataset(name))
        if not os.path.lexists(path):
            raise NotFound(f"dataset {name!r} not found", name=name)
        return path

    def delete(self, name):
        path = self.path(name)
        if os.path.isdir(os.path.join(self.staging, name)):
            raise Conflict(f"dataset {name!r} is being rebuilt; try again when the build ends", name=name)
        if os.path.isdir(path) and not os.path.islink(path):
            # Rename first so the dataset vanishes at once, then remove at leisure.
            trash = os.path.join(self.root, f".trash-{name}-{uuid.uuid4().hex[:8]}")
            os.rename(path, trash)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.unlink(path)
        try:
            os.unlink(self._status_path(name))
        except FileNotFoundError:
            pass
        return {"message": f"dataset {name!r} deleted", "name": name}


def zip_stream(folder, prefix):
    """Yield a zip of ``folder``'s regular files (as ``prefix/...``) chunk by chunk, no temp file."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED) as archive:
        for directory, dirs, files in os.walk(folder):
            dirs.sort()
            for file_name in sorted(files):
                path = os.path.join(directory, file_name)
                if os.path.islink(path) or not os.path.isfile(path):
                    continue  # a planted symlink must not export what it points to
                info = zipfile.ZipInfo.from_file(path, os.path.join(prefix, os.path.relpath(path, folder)))
                info.compress_type = zipfile.ZIP_DEFLATED
                with open(path, "rb") as source, archive.open(info, "w") as target:
                    while chunk := source.read(ZIP_CHUNK):
                        target.write(chunk)
                        yield sink.take()
                yield sink.take()
    yield sink.take()


class _Sink:
    """A write-only stream for zipfile that hands out what was written so far."""

    def __init__(self):
        self.chunks = []

    def write(self, data):
        self.chunks.append(bytes(data))
        return len(data)

    def flush(self):
        pass

    def take(self):
        data = b"".join(self.chunks)
        self.chunks.clear()
        return data


class Plan:
    """A validated build request."""

    def __init__(self, name, site, db, schema, tz, period, start, steps, configs, description, warnings):
        self.name, self.site, self.db, self.schema, self.tz = name, site, db, schema, tz
        self.period, self.start, self.steps = period, start, steps
        self.configs, self.description, self.warnings = configs, description, warnings
        self.step = dt.timedelta(minutes=period)
        self.end = start + steps * self.step
        self.index = pd.date_range(start, periods=steps, freq=f"{period}min")


class Builder:
    """One build: queries, aggregation, gap filling, files. Runs in the build thread."""

    def __init__(self, plan, folder, progress):
        self.plan = plan
        self.folder = folder
        self.progress = progress
        self.warnings = list(plan.warnings)
        self.gaps = []
        self.gaps_left_off = 0

    def build(self):
        plan = self.plan
        buildings = list(plan.schema["buildings"])
        measured, sessions = {}, {}
        for number, building_id in enumerate(buildings):
            self.progress(80.0 * number / len(buildings), f"reading building_{building_id}")
            docs = self._documents(f"building_{building_id}", citylearn.MEASURED_COLUMNS + ("charging_sessions",))
            measured[building_id] = self._aggregate(f"building_{building_id}", docs)
            sessions[building_id] = self._sessions(building_id, docs)
        self.progress(80.0, "writing files")
        cal = citylearn.calendar(plan.index, plan.tz, plan.schema.get("holidays", []))
        building_files, demands = {}, {}
        for building_id in buildings:
            frame = self._complete(f"building_{building_id}", measured[building_id], citylearn.BUILDING_DEFAULTS)
            frame = self._one_load_direction(building_id, frame)
            demands[building_id] = {c for c, _, _ in citylearn.DEMAND_DEVICES if (frame[c] > 0).any()}
            added = citylearn.added_devices(plan.schema["buildings"][building_id], demands[building_id])
            if added:
                self.warnings.append(f"building_{building_id} has measured demand but the schema declares no "
                                     f"{', '.join(added)}: autosized defaults were added")
            building_files[building_id] = f"{building_id}.csv"
            citylearn.write_csv(self.folder, building_files[building_id], citylearn.building_frame(cal, frame))
        for file_name, defaults in citylearn.SHARED_FILES.items():
            frame = self._shared(file_name, defaults, measured)
            if file_name in citylearn.PREDICTED_FILES:
                frame = citylearn.with_predictions(frame, plan.period)
            citylearn.write_csv(self.folder, f"{file_name}.csv", frame)
        charger_files, ev_ids = self._chargers(sessions)
        schema = citylearn.schema_json(plan.schema, building_files, charger_files, ev_ids, plan.steps, plan.period,
                                       plan.index[0].tz_convert(plan.tz), plan.configs, demands)
        citylearn.write_schema(self.folder, schema)
        result = {"warnings": self.warnings, "gaps": self.gaps, "gaps_left_off": self.gaps_left_off}
        fsio.atomic_write_json(os.path.join(self.folder, METADATA_FILE), {
            "name": plan.name, "site": plan.site, "description": plan.description, "period": plan.period,
            "from_ts": iso(plan.start), "until_ts": iso(plan.end), "time_zone": str(plan.tz), "steps": plan.steps,
            "created_at": iso(_now()), "chargers": {f: f"{b}/{c}" for (b, c), f in charger_files.items()}, **result,
        })
        return result

    def _documents(self, collection, fields):
        """The collection's documents in the range, oldest first: the server filters, we never scan."""
        query = {"timestamp": {"$gte": self.plan.start, "$lt": self.plan.end}}
        projection = {"_id": 0, "timestamp": 1, **{f: 1 for f in fields}}
        with Mongo.session():
            return list(self.plan.db[collection].find(query, projection).sort("timestamp", 1))

    def _aggregate(self, source, docs):
        """Mean per step of every known column; energies become kWh per step (mean kW x step hours)."""
        if not docs:
            return pd.DataFrame(index=range(self.plan.steps))
        columns = [c for c in citylearn.MEASURED_COLUMNS if any(c in d for d in docs)]
        frame = pd.DataFrame([{c: d.get(c) for c in columns} for d in docs], columns=columns)
        frame = frame.apply(pd.to_numeric, errors="coerce").astype("float64")
        stamps = pd.DatetimeIndex([d["timestamp"] for d in docs]).tz_convert("UTC")
        steps = (stamps - self.plan.index[0]) // pd.Timedelta(minutes=self.plan.period)
        frame = frame.groupby(np.asarray(steps)).mean().reindex(range(self.plan.steps))
        for column in citylearn.ENERGY_COLUMNS:
            if column in frame:
                frame[column] = frame[column] * self.plan.period / 60.0
        # A source sampled more coarsely than the period leaves steps empty by design, not by loss:
        # each sample holds until the next one is due. Only what is missing beyond that is a gap.
        interval = pd.Series(stamps).diff().median() if len(stamps) > 1 else pd.NaT
        if pd.notna(interval) and interval > self.plan.step:
            hold = math.ceil(interval / self.plan.step) - 1
            frame = frame.ffill(limit=hold)
            self.warnings.append(f"{source} reports every {int(interval.total_seconds() // 60)} min, coarser than the "
                                 f"{self.plan.period}-min period: each value is held for {hold} more step(s)")
        return frame

    def _complete(self, source, frame, defaults):
        """Fill the gaps of each column; columns the source never reports get their default, with a warning."""
        out = pd.DataFrame(index=range(self.plan.steps))
        absent = []
        for column, default in defaults.items():
            if column in frame and frame[column].notna().any():
                out[column] = self._fill(source, column, frame[column])
            else:
                out[column] = float(default)
                absent.append(f"{column}={default}")
        for column in frame.columns.difference(list(defaults)):
            if column in citylearn.BUILDING_OPTIONAL_COLUMNS and frame[column].notna().any():
                out[column] = self._fill(source, column, frame[column])
        if absent:
            self.warnings.append(f"{source} has no data for {', '.join(absent)}: filled with these defaults")
        return out

    def _fill(self, source, column, series):
        """Fill runs of missing steps: short ones linearly, long ones from the same time on another day."""
        values = series.copy()
        per_day = 1440 // self.plan.period
        runs = _runs(series.isna().to_numpy())
        short = math.ceil(SHORT_GAP_MINUTES / self.plan.period)
        long_mask = np.zeros(len(values), dtype=bool)
        for first, last in runs:
            if last - first + 1 > short:
                long_mask[first:last + 1] = True
        # A day earlier first (repeatedly, so a multi-day gap repeats the last whole day), then a day later.
        for shift in (per_day, -per_day):
            while True:
                candidate = values.shift(shift)
                fill = long_mask & values.isna().to_numpy() & candidate.notna().to_numpy()
                if not fill.any():
                    break
                values[fill] = candidate[fill]
        by_day = values.notna().to_numpy() & long_mask
        values = values.interpolate(limit_area="inside").ffill().bfill()
        for first, last in runs:
            if by_day[first:last + 1].all():
                rule = "same_time_other_day"
            elif 0 < first and last < len(values) - 1:
                rule = "linear"
            else:
                rule = "nearest"
            self._gap(source, column, first, last, rule)
        return values

    def _gap(self, source, column, first, last, rule):
        start = self.plan.index[first]
        for gap in self.gaps:  # one entry per gap, listing every column it hit
            if gap["source"] == source and gap["first_step"] == first and gap["steps"] == last - first + 1 and gap["rule"] == rule:
                gap["columns"].append(column)
                return
        if len(self.gaps) >= MAX_REPORTED_GAPS:
            self.gaps_left_off += 1
            return
        self.gaps.append({
            "source": source, "columns": [column], "rule": rule, "first_step": first, "steps": last - first + 1,
            "start": iso(start.to_pydatetime()), "end": iso((start + (last - first + 1) * self.plan.step).to_pydatetime()),
        })

    def _one_load_direction(self, building_id, frame):
        """citylearn rejects cooling and heating in the same step: keep the larger, zero the other."""
        both = (frame["cooling_demand"] > 0) & (frame["heating_demand"] > 0)
        if both.any():
            cooling_wins = frame["cooling_demand"] >= frame["heating_demand"]
            frame.loc[both & cooling_wins, "heating_demand"] = 0.0
            frame.loc[both & ~cooling_wins, "cooling_demand"] = 0.0
            self.warnings.append(
                f"building_{building_id}: {int(both.sum())} step(s) had both cooling and heating demand; the smaller was set to 0")
        return frame

    def _shared(self, file_name, defaults, measured):
        """A site-wide file from its own collection, else the mean over the buildings that report it."""
        with Mongo.session():
            own = file_name in self.plan.db.list_collection_names()
        docs = self._documents(file_name, tuple(defaults)) if own else []
        if docs:
            frame = self._aggregate(file_name, docs)
            source = file_name
        else:
            per_building = [m.reindex(columns=list(defaults)) for m in measured.values()]
            frame = pd.concat(per_building).groupby(level=0).mean().reindex(range(self.plan.steps))
            source = f"{file_name} (mean of buildings)"
        return self._complete(source, frame, defaults)

    def _sessions(self, building_id, docs):
        """{charger_id: [Session]} from the ``charging_sessions`` arrays of a building's documents."""
        chargers = self.plan.schema["buildings"][building_id].get("chargers", {})
        gap = dt.timedelta(minutes=max(SESSION_BREAK_MINUTES, self.plan.period))
        open_sessions, result, unknown = {}, {c: [] for c in chargers}, set()
        for doc in docs:
            stamp = doc["timestamp"]
            for report in doc.get("charging_sessions") or []:
                if not isinstance(report, dict):
                    continue
                charger_id = str(report.get("charger_id"))
                if charger_id not in chargers:
                    unknown.add(charger_id)
                    continue
                ev_id = ev_name(report.get("user_id"))
                flexibility = report.get("flexibility") if isinstance(report.get("flexibility"), dict) else {}
                session = open_sessions.get(charger_id)
                if session is None or session.ev_id != ev_id or stamp - session.last > gap:
                    session = citylearn.Session(ev_id)
                    result[charger_id].append(session)
                    open_sessions[charger_id] = session
                session.reports.append((stamp, _soc(report.get("soc")), _time(flexibility.get("departure.time")),
                                        _soc(flexibility.get("departure.soc"))))
        if unknown:
            self.warnings.append(f"building_{building_id}: sessions at chargers missing from the schema were ignored: "
                                 f"{', '.join(sorted(unknown))}")
        return result

    def _chargers(self, sessions):
        charger_files, ev_ids = {}, set()
        for building_id, per_charger in sessions.items():
            for number, (charger_id, charger_sessions) in enumerate(per_charger.items(), 1):
                file_name = citylearn.charger_file(building_id, number)
                charger_files[(building_id, charger_id)] = file_name
                frame = citylearn.charger_frame(charger_sessions, self.plan.index[0].to_pydatetime(), self.plan.period,
                                                self.plan.steps)
                citylearn.write_csv(self.folder, file_name, frame)
                ev_ids.update(s.ev_id for s in charger_sessions)
        return charger_files, sorted(ev_ids)


def ev_name(user_id):
    """A CityLearn EV id for a site's user id; never purely numeric (CSV readers would make it a number)."""
    name = _EV_ID.sub("_", str(user_id))[:63]
    return name if re.search(r"[A-Za-z]", name) else f"EV_{name}"


def _soc(value):
    """A state of charge as a fraction: sites report 0..1 or percent."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return min(value / 100.0 if value > 1.0 else value, 1.0)


def _time(value):
    """A timestamp as sites send it (BSON date, ISO string, epoch seconds) in UTC, or None."""
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return dt.datetime.fromtimestamp(value, dt.timezone.utc)
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)
    return None


def _runs(mask):
    """(first, last) index pairs of the True runs in a boolean array."""
    runs, first = [], None
    for index, missing in enumerate(mask):
        if missing and first is None:
            first = index
        elif not missing and first is not None:
            runs.append((first, index - 1))
            first = None
    if first is not None:
        runs.append((first, len(mask) - 1))
    return runs


def _int_field(body, field, default, minimum, maximum):
    value = body.get(field, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise BadRequest(f"{field} must be an integer between {minimum} and {maximum} (minutes)", field=field)
    return value


def _timestamp(body, field, tz):
    """An ISO 8601 time; one without an offset is read in the site's time zone."""
    value = body.get(field)
    try:
        parsed = dt.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{field} must be an ISO 8601 time such as 2024-03-01T00:00:00Z", field=field) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)
    return parsed.astimezone(dt.timezone.utc)


def _tree_size(path):
    total = 0
    for directory, _, files in os.walk(path):
        for file_name in files:
            try:
                total += os.lstat(os.path.join(directory, file_name)).st_size
            except OSError:
                pass
    return total


def _now():
    return dt.datetime.now(dt.timezone.utc)
