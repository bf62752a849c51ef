"""Routes for site data (MongoDB), site schemas and CityLearn datasets; see docs/datasets.md."""

import os

import bottle

from ..exceptions import BadRequest
from .app import Context, json_body, query_int
from .openapi import INTEGER, MESSAGE, STRING, array, describe, obj

MAX_MINUTES = 366 * 24 * 60
MAX_LIMIT = 5000
DEFAULT_LIMIT = 500


def install(app: bottle.Bottle, ctx: Context) -> None:
    sitedata, datasets = ctx.sitedata, ctx.datasets

    @app.get("/sites")
    @describe("Site names (the MongoDB databases holding site data)", statuses=(503,),
              reply=obj({"sites": array(STRING)}, ["sites"]))
    def sites():
        return {"sites": sitedata.sites()}

    @app.get("/real-time-data/<site>")
    @describe("A site's recent documents per collection", statuses=(400, 404, 503), reply=obj(),
              query={"minutes": {**INTEGER, "minimum": 1, "maximum": MAX_MINUTES},
                     "limit": {**INTEGER, "minimum": 1, "maximum": MAX_LIMIT},
                     "page": {**INTEGER, "minimum": 1, "maximum": 1_000_000}})
    def real_time_data(site):
        minutes = query_int("minutes", None, 1, MAX_MINUTES)
        limit = query_int("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        page = query_int("page", 1, 1, 1_000_000)
        return sitedata.real_time(site, minutes, limit, page)

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
    @describe("Start building a CityLearn dataset from site data (status at Location)", reply_status=202,
              body=obj({"name": STRING, "site_id": STRING, "citylearn_configs": obj()}),
              reply=obj({"name": STRING, "status": STRING, "status_url": STRING}, ["name", "status", "status_url"]),
              headers={"Location": STRING}, statuses=(404, 409, 503, 507))
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
