"""The CityLearn dataset format: step-aligned frames in, CSV files and schema.json out.

Everything here follows what citylearn 3.0.2 (and OPEVA's fork, which reads charger
CSVs by position) expects; docs/datasets.md explains each rule for researchers.
"""

import copy
import csv
import datetime as dt
import json
import math
import os

import numpy as np
import pandas as pd

# 10 significant digits: exact for measured values, without binary noise such as 0.9500000000000001.
CSV_FLOAT = "%.10g"
# Building quantities that are energies: the site reports mean power in kW, CityLearn wants kWh per step.
ENERGY_COLUMNS = ("non_shiftable_load", "dhw_demand", "cooling_demand", "heating_demand", "solar_generation")
# Building quantities that are states: averaged over the step, never summed.
BUILDING_MEAN_COLUMNS = ("indoor_dry_bulb_temperature", "average_unmet_cooling_setpoint_difference",
                         "indoor_relative_humidity")
# Written only when the site measures them (citylearn fills zeros otherwise).
BUILDING_OPTIONAL_COLUMNS = (
    "occupant_count",
    "indoor_dry_bulb_temperature_cooling_set_point",
    "indoor_dry_bulb_temperature_heating_set_point",
)
BUILDING_DEFAULTS = {
    "indoor_dry_bulb_temperature": 22.0,
    "average_unmet_cooling_setpoint_difference": 0.0,
    "indoor_relative_humidity": 50.0,
    "non_shiftable_load": 0.0,
    "dhw_demand": 0.0,
    "cooling_demand": 0.0,
    "heating_demand": 0.0,
    "solar_generation": 0.0,
}

# Site-wide files: measured columns, their defaults when the site has none, and file names.
SHARED_FILES = {
    "weather": {
        "outdoor_dry_bulb_temperature": 20.0,
        "outdoor_relative_humidity": 50.0,
        "diffuse_solar_irradiance": 0.0,
        "direct_solar_irradiance": 0.0,
    },
    "pricing": {"electricity_pricing": 0.20},
    "carbon_intensity": {"carbon_intensity": 0.40},
}
# Columns that get ``_predicted_1/2/3`` (perfect forecasts this many hours ahead, as CityLearn's datasets do).
PREDICTED_FILES = ("weather", "pricing")
PREDICTION_HOURS = (6, 12, 24)

MEAN_COLUMNS = frozenset(BUILDING_MEAN_COLUMNS + BUILDING_OPTIONAL_COLUMNS).union(
    *(columns.keys() for columns in SHARED_FILES.values())
)
MEASURED_COLUMNS = tuple(sorted(MEAN_COLUMNS.union(ENERGY_COLUMNS)))

# Exactly these, in this order: OPEVA's fork reads charger CSVs by position.
CHARGER_COLUMNS = (
    "electric_vehicle_charger_state",
    "electric_vehicle_id",
    "electric_vehicle_departure_time",
    "electric_vehicle_required_soc_departure",
    "electric_vehicle_estimated_arrival_time",
    "electric_vehicle_estimated_soc_arrival",
)
STATE_CONNECTED, STATE_INCOMING, STATE_NONE = 1, 2, 3
# An EV is announced as incoming this long before it plugs in.
INCOMING_LEAD_MINUTES = 60

DEFAULT_CHARGER = {
    "type": "citylearn.electric_vehicle_charger.Charger",
    "autosize": False,
    "attributes": {
        "nominal_power": 11.0,
        "efficiency": 0.95,
        "max_charging_power": 11.0,
        "min_charging_power": 1.4,
        "max_discharging_power": 11.0,
        "min_discharging_power": 0.0,
    },
}
DEFAULT_EV_BATTERY = {
    "type": "citylearn.energy_model.Battery",
    "autosize": False,
    "attributes": {"capacity": 50.0, "nominal_power": 11.0, "initial_soc": 0.5, "depth_of_discharge": 0.9},
}

