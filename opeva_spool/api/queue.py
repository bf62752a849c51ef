"""The queue view: queued jobs in dispatch order, each with why it waits."""

import bottle

from .app import query_int
from .openapi import INTEGER, array, describe, obj

DEFAULT_QUEUE_LIMIT = 1000
MAX_QUEUE_LIMIT = 100_000


def install(app, ctx):
    queue = ctx.jobs.queue

    @app.get("/queue")
    @describe("Queued jobs in dispatch order, each with why it waits (a bare array; the count in a header)",
              query={"limit": {**INTEGER, "minimum": 1, "maximum": MAX_QUEUE_LIMIT}}, statuses=(400,),
              reply=array(obj()), headers={"X-Total-Count": INTEGER})
    def queue_view():
        rows, total = queue.rows(query_int("limit", DEFAULT_QUEUE_LIMIT, 1, MAX_QUEUE_LIMIT))
        # A bare JSON array, the shape the original users' client expects; the count travels in a header.
        bottle.response.set_header("X-Total-Count", str(total))
        return rows
