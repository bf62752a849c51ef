"""Routes for site data (MongoDB), site schemas and CityLearn datasets; see docs/datasets.md."""

import os

import bottle

from ..exceptions import BadRequest
from .app import Context, json_body, query_int

MAX_MINUTES = 366 * 24 * 60
MAX_LIMIT = 5000
DEFAULT_LIMIT = 500


def install(app: bottle.Bottle, ctx: Context) -> None:
    sitedata, datasets = ctx.sitedata, ctx.datasets

    @app.get("/sites")
    def sites():
        return {"sites": sitedata.sites()}

    @app.get("/real-time-data/<site>")
    def real_time_data(site):
        minutes = query_int("minutes", None, 1, MAX_MINUTES)
        limit = query_int("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        page = query_int("page", 1, 1, 1_000_000)
        return sitedata.real_time(site, minutes, limit, page)

    @app.post("/schema/create")
    def schema_create():
        body = json_body()
        site = body.get("site")
        sitedata.create_schema(site, body.get("schema"))
        return {"message": f"schema of site {site!r} created", "site": site}

    @app.put("/schema/update/<site>")
    def schema_update(site):
        body = json_body()
        if "schema" not in body:
            raise BadRequest("body must be {\"schema\": {...}}")
        sitedata.update_schema(site, body["schema"])
        return {"message": f"schema of site {site!r} updated", "site": site}

    @app.get("/schema/<site>")
    def schema_get(site):
        return sitedata.schema(site)

    @app.get("/dataset/dates-available/<site>")
    def dates_available(site):
        return sitedata.dates_available(site)

    @app.post("/dataset")
    def dataset_create():
        accepted = datasets.start_build(json_body())
        bottle.response.status = 202
        bottle.response.set_header("Location", accepted["status_url"])
        return accepted

    @app.get("/dataset/status/<name>")
    def dataset_status(name):
        return datasets.status(name)

    @app.get("/datasets")
    def dataset_list():
        return datasets.list()

    @app.get("/dataset/download/<name>")
    def dataset_download(name):
        download = datasets.download(name)
        if download.file_path is not None:  # Range and If-Modified-Since, as a plain file should have
            return bottle.static_file(os.path.basename(download.file_path), root=os.path.dirname(download.file_path),
                                      mimetype=download.content_type, download=download.file_name)
        bottle.response.content_type = download.content_type
        bottle.response.set_header("Content-Disposition", f'attachment; filename="{download.file_name}"')
        return download.chunks

    @app.delete("/dataset/<name>")
    def dataset_delete(name):
        return datasets.delete(name)