# A measured demand needs a device to meet it; when the site schema declares none, this one is added, autosized.
DEMAND_DEVICES = (
    ("cooling_demand", "cooling_device", {"type": "citylearn.energy_model.HeatPump", "autosize": True,
                                          "attributes": {"efficiency": 0.2, "target_cooling_temperature": 8.0,
                                                         "target_heating_temperature": 45.0}}),
    ("heating_demand", "heating_device", {"type": "citylearn.energy_model.HeatPump", "autosize": True,
                                          "attributes": {"efficiency": 0.2, "target_cooling_temperature": 8.0,
                                                         "target_heating_temperature": 45.0}}),
    ("dhw_demand", "dhw_device", {"type": "citylearn.energy_model.ElectricHeater", "autosize": True,
                                  "attributes": {"efficiency": 0.9}}),
)

_OBSERVATIONS = (
    ("month", True), ("day_type", True), ("hour", True), ("daylight_savings_status", True),
    ("outdoor_dry_bulb_temperature", True), ("outdoor_dry_bulb_temperature_predicted_1", True),
    ("outdoor_dry_bulb_temperature_predicted_2", True), ("outdoor_dry_bulb_temperature_predicted_3", True),
    ("outdoor_relative_humidity", True), ("diffuse_solar_irradiance", True), ("direct_solar_irradiance", True),
    ("carbon_intensity", True), ("electricity_pricing", True), ("electricity_pricing_predicted_1", True),
    ("electricity_pricing_predicted_2", True), ("electricity_pricing_predicted_3", True),
    ("indoor_dry_bulb_temperature", False), ("non_shiftable_load", False), ("solar_generation", False),
    ("electrical_storage_soc", False), ("net_electricity_consumption", False),
    ("electric_vehicle_charger_connected_state", False),
    ("connected_electric_vehicle_at_charger_departure_time", False),
    ("connected_electric_vehicle_at_charger_required_soc_departure", False),
    ("connected_electric_vehicle_at_charger_soc", False),
    ("connected_electric_vehicle_at_charger_battery_capacity", False),
    ("electric_vehicle_charger_incoming_state", False),
    ("incoming_electric_vehicle_at_charger_estimated_arrival_time", False),
    ("incoming_electric_vehicle_at_charger_estimated_soc_arrival", False),
)
SCHEMA_TEMPLATE = {
    "random_seed": 0,
    "root_directory": None,
    "central_agent": False,
    "simulation_start_time_step": 0,
    "simulation_end_time_step": None,
    "episode_time_steps": None,
    "rolling_episode_split": False,
    "random_episode_split": False,
    "seconds_per_time_step": None,
    "observations": {name: {"active": True, "shared_in_central_agent": shared} for name, shared in _OBSERVATIONS},
    "actions": {
        "electrical_storage": {"active": True},
        "electric_vehicle_storage": {"active": True},
        "cooling_device": {"active": False},
        "heating_device": {"active": False},
        "dhw_storage": {"active": False},
    },
    "agent": {"type": "citylearn.agents.base.BaselineAgent", "attributes": {}},
    "reward_function": {"type": "citylearn.reward_function.RewardFunction", "attributes": {}},
}
# Keys of the site schema that describe the site, not CityLearn settings.
SITE_KEYS = ("buildings", "timezone", "holidays", "electric_vehicles_def")


def calendar(index, tz, holidays=()):
    """CityLearn's calendar for step starts ``index`` (UTC) in the site's local time.

    hour is 1..24 (the hour the step falls in, 1 = 00:00-01:00), day_type 1..7 Monday..Sunday,
    8 for the site's holidays, daylight_savings_status 1 while summer time is in force.
    """
    local = index.tz_convert(tz)
    holiday_dates = {dt.date.fromisoformat(day) for day in holidays}
    day_type = [8 if stamp.date() in holiday_dates else stamp.isoweekday() for stamp in local]
    dst = [int(bool(stamp.dst())) for stamp in local]
    return pd.DataFrame({
        "month": local.month,
        "hour": local.hour + 1,
        "minutes": local.minute,
        "day_type": day_type,
        "daylight_savings_status": dst,
    })


