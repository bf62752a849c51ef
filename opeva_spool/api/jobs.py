"""Job routes: submit, status, outputs, listing, stop, delete, logs."""

import bottle

from .. import auth
from ..streams import STREAM_GONE
from .app import json_body, query_flag, query_int
from .openapi import BOOLEAN, FLAG, INTEGER, MESSAGE, NUMBER, STRING, array, describe, nullable, obj

MAX_PAGE = 1000
MAX_TAIL_LINES = 1_000_000
MAX_OFFSET = 2**62
MAX_ATTEMPT = 999  # an entry's name holds three digits of attempt

STATE = {"type": "string", "enum": ["waiting", "queued", "dispatched", "running", "finished", "failed", "stopped",
                                    "canceled"]}
SUBMIT_BODY = obj({
    "config_path": {**STRING, "description": "a config under configs/ (configs/<name>.yaml or <name>.yaml)"},
    "config": {"type": ["object", "string"], "description": "an inline config (JSON object or YAML text)"},
    "save_as": {**STRING, "description": "the name an inline config is saved under"},
    "overwrite": BOOLEAN, "command": {"type": ["string", "array"], "items": STRING},
    "image": STRING, "env": {"type": "object", "additionalProperties": STRING},
    "target_host": {"type": ["string", "array"], "items": STRING, "description": "a host, a list of hosts, or any"},
    "job_name": STRING, "priority": INTEGER, "max_retries": INTEGER, "retry_on_failure": BOOLEAN,
    "gpus": {"type": ["integer", "string"], "description": "a number of GPUs, or all"},
    "submitted_by": STRING, "after": array(STRING), "after_any": array(STRING),
    "resources": {"type": "object", "description": "cpus, mem, time for a Slurm host's sbatch"}})
SUBMITTED = obj({"job_id": STRING, "status": {"type": "string", "enum": ["queued", "waiting"]},
                 "host": STRING, "job_name": STRING, "config_path": nullable("string"),
                 "config_sha256": nullable("string"), "priority": INTEGER, "submitted_at": STRING},
                ["job_id", "status"])
# A job file the job writes itself: any fields, those below when the job has ended.
JOB_DOCUMENT = obj({"status": STRING, "exit_code": nullable("integer"), "reason": nullable("string"),
                    "message": STRING, "percent": NUMBER, "progress_pct": NUMBER})
LOG_QUERY = {"tail": {**INTEGER, "minimum": 0, "maximum": MAX_TAIL_LINES, "description": "only the last lines"},
             "follow": {**FLAG, "description": "keep streaming while the job runs"},
             "attempt": {**INTEGER, "minimum": 1, "maximum": MAX_ATTEMPT, "description": "an earlier attempt's log"}}


