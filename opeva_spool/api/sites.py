"""Routes for site data (MongoDB), site schemas and CityLearn datasets; see docs/datasets.md."""

import datetime as dt
import os
import urllib.parse

import bottle

from ..exceptions import BadRequest
from ..jobs import parse_utc
from ..sitedata.mongo import BUCKET_COUNT_FIELD, Page, Window, iso
from .app import Context, json_body, query_int
from .openapi import MESSAGE, STRING, array, describe, obj

MAX_MINUTES = 366 * 24 * 60
MAX_LIMIT = 5000
MAX_OFFSET = 1_000_000_000
# The original answered every document of the window; a bound keeps one request from reading a whole site.
DEFAULT_REAL_TIME_LIMIT = 2000
FLAG_VALUES = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
# Per-collection figures travel in headers as a query string (names percent-encoded): name=value&...
TOTALS_HEADER = "X-Collection-Totals"
OFFSETS_HEADER = "X-Collection-Offsets"

_SITE_LIST = obj({"sites": array(STRING)}, ["sites"])
_TOTALS_HEADERS = {TOTALS_HEADER: STRING, OFFSETS_HEADER: STRING, "X-Total-Count": STRING}
_COLLECTIONS = {"anyOf": [
    {"type": "object", "description": "each key a collection, each value its documents in ascending time order",
     "additionalProperties": {"type": "array", "items": {"type": "object"}}},
    obj({"site": STRING, "collections": obj()}, ["site", "collections"]),  # envelope=1
]}
_PAGING = {
    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "description": "documents per collection"},
    "offset": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET,
               "description": "position of the first document per collection, counted from the oldest"},
    "minutes": {"type": "integer", "minimum": 1, "maximum": MAX_MINUTES, "description": "only the last N minutes"},
    "envelope": {"type": "string", "enum": sorted(FLAG_VALUES),
                 "description": "1: the envelope {site, since, until, collections: {name: {documents, total, "
                                "offset, has_more}}} instead of {name: [documents]}"},
}