def building_frame(cal, measured):
    """Calendar plus the building columns, defaults already applied by the caller."""
    columns = list(BUILDING_MEAN_COLUMNS) + list(ENERGY_COLUMNS)
    columns += [c for c in BUILDING_OPTIONAL_COLUMNS if c in measured]
    return pd.concat([cal, measured[columns].reset_index(drop=True)], axis=1)


def with_predictions(frame, period_minutes):
    """Add ``<col>_predicted_1/2/3``: the measured value 6, 12 and 24 h ahead, the last value held at the end."""
    out = frame.copy()
    for column in frame.columns:
        for number, hours in enumerate(PREDICTION_HOURS, 1):
            steps = hours * 60 // period_minutes
            out[f"{column}_predicted_{number}"] = frame[column].shift(-steps).ffill()
    return out


def charger_frame(sessions, start, period_minutes, steps):
    """The six charger columns for one charger from its sessions (see ``Session``)."""
    period = dt.timedelta(minutes=period_minutes)
    lead = math.ceil(INCOMING_LEAD_MINUTES / period_minutes)
    # Column by column (a year at 15 minutes is 35k steps a charger): numbers in float arrays, NaN for none.
    state = np.full(steps, STATE_NONE, dtype="int64")
    ev_id = np.full(steps, "", dtype=object)
    departure, required_soc, arrival, arrival_soc = (np.full(steps, np.nan) for _ in range(4))
    previous_end = -1
    for session in sorted(sessions, key=lambda s: s.first):
        first = (session.first - start) // period
        last = (session.last - start) // period
        incoming = slice(max(first - lead, previous_end + 1, 0), max(first, 0))
        state[incoming], ev_id[incoming] = STATE_INCOMING, session.ev_id
        arrival[incoming] = first - np.arange(incoming.start, incoming.stop)
        arrival_soc[incoming] = np.nan if session.arrival_soc is None else session.arrival_soc
        departure[incoming] = required_soc[incoming] = np.nan  # each step is one session's: overlaps overwrite
        for i in range(first, last + 1):
            step_start = start + i * period
            due = session.departure_at(step_start + period) or (start + (last + 1) * period)
            soc = session.required_soc_at(step_start + period)
            state[i], ev_id[i] = STATE_CONNECTED, session.ev_id
            departure[i] = max(0, math.ceil((due - step_start) / period))
            required_soc[i] = np.nan if soc is None else soc
            arrival[i] = arrival_soc[i] = np.nan
        previous_end = last
    return pd.DataFrame({
        "electric_vehicle_charger_state": state,
        "electric_vehicle_id": ev_id,
        # Integer columns with gaps would otherwise be written as floats ("3.0"), which citylearn rejects.
        "electric_vehicle_departure_time": pd.array(departure, dtype="float64").astype("Int64"),
        "electric_vehicle_required_soc_departure": required_soc,
        "electric_vehicle_estimated_arrival_time": pd.array(arrival, dtype="float64").astype("Int64"),
        "electric_vehicle_estimated_soc_arrival": arrival_soc,
    }, columns=list(CHARGER_COLUMNS))


class Session:
    """One EV's stay at one charger, from the reports that mention it (all times UTC)."""

    def __init__(self, ev_id):
        self.ev_id = ev_id
        self.reports = []  # (timestamp, soc, departure_time, departure_soc)

    @property
    def first(self):
        return self.reports[0][0]

    @property
    def last(self):
        return self.reports[-1][0]

    @property
    def arrival_soc(self):
        return next((soc for _, soc, _, _ in self.reports if soc is not None), None)

    def _latest(self, before, index):
        values = [r[index] for r in self.reports if r[0] < before and r[index] is not None]
        return values[-1] if values else None

    def departure_at(self, before):
        """The planned departure as last reported before ``before``."""
        return self._latest(before, 2)

    def required_soc_at(self, before):
        """The reported departure SOC, else the SOC the EV actually left with."""
        required = self._latest(before, 3)
        if required is not None:
            return required
        return next((soc for _, soc, _, _ in reversed(self.reports) if soc is not None), None)


def charger_file(building_id, number):
    return f"charger_{building_id}_{number}.csv"


