"""Sweep routes: submit, list, show (sorted by a result key), stop, delete."""

import bottle

from .. import auth
from .app import json_body, query_flag, query_int
from .jobs import SUBMIT_BODY
from .openapi import FLAG, INTEGER, MESSAGE, STRING, array, describe, obj

MAX_SWEEPS_PAGE = 1000
SWEEP_COUNTS = obj({"counts": {"type": "object", "additionalProperties": INTEGER}})


def install(app, ctx):
    sweeps = ctx.sweeps

    @app.post("/sweeps")
    @describe("Submit a sweep: one job per combination of parameters, all published or none (docs/sweeps.md)",
              body=obj({**SUBMIT_BODY["properties"], "name": STRING, "parameters": obj(), "runs": array(obj())}),
              reply=obj({"sweep_id": STRING, "name": STRING, "status": STRING, "job_count": INTEGER,
                         "job_ids": array(STRING)}, ["sweep_id", "job_ids"]), statuses=(409, 503, 507))
    def submit():
        return sweeps.submit(json_body())

    @app.get("/sweeps")
    @describe("Sweeps, newest first, with their jobs counted by state", statuses=(400,),
              query={"limit": {**INTEGER, "minimum": 1, "maximum": MAX_SWEEPS_PAGE}},
              reply=array(obj({"sweep_id": STRING, **SWEEP_COUNTS["properties"]}, ["sweep_id"])))
    def list_sweeps():
        # A bare array, like /jobs and /queue.
        return sweeps.list(limit=query_int("limit", 100, 1, MAX_SWEEPS_PAGE))

    @app.get("/sweeps/<sweep_id>")
    @describe("A sweep, its jobs counted by state and its jobs (sorted by a result key)", statuses=(400, 404),
              query={"sort": {**STRING, "description": "a key of the jobs' result.json"},
                     "order": {"type": "string", "enum": ["asc", "desc"]}},
              reply=obj({"sweep_id": STRING, "jobs": array(obj()), **SWEEP_COUNTS["properties"]}, ["sweep_id"]))
    def show(sweep_id):
        query = bottle.request.query
        return sweeps.show(sweep_id, sort=query.get("sort") or None, order=query.get("order") or "asc")

    @app.post("/sweeps/<sweep_id>/stop")
    @describe("Cancel the sweep's queued and waiting jobs and stop its running ones", statuses=(400, 404, 409, 503),
              reply=obj({**MESSAGE["properties"], "sweep_id": STRING}, ["message", "sweep_id"]))
    def stop(sweep_id):
        return sweeps.stop(sweep_id, by=auth.current().user or bottle.request.remote_addr or "")

    @app.delete("/sweeps/<sweep_id>")
    @describe("Delete the sweep and its jobs (running ones only with force)", query={"force": FLAG},
              reply=obj({**MESSAGE["properties"], "sweep_id": STRING, "deleted_jobs": array(STRING)},
                        ["message", "sweep_id"]), statuses=(400, 404, 409, 503))
    def delete(sweep_id):
        return sweeps.delete(sweep_id, force=query_flag("force"))
