"""Accounting: ``GET /usage?by=user|host&since=ISO`` (usage.py computes it)."""

import bottle

from ..usage import BY_USER
from .app import Context


def install(app: bottle.Bottle, ctx: Context) -> None:
    usage = ctx.jobs.usage

    @app.get("/usage")
    def report():
        query = bottle.request.query
        return usage.report(by=query.get("by") or BY_USER, since=query.get("since") or None)
