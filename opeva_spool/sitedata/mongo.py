"""The MongoDB connection for site data, and JSON-safe encoding of what it returns.

One database per site. Every driver call goes through ``Mongo.session()`` so that a dead,
unreachable or unconfigured MongoDB becomes ``Unavailable`` (503) within
``mongo_timeout_ms`` instead of hanging a request thread.
"""

import base64
import collections
import contextlib
import datetime as dt
import math
import re
import threading
import uuid
import zoneinfo
from dataclasses import dataclass

import pymongo
import pymongo.errors
from bson import Decimal128, ObjectId

from .. import names
from ..exceptions import BadRequest, Conflict, InvalidName, NotFound, Unavailable

# MongoDB's own databases are never sites.
SYSTEM_DATABASES = frozenset({"admin", "local", "config"})
# A bucketed document's field holding how many documents it averages.
BUCKET_COUNT_FIELD = "_count"
# Collections of a site database that hold no sensor data.
SCHEMA_COLLECTION = "schema"
SCHEMA_ID = "schema"
# Building and charger ids become collection and file names: same rules as a site name, plus ".".
ENTITY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
# A range on a date only matches dates in MongoDB (type bracketing): this skips missing/null timestamps.
ANY_DATE = {"$gte": dt.datetime(1900, 1, 1, tzinfo=dt.timezone.utc)}


class Mongo:
    def __init__(self, settings):
        self.settings = settings
        self._client = None
        self._lock = threading.Lock()

    def client(self):
        if not self.settings.mongo_uri:
            raise Unavailable("site data is disabled: no MongoDB URI is configured (setting mongo_uri)")
        with self._lock:
            if self._client is None:
                timeout = self.settings.mongo_timeout_ms
                with self.session():
                    self._client = pymongo.MongoClient(
                        self.settings.mongo_uri,
                        serverSelectionTimeoutMS=timeout,
                        connectTimeoutMS=timeout,
                        socketTimeoutMS=timeout,
                        tz_aware=True,
                        tzinfo=dt.timezone.utc,
                        connect=False,
                        appname="opeva-spool",
                    )
            return self._client

    @staticmethod
    @contextlib.contextmanager
    def session():
        """Translate driver failures into 503; DuplicateKeyError etc. are handled by callers first."""
        try:
            yield
        except (pymongo.errors.ConnectionFailure, pymongo.errors.ConfigurationError) as exc:
            raise Unavailable(f"MongoDB is unreachable or misconfigured: {exc}") from None
        except pymongo.errors.PyMongoError as exc:
            raise Unavailable(f"MongoDB failed the request: {exc}") from None

    def ping(self):
        """None if MongoDB answers; raises Unavailable otherwise (for /health)."""
        with self.session():
            self.client().admin.command("ping")

    def sites(self):
        with self.session():
            return sorted(n for n in self.client().list_database_names() if n not in SYSTEM_DATABASES)

    def site_db(self, site):
        """The database of an existing site: 400 for a bad name, 404 for an unknown site."""
        site_name(site)
        if site not in self.sites():
            raise NotFound(f"unknown site {site!r}", site=site)
        return self.client()[site]

    def data_collections(self, db):
        with self.session():
            return sorted(
                n for n in db.list_collection_names() if n != SCHEMA_COLLECTION and not n.startswith("system.")
            )


def building_collection(building_id: str) -> str:
    """The collection of a site database that holds building ``building_id``'s measurements."""
    return f"building_{building_id}"


def iso(value: dt.datetime) -> str:
    """ISO 8601 in UTC with a ``Z``; naive datetimes from the driver are UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def iso_now() -> str:
    return iso(dt.datetime.now(dt.timezone.utc))


def to_json(value):
    """A copy of a BSON document that json.dumps accepts (ObjectId, dates, decimals, binary)."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, dt.datetime):
        return iso(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, (ObjectId, uuid.UUID)):
        return str(value)
    if isinstance(value, Decimal128):
        return float(value.to_decimal())
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, float) and not math.isfinite(value):  # NaN/inf are not JSON
        return None
    return value


@dataclass(frozen=True)
class Window:
    """A time range on ``timestamp``: ``since`` inclusive, ``until`` exclusive, None for open."""

    since: dt.datetime | None = None
    until: dt.datetime | None = None

    def query(self, unbounded: dict | None = None) -> dict:
        """The filter of this window; ``unbounded`` is the timestamp condition when it has no bounds."""
        bounds = {}
        if self.since is not None:
            bounds["$gte"] = self.since
        if self.until is not None:
            bounds["$lt"] = self.until
        bounds = bounds or unbounded
        return {"timestamp": bounds} if bounds else {}


