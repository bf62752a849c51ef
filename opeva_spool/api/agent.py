"""OPEVA's HTTP worker protocol: heartbeat, next-job, job-status (workers.WorkerService; docs/worker-protocol.md)."""

import bottle

from ..workers import STATUSES
from .app import json_body
from .openapi import BOOLEAN, INTEGER, NUMBER, STRING, array, describe, nullable, obj

WORKER_ID = {**STRING, "description": "the worker's host name (names.HOST)"}
OK_REPLY = obj({"ok": BOOLEAN}, ["ok"])
JOB_PAYLOAD = obj({
    "job_id": STRING,
    "config_path": {**nullable("string"), "description": "relative to the share; the container reads "
                                                         "/data/<config_path>"},
    "job_name": STRING,
    "image": STRING,
    "command": STRING,
    "container_name": STRING,
    "env": {"type": "object", "additionalProperties": STRING},
    "attempt": {**INTEGER, "description": "echo it in job-status"},
    "gpus": array(STRING),
    "offline_after": {**NUMBER, "description": "seconds of silence after which the job is requeued"},
}, ["job_id", "config_path", "attempt"])

def install(app, ctx):
    workers = ctx.workers

    @app.post("/api/agent/heartbeat", role="worker")
    @describe("An HTTP worker's heartbeat: registers the worker as a host and keeps it online",
              body=obj({"worker_id": WORKER_ID, "info": obj()}, ["worker_id"]),
              reply=OK_REPLY, statuses=(400, 401, 403, 409, 413))
    def heartbeat():
        body = json_body()
        return workers.heartbeat(body.get("worker_id"), body.get("info"))

    @app.post("/api/agent/next-job", role="worker")
    @describe("Claim the next job for an HTTP worker: 200 with its payload, 204 when nothing fits",
              body=obj({"worker_id": WORKER_ID}, ["worker_id"]),
              reply=JOB_PAYLOAD, statuses=(204, 400, 401, 403, 404, 409, 413))
    def next_job():
        payload = workers.next_job(json_body().get("worker_id"))
        if payload is None:
            bottle.response.status = 204
            return ""
        return payload

    @app.post("/api/agent/job-status", role="worker")
    @describe("An HTTP worker reports its attempt: running (also periodically) or how it ended; idempotent",
              body=obj({"job_id": STRING, "status": {**STRING, "enum": list(STATUSES)}, "worker_id": WORKER_ID,
                        "attempt": {**INTEGER, "minimum": 1}, "container_id": nullable("string"),
                        "container_name": nullable("string"), "exit_code": nullable("integer"),
                        "error": nullable("string"), "details": nullable("object")}, ["job_id", "status"]),
              reply=OK_REPLY, statuses=(400, 401, 403, 404, 409, 413))
    def job_status():
        return workers.job_status(json_body())
