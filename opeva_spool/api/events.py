"""Routes: ``GET /events`` (Server-Sent Events of job and host changes) and ``GET /metrics`` (Prometheus)."""

import bottle

from .. import names
from ..exceptions import BadRequest
from ..streams import EVENT_STREAM, STREAM_GONE
from .app import Context
from .openapi import INTEGER, STRING, describe

MAX_EVENT_ID = 2**63 - 1


def _last_event_id() -> int | None:
    """The id a client resumes after: EventSource's ``Last-Event-ID`` header, else ``?last_event_id=``."""
    raw = bottle.request.get_header("Last-Event-ID") or bottle.request.query.get("last_event_id") or ""
    raw = raw.strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) > MAX_EVENT_ID:
        raise BadRequest(f"Last-Event-ID / last_event_id must be a non-negative integer event id, not {raw[:40]!r}")
    return int(raw)


def install(app: bottle.Bottle, ctx: Context) -> None:
    @app.get("/events")
    @describe("Server-Sent Events of job and host changes, resumable (a stream that stays open)",
              query={"job": {**STRING, "description": "only this job's events"},
                     "last_event_id": {**INTEGER, "minimum": 0, "description": "resume after this event id"}},
              reply_type="text/event-stream", statuses=(400, 503))
    def events():
        after = _last_event_id()
        job_id = bottle.request.query.get("job") or None
        if job_id is not None:
            names.job_id(job_id)
        # Always a stream (streams.is_stream): it ends once the client left or the server closes.
        gone = bottle.request.environ.get(STREAM_GONE) or (lambda: True)
        bottle.response.content_type = f"{EVENT_STREAM}; charset=utf-8"
        bottle.response.set_header("Cache-Control", "no-cache")
        bottle.response.set_header("X-Accel-Buffering", "no")  # nginx: pass each event on at once
        return ctx.events.stream(after, gone, job_id)

    @app.get("/metrics")
    @describe("Prometheus metrics (text exposition format)", reply_type="text/plain")
    def metrics():
        bottle.response.content_type = ctx.metrics.content_type
        return ctx.metrics.render()
