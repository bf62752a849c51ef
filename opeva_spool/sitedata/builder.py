"""The pandas builder: a ``Plan``'s site data -> step-aligned frames -> the files of a CityLearn dataset.

It runs in a build's background thread (see store.py) and writes into the folder it is given;
what each file holds is citylearn.py's business, how measurements become one value per step
(aggregation, gap filling, EV sessions) is this module's.
"""

import datetime as dt
import functools
import math
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from .. import fsio
from . import citylearn
from .mongo import Mongo, building_collection, iso, iso_now
from .plan import MINUTES_PER_DAY, Plan

# Gaps up to this long are interpolated; longer ones copy the same time of another day.
SHORT_GAP_MINUTES = 120
# A building stays plugged-in session only while it keeps reporting the EV at least this often.
SESSION_BREAK_MINUTES = 60
MAX_REPORTED_GAPS = 200
# What the builder writes beside the CityLearn files: the plan, its warnings and gaps (GET /datasets reads it).
METADATA_FILE = "dataset.json"
_EV_ID = re.compile(r"[^A-Za-z0-9_.-]")
_LETTER = re.compile(r"[A-Za-z]")

Progress = Callable[[float, str], None]


class Builder:
    """One build: queries, aggregation, gap filling, files. Runs in the build thread."""

    def __init__(self, plan: Plan, folder: str, progress: Progress) -> None:
        self.plan = plan
        self.folder = folder
        self.progress = progress
        self.index = pd.date_range(plan.start, periods=plan.steps, freq=f"{plan.period}min")  # UTC, one per step
        self.reading_warnings = []  # aggregating the buildings' documents
        self.warnings = []  # filling gaps and writing files
        self.gaps = []
        self.gaps_left_off = 0

    def build(self) -> dict:
        """Write every file into the folder; the warnings and gaps met on the way."""
        plan = self.plan
        buildings = list(plan.schema["buildings"])
        cal = citylearn.calendar(self.index, plan.tz, plan.schema.get("holidays", []))
        measured, building_files, demands, charger_files, ev_ids = {}, {}, {}, {}, set()
        fields = (*citylearn.MEASURED_COLUMNS, "charging_sessions")
        # The next building's query runs while this one's documents become its files: the database (another
        # process) and this thread work at once. One read ahead, so at most two buildings' documents are held.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"dataset-{plan.name}-read") as reader:
            pending = reader.submit(self._documents, building_collection(buildings[0]), fields)
            for number, building_id in enumerate(buildings):
                collection = building_collection(building_id)
                self.progress(80.0 * number / len(buildings), f"reading {collection}")
                docs = pending.result()
                if number + 1 < len(buildings):
                    pending = reader.submit(self._documents, building_collection(buildings[number + 1]), fields)
                measured[building_id] = self._aggregate(collection, docs, self.reading_warnings)
                sessions = self._sessions(building_id, docs)
                del docs  # before the next result arrives
                building_files[building_id], demands[building_id] = self._building(cal, building_id,
                                                                                   measured[building_id])
                files, evs = self._chargers(building_id, sessions)
                charger_files.update(files)
                ev_ids.update(evs)
        self.progress(80.0, "writing files")
        for file_name, defaults in citylearn.SHARED_FILES.items():
            frame = self._shared(file_name, defaults, measured)
            if file_name in citylearn.PREDICTED_FILES:
                frame = citylearn.with_predictions(frame, plan.period)
            citylearn.write_csv(self.folder, f"{file_name}.csv", frame)
        schema = citylearn.schema_json(plan.schema, building_files, charger_files, sorted(ev_ids), plan.steps,
                                       plan.period, self.index[0].tz_convert(plan.tz), plan.configs, demands)
        citylearn.write_schema(self.folder, schema)
        # In the order a reader expects: the request's, then what reading met, then what filling and writing did.
        warnings = [*plan.warnings, *self.reading_warnings, *self.warnings]
        result = {"warnings": warnings, "gaps": self.gaps, "gaps_left_off": self.gaps_left_off}
        fsio.atomic_write_json(os.path.join(self.folder, METADATA_FILE), {
            "name": plan.name, "site": plan.site, "description": plan.description, "period": plan.period,
            "from_ts": iso(plan.start), "until_ts": iso(plan.end), "time_zone": str(plan.tz), "steps": plan.steps,
            "created_at": iso_now(), "chargers": {f: f"{b}/{c}" for (b, c), f in charger_files.items()}, **result,
        })
        return result

    def _building(self, cal, building_id, measured):
        """Write a building's CSV from its measured frame; its file name and the demands it has."""
        collection = building_collection(building_id)
        frame = self._complete(collection, measured, citylearn.BUILDING_DEFAULTS)
        frame = self._one_load_direction(building_id, frame)
        demands = {c for c, _, _ in citylearn.DEMAND_DEVICES if (frame[c] > 0).any()}
        added = citylearn.added_devices(self.plan.schema["buildings"][building_id], demands)
        if added:
            self.warnings.append(f"{collection} has measured demand but the schema declares no "
                                 f"{', '.join(added)}: autosized defaults were added")
        file_name = f"{building_id}.csv"
        citylearn.write_csv(self.folder, file_name, citylearn.building_frame(cal, frame))
        return file_name, demands

    def _documents(self, collection, fields):
        """The collection's documents in the range, oldest first: the server filters, we never scan."""
        query = {"timestamp": {"$gte": self.plan.start, "$lt": self.plan.end}}
        projection = {"_id": 0, "timestamp": 1, **{f: 1 for f in fields}}
        with Mongo.session():
            return list(self.plan.db[collection].find(query, projection).sort("timestamp", 1))

    def _aggregate(self, source, docs, warnings):
        """Mean per step of every known column; energies become kWh per step (mean kW x step hours)."""
        if not docs:
            return pd.DataFrame(index=range(self.plan.steps))
        present = set().union(*docs)  # every field any document has, in one pass over the documents
        columns = [c for c in citylearn.MEASURED_COLUMNS if c in present]
        frame = pd.DataFrame({c: [d.get(c) for d in docs] for c in columns}, columns=columns)
        frame = frame.apply(pd.to_numeric, errors="coerce").astype("float64")
        stamps = pd.DatetimeIndex([d["timestamp"] for d in docs]).tz_convert("UTC")
        steps = (stamps - self.index[0]) // pd.Timedelta(minutes=self.plan.period)
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
            warnings.append(f"{source} reports every {int(interval.total_seconds() // 60)} min, coarser than the "
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
        per_day = MINUTES_PER_DAY // self.plan.period
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
            elif first > 0 and last < len(values) - 1:
                rule = "linear"
            else:
                rule = "nearest"
            self._gap(source, column, first, last, rule)
        return values

    def _gap(self, source, column, first, last, rule):
        start, steps = self.index[first], last - first + 1
        for gap in self.gaps:  # one entry per gap, listing every column it hit
            if (gap["source"], gap["first_step"], gap["steps"], gap["rule"]) == (source, first, steps, rule):
                gap["columns"].append(column)
                return
        if len(self.gaps) >= MAX_REPORTED_GAPS:
            self.gaps_left_off += 1
            return
        self.gaps.append({
            "source": source, "columns": [column], "rule": rule, "first_step": first, "steps": steps,
            "start": iso(start.to_pydatetime()), "end": iso((start + steps * self.plan.step).to_pydatetime()),
        })

    def _one_load_direction(self, building_id, frame):
        """citylearn rejects cooling and heating in the same step: keep the larger, zero the other."""
        both = (frame["cooling_demand"] > 0) & (frame["heating_demand"] > 0)
        if both.any():
            cooling_wins = frame["cooling_demand"] >= frame["heating_demand"]
            frame.loc[both & cooling_wins, "heating_demand"] = 0.0
            frame.loc[both & ~cooling_wins, "cooling_demand"] = 0.0
            self.warnings.append(f"{building_collection(building_id)}: {int(both.sum())} step(s) had both cooling and "
                                 "heating demand; the smaller was set to 0")
        return frame

    def _shared(self, file_name, defaults, measured):
        """A site-wide file from its own collection, else the mean over the buildings that report it."""
        with Mongo.session():
            own = file_name in self.plan.db.list_collection_names()
        docs = self._documents(file_name, tuple(defaults)) if own else []
        if docs:
            frame = self._aggregate(file_name, docs, self.warnings)
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
            self.reading_warnings.append(f"{building_collection(building_id)}: sessions at chargers missing from "
                                         f"the schema were ignored: {', '.join(sorted(unknown))}")
        return result

    def _chargers(self, building_id, per_charger):
        """Write a building's charger CSVs (numbered in the schema's order); their file names and the EVs seen."""
        charger_files, ev_ids = {}, set()
        for number, (charger_id, charger_sessions) in enumerate(per_charger.items(), 1):
            file_name = citylearn.charger_file(building_id, number)
            charger_files[(building_id, charger_id)] = file_name
            frame = citylearn.charger_frame(charger_sessions, self.index[0].to_pydatetime(), self.plan.period,
                                            self.plan.steps)
            citylearn.write_csv(self.folder, file_name, frame)
            ev_ids.update(s.ev_id for s in charger_sessions)
        return charger_files, ev_ids


@functools.lru_cache(maxsize=4096)  # called for every session report: a year of a site holds ~100k
def ev_name(user_id):
    """A CityLearn EV id for a site's user id; never purely numeric (CSV readers would make it a number)."""
    name = _EV_ID.sub("_", str(user_id))[:63]
    return name if _LETTER.search(name) else f"EV_{name}"


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