def install(app, ctx):
    service = ctx.jobs

    @app.post("/run-simulation")
    @describe("Submit a job (a config, a command, or both)", body=SUBMIT_BODY, reply=SUBMITTED,
              statuses=(400, 409, 503, 507))
    def run_simulation():
        body = json_body()
        return service.submit(body)

    @app.get("/status/<job_id>")
    @describe("A job's state, host and attempt (with its queue place while queued)", statuses=(400, 404),
              reply=obj({"job_id": STRING, "status": STATE, "host": nullable("string"), "target_host": STRING,
                         "attempt": INTEGER, "priority": INTEGER, "queue_position": nullable("integer"),
                         "waiting_reason": nullable("string"), "waiting_for": array(),
                         "queued_at_cluster": obj({"reason": nullable("string"), "position": nullable("integer")})},
                        ["job_id", "status"]))
    def status(job_id):
        return service.status(job_id)

    @app.get("/job-info/<job_id>")
    @describe("job_info.json with what the job's owner recorded and every attempt", statuses=(400, 403, 404, 503),
              reply=obj({"job_id": STRING, "status": STATE, "attempt": INTEGER, "attempts": array(obj())},
                        ["status", "attempts"]))
    def job_info(job_id):
        return service.job_info(job_id)

    @app.get("/result/<job_id>")
    @describe("The job's result.json (a placeholder until it exists; with the ending once it ended)",
              reply=JOB_DOCUMENT, statuses=(400, 403, 404, 503))
    def result(job_id):
        return service.result(job_id)

    @app.get("/progress/<job_id>")
    @describe("The job's progress.json (a placeholder until it exists; with the ending once it ended)",
              reply=JOB_DOCUMENT, statuses=(400, 403, 404, 503))
    def progress(job_id):
        return service.progress(job_id)

    @app.get("/progress/<job_id>/history")
    @describe("The job's recorded progress points, oldest first", statuses=(400, 403, 404, 503),
              query={"since": {**STRING, "description": "only points after this ISO-8601 time"}},
              reply=obj({"job_id": STRING, "history": array(obj())}, ["job_id", "history"]))
    def progress_history(job_id):
        return service.progress_history(job_id, since=bottle.request.query.get("since") or None)

    @app.get("/job-metrics/<job_id>")
    @describe("The job's metrics.jsonl records from a byte offset; pass the answer's offset next time",
              query={"offset": {**INTEGER, "minimum": 0, "maximum": MAX_OFFSET}}, statuses=(400, 403, 404, 503),
              reply=obj({"job_id": STRING, "metrics": array(obj()), "offset": INTEGER},
                        ["job_id", "metrics", "offset"]))
    def job_metrics(job_id):
        return service.job_metrics(job_id, offset=query_int("offset", 0, 0, MAX_OFFSET))

    @app.get("/job-config/<job_id>")
    @describe("The config snapshot the job runs with (YAML)", reply_type="text/yaml",
              statuses=(400, 403, 404, 503))
    def job_config(job_id):
        snapshot = service.job_config(job_id)
        bottle.response.content_type = "text/yaml; charset=utf-8"
        return snapshot

    @app.post("/resubmit/<job_id>")
    @describe("Submit a new job like this one (its spec and config snapshot)", statuses=(400, 403, 404, 409, 503, 507),
              body=obj({"target_host": SUBMIT_BODY["properties"]["target_host"], "priority": INTEGER},
                       additionalProperties=False),
              reply=obj({**SUBMITTED["properties"], "resubmitted_from": STRING}, ["job_id", "resubmitted_from"]))
    def resubmit(job_id):
        return service.resubmit(job_id, json_body())

    @app.get("/jobs")
    @describe("Jobs, newest first, filtered; a plain list, paging in headers", statuses=(400,),
              query={"status": STRING, "host": STRING, "limit": {**INTEGER, "minimum": 1, "maximum": MAX_PAGE},
                     "cursor": {**STRING, "description": "X-Next-Cursor of the previous page"},
                     "offset": {**INTEGER, "minimum": 0, "maximum": 10_000_000}, "submitter": STRING,
                     "q": {**STRING, "description": "text in the job's id, name or config"}},
              reply=array(obj({"job_id": STRING, "status": STATE, "host": nullable("string"),
                               "submitted_at": nullable("string"), "job_name": nullable("string"),
                               "submitted_by": STRING, "attempt": INTEGER, "job_info": obj()},
                              ["job_id", "status"])),
              headers={"X-Next-Cursor": STRING, "X-Total-Count": INTEGER})
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
    @describe("Cancel a queued or waiting job, or ask the owner of an active one to stop it",
              statuses=(400, 404, 409, 503),
              reply=obj({**MESSAGE["properties"], "status": STRING, "stop_requested": BOOLEAN}, ["message", "status"]))
    def stop(job_id):
        return service.stop(job_id, by=auth.current().user or bottle.request.remote_addr or "")

    @app.delete("/job/<job_id>")
    @describe("Delete a job, its entry and folder (an active one only with force)", statuses=(400, 404, 409, 503),
              query={"force": FLAG},
              reply=obj({**MESSAGE["properties"], "job_id": STRING, "previous_status": STATE},
                        ["message", "job_id"]))
    def delete(job_id):
        return service.delete(job_id, force=query_flag("force"))

    @describe("The job's log (plain text); a stream while following a running job", query=LOG_QUERY,
              reply_type="text/plain", statuses=(400, 403, 404, 503))
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