def schema_json(site_schema, building_files, charger_files, ev_ids, steps, period_minutes, start_local, overrides,
                demands):
    """A complete CityLearn schema for the generated files, with ``overrides`` merged in last.

    ``building_files``: {building_id: csv}; ``charger_files``: {(building_id, charger_id): csv};
    ``demands``: {building_id: demand columns with a non-zero value}.
    Site-schema keys that are CityLearn settings override our template; ``overrides`` override both.
    """
    schema = copy.deepcopy(SCHEMA_TEMPLATE)
    schema.update(copy.deepcopy({k: v for k, v in site_schema.items() if k not in SITE_KEYS}))
    schema["simulation_end_time_step"] = steps - 1
    schema["seconds_per_time_step"] = period_minutes * 60
    schema["start_date"] = start_local.date().isoformat()
    schema["electric_vehicles_def"] = _electric_vehicles(site_schema.get("electric_vehicles_def", {}), ev_ids)
    schema["buildings"] = {
        building_id: _building(building_id, site_schema["buildings"][building_id], csv, charger_files,
                               demands[building_id])
        for building_id, csv in building_files.items()
    }
    return deep_merge(schema, overrides)


def added_devices(declared, demands):
    """The devices a building gets by default: a measured demand and no device declared for it."""
    return [device for column, device, _ in DEMAND_DEVICES if column in demands and not declared.get(device)]


def _building(building_id, declared, csv, charger_files, demands):
    building = copy.deepcopy(declared)
    for _column, device, default in DEMAND_DEVICES:
        if device in added_devices(declared, demands):
            building[device] = copy.deepcopy(default)
    building.setdefault("type", "citylearn.building.Building")
    building.setdefault("include", True)
    building.update({
        "energy_simulation": csv,
        "weather": "weather.csv",
        "carbon_intensity": "carbon_intensity.csv",
        "pricing": "pricing.csv",
    })
    building.setdefault("inactive_observations", [])
    inactive_actions = building.setdefault("inactive_actions", [])
    if not building.get("electrical_storage") and "electrical_storage" not in inactive_actions:
        # citylearn refuses an active storage action on a building without storage.
        inactive_actions.append("electrical_storage")
    if building.get("pv"):
        # The site measures PV output in kW, so the column is kWh/step, not W per kW of capacity.
        building["pv"].setdefault("attributes", {}).setdefault("generation_mode", "absolute")
    chargers = {}
    for charger_id, charger in building.get("chargers", {}).items():
        merged = deep_merge(copy.deepcopy(DEFAULT_CHARGER), charger)
        merged["charger_simulation"] = charger_files[(building_id, charger_id)]
        chargers[charger_id] = merged
    if chargers:
        building["chargers"] = chargers
    else:
        building.pop("chargers", None)
    return building


def _electric_vehicles(declared, ev_ids):
    evs = {}
    for ev_id in ev_ids:
        ev = deep_merge({"include": True, "battery": copy.deepcopy(DEFAULT_EV_BATTERY)}, declared.get(ev_id, {}))
        evs[ev_id] = ev
    return evs


def deep_merge(base, overrides):
    """``overrides`` into ``base``: objects merge key by key, anything else replaces."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def write_csv(folder, file_name, frame):
    """``frame`` as CSV, the bytes ``frame.to_csv(index=False, float_format=CSV_FLOAT)`` writes, at 1.6x its speed:
    each column is formatted in one pass and the csv module writes the rows (pandas formats value by value)."""
    columns = [_csv_cells(frame[name]) for name in frame.columns]
    with open(os.path.join(folder, file_name), "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(frame.columns)
        writer.writerows(zip(*columns, strict=True))


def _csv_cells(series):
    """A column's CSV cells: floats with CSV_FLOAT, missing values empty, anything else as str() writes it."""
    if series.dtype.kind == "f":
        return ["" if value != value else CSV_FLOAT % value for value in series.tolist()]
    missing = series.isna().to_numpy()
    if not missing.any():
        return series.tolist()
    return ["" if gap else value for value, gap in zip(series.tolist(), missing, strict=True)]


