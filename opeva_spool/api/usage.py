"""Accounting: ``GET /usage?by=user|host&since=ISO`` (usage.py computes it)."""

import bottle

from ..usage import BY_USER
from .app import Context
from .openapi import STRING, array, describe, nullable, obj


def install(app: bottle.Bottle, ctx: Context) -> None:
    usage = ctx.jobs.usage

    @app.get("/usage")
    @describe("Jobs, attempts, run hours and GPU hours per user or per host", statuses=(400,),
              query={"by": {"type": "string", "enum": ["user", "host"]},
                     "since": {**STRING, "description": "an ISO-8601 time; all time without it"}},
              reply=obj({"by": STRING, "since": nullable("string"), "until": STRING, "rows": array(obj()),
                         "total": obj()}, ["rows"]))
    def report():
        query = bottle.request.query
        return usage.report(by=query.get("by") or BY_USER, since=query.get("since") or None)
