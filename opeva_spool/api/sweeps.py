"""Sweep routes: submit, list, show (sorted by a result key), stop, delete."""

import bottle

from .. import auth
from .app import json_body, query_flag, query_int

MAX_SWEEPS_PAGE = 1000


def install(app, ctx):
    sweeps = ctx.sweeps

    @app.post("/sweeps")
    def submit():
        return sweeps.submit(json_body())

    @app.get("/sweeps")
    def list_sweeps():
        # A bare array, like /jobs and /queue.
        return sweeps.list(limit=query_int("limit", 100, 1, MAX_SWEEPS_PAGE))

    @app.get("/sweeps/<sweep_id>")
    def show(sweep_id):
        query = bottle.request.query
        return sweeps.show(sweep_id, sort=query.get("sort") or None, order=query.get("order") or "asc")

    @app.post("/sweeps/<sweep_id>/stop")
    def stop(sweep_id):
        return sweeps.stop(sweep_id, by=auth.current().user or bottle.request.remote_addr or "")

    @app.delete("/sweeps/<sweep_id>")
    def delete(sweep_id):
        return sweeps.delete(sweep_id, force=query_flag("force"))
