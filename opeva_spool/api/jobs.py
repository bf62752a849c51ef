"""Job routes: submit, status, outputs, listing, stop, delete, logs."""

import bottle

from .. import auth
from ..streams import STREAM_GONE
from .app import json_body, query_flag, query_int

MAX_PAGE = 1000
MAX_TAIL_LINES = 1_000_000
MAX_OFFSET = 2**62
MAX_ATTEMPT = 999  # an entry's name holds three digits of attempt


def install(app, ctx):
    service = ctx.jobs

    @app.post("/run-simulation")
    def run_simulation():
        body = json_body()
        return service.submit(body)

    @app.get("/status/<job_id>")
    def status(job_id):
        return service.status(job_id)

    @app.get("/job-info/<job_id>")
    def job_info(job_id):
        return service.job_info(job_id)

    @app.get("/result/<job_id>")
    def result(job_id):
        return service.result(job_id)

    @app.get("/progress/<job_id>")
    def progress(job_id):
        return service.progress(job_id)

    @app.get("/progress/<job_id>/history")
    def progress_history(job_id):
        return service.progress_history(job_id, since=bottle.request.query.get("since") or None)

    @app.get("/job-metrics/<job_id>")
    def job_metrics(job_id):
        return service.job_metrics(job_id, offset=query_int("offset", 0, 0, MAX_OFFSET))

    @app.get("/job-config/<job_id>")
    def job_config(job_id):
        snapshot = service.job_config(job_id)
        bottle.response.content_type = "text/yaml; charset=utf-8"
        return snapshot

    @app.post("/resubmit/<job_id>")
    def resubmit(job_id):
        return service.resubmit(job_id, json_body())

    @app.get("/jobs")
    def list_jobs():
        query = bottle.request.query
        items, next_cursor, total = service.list_jobs(
            status=query.get("status") or None,
            host=query.get("host") or None,
            limit=query_int("limit", 100, 1, MAX_PAGE),
            cursor=query.get("cursor") or None,
            offset=query_int("offset", 0, 0, 10_000_000),
            submitter=query.get("submitter") or None,
            text=query.get("q") or None,
        )
        # The body stays the original API's plain list; paging travels in headers.
        if next_cursor:
            bottle.response.set_header("X-Next-Cursor", next_cursor)
        if total is not None:
            bottle.response.set_header("X-Total-Count", str(total))
        return items

    @app.post("/stop/<job_id>")
    def stop(job_id):
        return service.stop(job_id, by=auth.current().user or bottle.request.remote_addr or "")

    @app.delete("/job/<job_id>")
    def delete(job_id):
        return service.delete(job_id, force=query_flag("force"))

    def logs(job_id):
        tail = query_int("tail", None, 0, MAX_TAIL_LINES)
        follow = query_flag("follow")
        # Served as a stream (streams.py) when following: it ends once the client left or the server closes.
        chunks = service.log_stream(job_id, tail=tail, follow=follow, gone=bottle.request.environ.get(STREAM_GONE),
                                    attempt=query_int("attempt", None, 1, MAX_ATTEMPT))
        bottle.response.content_type = "text/plain; charset=utf-8"
        bottle.response.set_header("Cache-Control", "no-cache")
        return chunks

    app.get("/logs/<job_id>")(logs)
    app.get("/file-logs/<job_id>")(logs)