@dataclass(frozen=True)
class Page:
    """One collection's page: ``documents`` in ascending time order, from position ``offset`` of ``total``."""

    documents: list[dict]
    total: int
    offset: int


def _document_page(collection, query: dict, limit: int, offset: int | None) -> Page:
    total = collection.count_documents(query)
    if offset is None:
        # Documents inserted between the count and the find are simply not in this page: the tail
        # ends a few documents early, and the next request sees them.
        offset = max(0, total - limit)
    cursor = collection.find(query).sort("timestamp", 1).skip(offset).limit(limit)
    return Page([to_json(doc) for doc in cursor], total, offset)


class _Bucket:
    """The mean of each numeric field over the documents of one time bucket."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.count = 0
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, doc: dict) -> None:
        self.count += 1
        for key, value in doc.items():
            if isinstance(value, Decimal128):
                value = float(value.to_decimal())
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.sums[key] = self.sums.get(key, 0.0) + value
                self.counts[key] = self.counts.get(key, 0) + 1

    def document(self) -> dict:
        start = dt.datetime.fromtimestamp(self.start, dt.timezone.utc)
        return {"timestamp": iso(start), BUCKET_COUNT_FIELD: self.count,
                **{key: total / self.counts[key] for key, total in self.sums.items()}}


def _bucket_page(collection, query: dict, minutes: int, limit: int, offset: int | None) -> Page:
    """Buckets of ``minutes`` aligned on the Unix epoch (60: whole UTC hours), computed while the
    documents stream by in time order: memory holds one page of buckets, never the documents.
    (MongoDB's $dateTrunc/$group would do it server-side, but not on every server the API meets.)"""
    width = minutes * 60
    kept: collections.deque[_Bucket] | list[_Bucket] = collections.deque(maxlen=limit) if offset is None else []
    total, current = 0, None
    for doc in collection.find(query).sort("timestamp", 1):
        stamp = doc.get("timestamp")
        if not isinstance(stamp, dt.datetime):
            continue  # the query matches dates only; this guards a server that brackets types differently
        start = stamp.timestamp() // width * width
        if current is None or start != current.start:
            current = _Bucket(start)
            total += 1
            if offset is None or offset < total <= offset + limit:
                kept.append(current)  # a deque drops the oldest kept: the tail stays
        current.add(doc)
    first = max(0, total - limit) if offset is None else offset
    return Page([bucket.document() for bucket in kept], total, first)


class SiteData:
    """Browsing of site databases and the site schema stored in each of them."""

    def __init__(self, settings):
        self.mongo = Mongo(settings)

    def sites(self):
        return self.mongo.sites()

    def pages(self, site: str, window: Window, limit: int, offset: int | None,
              granularity_minutes: int | None = None) -> dict[str, Page]:
        """Per data collection, in ascending time order, one page of the documents in ``window``
        (or of their ``granularity_minutes`` buckets). ``offset`` counts from the oldest; None means
        the newest ``limit`` (the tail a real-time view wants)."""
        db = self.mongo.site_db(site)
        pages = {}
        with self.mongo.session():
            for name in self.mongo.data_collections(db):
                if granularity_minutes is None:
                    pages[name] = _document_page(db[name], window.query(), limit, offset)
                else:
                    pages[name] = _bucket_page(db[name], window.query(ANY_DATE), granularity_minutes, limit, offset)
        return pages

    def dates_available(self, site):
        """First and last ``timestamp`` of each collection (collections without dates are left out)."""
        db = self.mongo.site_db(site)
        result = []
        with self.mongo.session():
            for name in self.mongo.data_collections(db):
                ends = [
                    db[name].find_one({"timestamp": ANY_DATE}, {"timestamp": 1}, sort=[("timestamp", order)])
                    for order in (1, -1)
                ]
                if ends[0] is not None:
                    result.append({
                        "installation": name,
                        "oldest_record": iso(ends[0]["timestamp"]),
                        "newest_record": iso(ends[1]["timestamp"]),
                    })
        return result

    def schema(self, site):
        # An unknown site is a 404 before any query: a read must never bring a database into being
        # (some MongoDB-compatible servers create one on first use), or it would be listed as a site.
        db = self.mongo.site_db(site)
        with self.mongo.session():
            doc = db[SCHEMA_COLLECTION].find_one({"_id": SCHEMA_ID})
        if doc is None or not isinstance(doc.get("schema"), dict):
            raise NotFound(f"site {site!r} has no schema", site=site)
        return doc["schema"]

    def create_schema(self, site, schema):
        """Store a first schema; the site's database may already exist (data arrives before schemas)."""
        site_name(site)
        validate_schema(schema)
        with self.mongo.session():
            try:
                self.mongo.client()[site][SCHEMA_COLLECTION].insert_one({"_id": SCHEMA_ID, "schema": schema})
            except pymongo.errors.DuplicateKeyError:
                raise Conflict(f"site {site!r} already has a schema; use PUT /schema/update/{site}",
                               site=site) from None

    def update_schema(self, site, schema):
        db = self.mongo.site_db(site)  # as in schema(): an update of an unknown site touches nothing
        validate_schema(schema)
        with self.mongo.session():
            result = db[SCHEMA_COLLECTION].update_one(
                {"_id": SCHEMA_ID}, {"$set": {"schema": schema}}
            )
        if result.matched_count == 0:
            raise NotFound(f"site {site!r} has no schema; create it with POST /schema/create", site=site)


def site_name(value):
    """A valid site name that is not one of MongoDB's own databases."""
    names.site(value)
    if value in SYSTEM_DATABASES:
        raise InvalidName(f"{value!r} is a MongoDB system database, not a site", field="site")
    return value


def site_timezone(schema):
    """The site's IANA time zone, or None when the schema names none (callers default to UTC)."""
    name = schema.get("timezone")
    return None if name is None else zoneinfo.ZoneInfo(name)


def validate_schema(schema):
    """A mapping with ``buildings`` keyed by building id; optional timezone, holidays, chargers, EVs."""
    if not isinstance(schema, dict):
        raise BadRequest("'schema' must be a JSON object")
    _no_operator_keys(schema, "schema")
    buildings = schema.get("buildings")
    if not isinstance(buildings, dict) or not buildings:
        raise BadRequest("schema.buildings must be a non-empty object keyed by building id")
    for building_id, building in buildings.items():
        _entity_id("building id", building_id)
        if not isinstance(building, dict):
            raise BadRequest(f"schema.buildings.{building_id} must be an object")
        chargers = building.get("chargers", {})
        if not isinstance(chargers, dict):
            raise BadRequest(f"schema.buildings.{building_id}.chargers must be an object keyed by charger id")
        for charger_id, charger in chargers.items():
            _entity_id("charger id", charger_id)
            if not isinstance(charger, dict):
                raise BadRequest(f"schema.buildings.{building_id}.chargers.{charger_id} must be an object")
    timezone = schema.get("timezone")
    if timezone is not None:
        try:
            if not isinstance(timezone, str):
                raise ValueError
            zoneinfo.ZoneInfo(timezone)
        except (ValueError, zoneinfo.ZoneInfoNotFoundError):
            raise BadRequest("schema.timezone must be an IANA time zone name such as 'Europe/Nicosia', "
                             f"not {timezone!r}") from None
    holidays = schema.get("holidays", [])
    try:
        if not isinstance(holidays, list):
            raise ValueError
        [dt.date.fromisoformat(day) for day in holidays]
    except (TypeError, ValueError):
        raise BadRequest("schema.holidays must be a list of 'YYYY-MM-DD' dates") from None
    evs = schema.get("electric_vehicles_def", {})
    if not isinstance(evs, dict) or not all(isinstance(ev, dict) for ev in evs.values()):
        raise BadRequest("schema.electric_vehicles_def must be an object of objects")
    return schema


def _entity_id(kind, value):
    if not ENTITY_ID.match(value) or ".." in value:
        raise BadRequest(f"invalid {kind} {value!r}: letters, digits, '_', '-', '.' only, at most 63", field=kind)


def _no_operator_keys(value, path):
    """MongoDB reads keys starting with '$' as operators; refuse them rather than fail at insert."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or key.startswith("$") or "\0" in key:
                raise BadRequest(f"invalid key {key!r} in {path}")
            _no_operator_keys(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _no_operator_keys(item, f"{path}[{index}]")