def install(app: bottle.Bottle, ctx: Context) -> None:
    sitedata, datasets = ctx.sitedata, ctx.datasets

    @app.get("/sites")
    @describe("Site names (the MongoDB databases holding site data)", statuses=(503,), reply=_SITE_LIST)
    def sites():
        return {"sites": sitedata.sites()}

    @app.get("/energy-communities")
    @describe("Site databases, under the name OPEVA's later clients use (same as GET /sites)", reply=_SITE_LIST,
              statuses=(503,))
    def energy_communities():
        return sites()

    @app.get("/real-time-data/<site>")
    @describe("Per collection, the documents of the last N minutes in ascending time order; without offset the "
              f"newest `limit` (default {DEFAULT_REAL_TIME_LIMIT}). Totals and offsets per collection in the "
              f"{TOTALS_HEADER} / {OFFSETS_HEADER} headers (name=value&...), X-Total-Count their sum",
              query=_PAGING, reply=_COLLECTIONS, headers=_TOTALS_HEADERS, statuses=(400, 404, 503))
    def real_time_data(site):
        minutes = query_int("minutes", None, 1, MAX_MINUTES)
        window = Window(since=_minutes_ago(minutes))
        limit = query_int("limit", DEFAULT_REAL_TIME_LIMIT, 1, MAX_LIMIT)
        offset = query_int("offset", None, 0, MAX_OFFSET)
        envelope = _query_flag("envelope")
        return _collections_reply(site, sitedata.pages(site, window, limit, offset), window, envelope,
                                  minutes=minutes, limit=limit)

    @app.get("/historical-data/<site>")
    @describe("Per collection, one page of the documents between from_ts (inclusive) and until_ts (exclusive) or "
              "of the last N minutes, in ascending time order; with granularity_minutes, buckets of that many "
              "minutes (aligned on the Unix epoch) holding the mean of each numeric field and the count of "
              f"documents ({BUCKET_COUNT_FIELD}). Totals in headers as for /real-time-data",
              query={**_PAGING,
                     "from_ts": {"type": "string", "format": "date-time",
                                 "description": "ISO 8601; without an offset, UTC"},
                     "until_ts": {"type": "string", "format": "date-time"},
                     "granularity_minutes": {"type": "integer", "minimum": 1, "maximum": MAX_MINUTES}},
              required=("limit",), reply=_COLLECTIONS, headers=_TOTALS_HEADERS, statuses=(400, 404, 503))
    def historical_data(site):
        if not bottle.request.query.get("limit"):
            raise BadRequest("query parameter 'limit' is required (documents per collection)", field="limit")
        limit = query_int("limit", None, 1, MAX_LIMIT)
        offset = query_int("offset", 0, 0, MAX_OFFSET)
        minutes = query_int("minutes", None, 1, MAX_MINUTES)
        granularity = query_int("granularity_minutes", None, 1, MAX_MINUTES)
        since, until = _query_time("from_ts"), _query_time("until_ts")
        if minutes is not None:
            if since is not None:
                raise BadRequest("give either 'minutes' or 'from_ts', not both", field="minutes")
            since = _minutes_ago(minutes)
        if since is not None and until is not None and since >= until:
            raise BadRequest("'from_ts' must be earlier than 'until_ts'", field="from_ts")
        window = Window(since, until)
        envelope = _query_flag("envelope")
        return _collections_reply(site, sitedata.pages(site, window, limit, offset, granularity), window, envelope,
                                  minutes=minutes, limit=limit, granularity_minutes=granularity)

    @app.post("/schema/create")
    @describe("Store a site's first schema", body=obj({"site": STRING, "schema": obj()}, ["site", "schema"]),
              reply=obj({**MESSAGE["properties"], "site": STRING}, ["message", "site"]), statuses=(409, 503))
    def schema_create():
        body = json_body()
        site = body.get("site")
        sitedata.create_schema(site, body.get("schema"))
        return {"message": f"schema of site {site!r} created", "site": site}

    @app.put("/schema/update/<site>")
    @describe("Replace a site's schema", body=obj({"schema": obj()}, ["schema"]), statuses=(404, 503),
              reply=obj({**MESSAGE["properties"], "site": STRING}, ["message", "site"]))
    def schema_update(site):
        body = json_body()
        if "schema" not in body:
            raise BadRequest("body must be {\"schema\": {...}}")
        sitedata.update_schema(site, body["schema"])
        return {"message": f"schema of site {site!r} updated", "site": site}

    @app.get("/schema/<site>")
    @describe("A site's schema", reply=obj(), statuses=(400, 404, 503))
    def schema_get(site):
        return sitedata.schema(site)

    @app.get("/dataset/dates-available/<site>")
    @describe("First and last timestamp of each of a site's collections", statuses=(400, 404, 503),
              reply={"type": ["array", "object"]})
    def dates_available(site):
        return sitedata.dates_available(site)

    @app.post("/dataset")
    @describe("Build a CityLearn dataset from a site's data (202; then GET /dataset/status/{name}). "
              "citylearn_configs overrides schema.json and is checked against the dataset: a key CityLearn "
              "would refuse is a 400 naming it",
              body={"type": "object", "required": ["name", "site_id", "from_ts", "until_ts"], "properties": {
                  "name": {"type": "string"}, "site_id": {"type": "string"}, "description": {"type": "string"},
                  "from_ts": {"type": "string"}, "until_ts": {"type": "string"},
                  "period": {"type": "integer", "minimum": 1, "maximum": 1440},
                  "citylearn_configs": {"type": ["object", "null"]}}},
              reply={"type": "object", "properties": {"name": {"type": "string"}, "status": {"type": "string"},
                                                      "status_url": {"type": "string"}}},
              reply_status=202, headers={"Location": STRING}, statuses=(400, 404, 409, 503, 507))
    def dataset_create():
        accepted = datasets.start_build(json_body())
        bottle.response.status = 202
        bottle.response.set_header("Location", accepted["status_url"])
        return accepted

    @app.get("/dataset/status/<name>")
    @describe("A dataset build's status", reply=obj({"status": STRING}), statuses=(400, 404, 503))
    def dataset_status(name):
        return datasets.status(name)

    @app.get("/datasets")
    @describe("The built datasets", reply=array(obj()), statuses=(503,))
    def dataset_list():
        return datasets.list()

    @app.get("/dataset/download/<name>")
    @describe("A dataset: a folder as a zip made while it streams, a plain file as it is (with Range)",
              reply_type="application/octet-stream", statuses=(206, 304, 400, 403, 404, 416, 503))
    def dataset_download(name):
        download = datasets.download(name)
        if download.file_path is not None:  # Range and If-Modified-Since, as a plain file should have
            return bottle.static_file(os.path.basename(download.file_path), root=os.path.dirname(download.file_path),
                                      mimetype=download.content_type, download=download.file_name)
        bottle.response.content_type = download.content_type
        bottle.response.set_header("Content-Disposition", f'attachment; filename="{download.file_name}"')
        return download.chunks

    @app.delete("/dataset/<name>")
    @describe("Delete a dataset", reply=obj({**MESSAGE["properties"], "name": STRING}, ["message", "name"]),
              statuses=(400, 403, 404, 409, 503))
    def dataset_delete(name):
        return datasets.delete(name)


def _query_flag(name: str) -> bool:
    raw = bottle.request.query.get(name) or "0"
    if raw not in FLAG_VALUES:
        raise BadRequest(f"query parameter {name!r} must be 1 or 0 (true/false), not {raw!r}", field=name)
    return FLAG_VALUES[raw]


def _query_time(name: str) -> dt.datetime | None:
    raw = bottle.request.query.get(name)
    if raw in (None, ""):
        return None
    moment = parse_utc(raw)
    if moment is not None:
        try:
            return moment.astimezone(dt.timezone.utc)
        except OverflowError:  # 0001-01-01T00:00+05:00 has no UTC time
            pass
    raise BadRequest(f"query parameter {name!r} must be an ISO 8601 time such as 2024-03-30T00:00:00Z, not {raw!r}",
                     field=name)


def _minutes_ago(minutes: int | None) -> dt.datetime | None:
    return None if minutes is None else dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=minutes)


def _collections_reply(site: str, pages: dict[str, Page], window: Window, envelope: bool, **asked) -> dict:
    """The original's {collection: [documents]}, per-collection totals and offsets in headers;
    or, when asked for, the envelope that carries them in the body."""
    bottle.response.set_header("X-Total-Count", str(sum(page.total for page in pages.values())))
    bottle.response.set_header(TOTALS_HEADER, urllib.parse.urlencode({n: p.total for n, p in pages.items()}))
    bottle.response.set_header(OFFSETS_HEADER, urllib.parse.urlencode({n: p.offset for n, p in pages.items()}))
    if not envelope:
        return {name: page.documents for name, page in pages.items()}
    return {
        "site": site,
        **asked,
        "since": None if window.since is None else iso(window.since),
        "until": None if window.until is None else iso(window.until),
        "collections": {name: {"documents": page.documents, "total": page.total, "offset": page.offset,
                               "has_more": page.offset + len(page.documents) < page.total}
                        for name, page in pages.items()},
    }
