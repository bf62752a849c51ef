"""Request planning: a ``POST /dataset`` body checked against the site into a ``Plan``, or a 4xx.

Everything a build could refuse is refused here, synchronously, before anything is written:
the name, the period, the range, the site and its schema, ``citylearn_configs`` that CityLearn
would refuse for the dataset being built, and a building without data in the range. The build
itself (builder.py) then only meets failures of the machine.
"""

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from pymongo.collection import Collection
from pymongo.database import Database

from .. import names
from ..exceptions import BadRequest, Conflict
from . import citylearn
from .mongo import SiteData, building_collection, iso, site_timezone

MAX_STEPS = 200_000
MAX_DESCRIPTION = 2000
DEFAULT_PERIOD = 60
MINUTES_PER_DAY = 1440
# The first window in which a building's data is looked for (``has_data``).
PROBE_FIRST_WINDOW = dt.timedelta(days=1)


@dataclass(frozen=True)
class Plan:
    """A validated build request: what to read (``db``, ``start``, ``steps``) and what to write."""

    name: str
    site: str
    db: Database
    schema: dict
    tz: dt.tzinfo
    period: int  # minutes per time step
    start: dt.datetime  # UTC, the first step
    steps: int
    configs: dict  # schema.json overrides
    description: str
    warnings: list[str]

    @property
    def step(self) -> dt.timedelta:
        return dt.timedelta(minutes=self.period)

    @property
    def end(self) -> dt.datetime:
        """UTC, just after the last step."""
        return self.start + self.steps * self.step


def plan_build(body: dict, sitedata: SiteData, taken: Callable[[str], bool]) -> Plan:
    """The plan for ``body``; 400 for bad fields, 404 for an unknown site, 409 when ``taken(name)``."""
    name = names.dataset(body.get("name"))
    site = body.get("site_id")
    period = _int_field(body, "period", DEFAULT_PERIOD, 1, MINUTES_PER_DAY)
    if MINUTES_PER_DAY % period:
        raise BadRequest("period must divide a day (e.g. 5, 15, 30, 60 minutes)", field="period")
    configs = body.get("citylearn_configs") or {}
    if not isinstance(configs, dict):
        raise BadRequest("citylearn_configs must be an object of schema.json overrides", field="citylearn_configs")
    description = body.get("description") or ""
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        raise BadRequest(f"description must be a string of at most {MAX_DESCRIPTION} characters",
                         field="description")
    if taken(name):
        raise Conflict(f"dataset {name!r} already exists", name=name)
    db = sitedata.mongo.site_db(site)
    schema = sitedata.schema(site)
    warnings = []
    tz = site_timezone(schema)
    if tz is None:
        tz = dt.timezone.utc
        warnings.append("the site schema names no timezone: the calendar columns use UTC")
    start = _timestamp(body, "from_ts", tz)
    until = _timestamp(body, "until_ts", tz)
    if start >= until:
        raise BadRequest("from_ts must be earlier than until_ts", field="from_ts")
    span, step = until - start, dt.timedelta(minutes=period)
    steps = span // step
    if steps < 2:
        raise BadRequest("the range holds fewer than two periods; CityLearn needs at least two time steps")
    if steps > MAX_STEPS:
        raise BadRequest(f"the range holds {steps} periods; at most {MAX_STEPS} are allowed")
    if span % step:
        warnings.append(f"the range is not a whole number of periods: the last {span % step} are left out")
    end = start + steps * step
    try:
        citylearn.check_overrides(configs, schema, steps, period, start.astimezone(tz).date().isoformat())
    except ValueError as refused:
        key, reason = refused.args
        named = f"citylearn_configs.{key}" if key.split(".")[0] in configs else f"{key} (from the site schema)"
        raise BadRequest(f"{named} {reason}", field=f"citylearn_configs.{key}") from None
    buildings = list(schema["buildings"])
    with sitedata.mongo.session():
        empty = [b for b in buildings if not has_data(db[building_collection(b)], start, end)]
    if empty:
        raise BadRequest(
            f"no data between {iso(start)} and {iso(end)} for building(s) {', '.join(empty)} "
            f"(collections {', '.join(building_collection(b) for b in empty)})", buildings=empty)
    return Plan(name, site, db, schema, tz, period, start, steps, configs, description, warnings)


def has_data(collection: Collection, start: dt.datetime, end: dt.datetime) -> bool:
    """Whether ``collection`` holds a document in ``[start, end)``, looked for in windows that double from
    ``start``: a wire server that reads every match before it applies the limit (nx-27017 does) then reads
    a day or two of a year's data, not the year (1.6 s -> 0.07 s a building); with an index it costs
    MongoDB a few more index probes, and never more than log2(range / first window) queries."""
    window, first = PROBE_FIRST_WINDOW, start
    while first < end:
        last = first + min(window, end - first)  # never past ``end``: near year 9999 the sum would overflow
        if collection.find_one({"timestamp": {"$gte": first, "$lt": last}}, {"_id": 1}) is not None:
            return True
        first, window = last, window * 2
    return False


def _int_field(body: dict, field: str, default: int, minimum: int, maximum: int) -> int:
    value = body.get(field, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise BadRequest(f"{field} must be an integer between {minimum} and {maximum} (minutes)", field=field)
    return value


def _timestamp(body: dict, field: str, tz: dt.tzinfo) -> dt.datetime:
    """An ISO 8601 time; one without an offset is read in the site's time zone."""
    value = body.get(field)
    try:
        parsed = dt.datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=tz)
        return parsed.astimezone(dt.timezone.utc)
    except (TypeError, ValueError, OverflowError):  # OverflowError: a time next to year 1 or 9999 has no UTC time
        raise BadRequest(f"{field} must be an ISO 8601 time such as 2024-03-01T00:00:00Z", field=field) from None