def write_schema(folder, schema):
    with open(os.path.join(folder, "schema.json"), "w", encoding="utf-8") as handle:
        json.dump(schema, handle, indent=2)


BOOLEAN_SETTINGS = ("central_agent", "rolling_episode_split", "random_episode_split")
# Keys of a building that name its data files: the build writes them, an override would point elsewhere.
BUILDING_FILE_KEYS = ("energy_simulation", "weather", "carbon_intensity", "pricing")
MAX_RANDOM_SEED = 2**32 - 1  # numpy's RandomState, which CityLearn seeds with it


def check_overrides(overrides: dict, site_schema: dict, steps: int, period_minutes: int, start_date: str) -> None:
    """Refuse ``citylearn_configs`` that CityLearn would refuse for a dataset of ``steps`` steps: raises
    ``ValueError((key, reason))`` naming the first bad key (plan.py makes it a 400)."""
    settings = {**{k: v for k, v in site_schema.items() if k not in SITE_KEYS}, **overrides}

    def refuse(key, reason):
        raise ValueError(key, reason)

    def integer(key, minimum, maximum):
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            refuse(key, f"must be an integer from {minimum} to {maximum} for a dataset of {steps} steps, "
                        f"not {value!r}")
        return value

    last = steps - 1
    if settings.get("root_directory") not in (None, ""):
        refuse("root_directory", "must be empty: CityLearn would read the data files from there instead of "
                                 "from the dataset's own folder")
    # CityLearn reads both as int(...): null is refused too. The build writes the end step itself, over
    # the site schema's, so only an override can move it.
    start = integer("simulation_start_time_step", 0, last - 1) if "simulation_start_time_step" in settings else 0
    end = integer("simulation_end_time_step", start + 1, last) if "simulation_end_time_step" in overrides else last
    episodes = settings.get("episode_time_steps")
    if isinstance(episodes, list):
        for split in episodes:
            if (not isinstance(split, list) or len(split) != 2 or any(isinstance(s, bool) or not isinstance(s, int)
                                                                      for s in split)
                    or not start <= split[0] <= split[1] <= end):
                refuse("episode_time_steps", f"must list [first, last] steps within {start}..{end}, not {split!r}")
    elif episodes is not None:
        integer("episode_time_steps", 1, end - start + 1)
    derived = {"seconds_per_time_step": period_minutes * 60, "start_date": start_date}
    for key, value in derived.items():
        if key in overrides and overrides[key] != value:
            refuse(key, f"is set by the data ({value!r}); the dataset cannot say {overrides[key]!r}")
    for key in BOOLEAN_SETTINGS:
        if key in overrides and not isinstance(overrides[key], bool):
            refuse(key, f"must be true or false, not {overrides[key]!r}")
    if "random_seed" in overrides:
        integer("random_seed", 0, MAX_RANDOM_SEED)
    for key in ("observations", "actions"):
        if key in overrides and not (isinstance(overrides[key], dict)
                                     and all(isinstance(v, dict) for v in overrides[key].values())):
            refuse(key, "must be an object of objects such as {\"hour\": {\"active\": false}}")
    for key in ("agent", "reward_function"):
        if key in overrides and not (isinstance(overrides[key], dict) and isinstance(overrides[key].get("type"), str)):
            refuse(key, "must be an object with a \"type\" (a Python class path)")
    buildings = overrides.get("buildings", {})
    if not isinstance(buildings, dict):
        refuse("buildings", "must be an object keyed by building id")
    for building_id, building in buildings.items():
        if building_id not in site_schema["buildings"]:
            refuse(f"buildings.{building_id}", "is not a building of the site: CityLearn would find no data for it")
        if not isinstance(building, dict):
            refuse(f"buildings.{building_id}", "must be an object")
        for key in BUILDING_FILE_KEYS:
            if key in building:
                refuse(f"buildings.{building_id}.{key}", "names a file the build writes; it cannot be overridden")
    evs = overrides.get("electric_vehicles_def", {})
    if not isinstance(evs, dict) or not all(isinstance(ev, dict) for ev in evs.values()):
        refuse("electric_vehicles_def", "must be an object of objects keyed by EV id")
