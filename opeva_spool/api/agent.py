"""OPEVA's HTTP worker protocol: heartbeat, next-job, job-status (workers.WorkerService; docs/worker-protocol.md)."""

import bottle

from .app import json_body
from .openapi import describe

WORKER_ID = {"type": "string", "description": "the worker's host name (names.HOST)"}
OK_REPLY = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
JOB_PAYLOAD = {
    "type": "object",
    "properties": {
        "job_id": {"type": "string"},
        "config_path": {"type": ["string", "null"], "description": "relative to the share; the container reads "
                                                                   "/data/<config_path>"},
        "job_name": {"type": "string"},
        "image": {"type": "string"},
        "command": {"type": "string"},
        "container_name": {"type": "string"},
        "env": {"type": "object", "additionalProperties": {"type": "string"}},
        "attempt": {"type": "integer", "description": "echo it in job-status"},
        "gpus": {"type": "array", "items": {"type": "string"}},
        "offline_after": {"type": "number", "description": "seconds of silence after which the job is requeued"},
    },
    "required": ["job_id", "config_path", "attempt"],
}


def install(app, ctx):
    workers = ctx.workers

    @app.post("/api/agent/heartbeat", role="worker")
    @describe("An HTTP worker's heartbeat: registers the worker as a host and keeps it online",
              body={"type": "object", "properties": {"worker_id": WORKER_ID, "info": {"type": "object"}},
                    "required": ["worker_id"]},
              reply=OK_REPLY, statuses=(400, 401, 403, 409, 413))
    def heartbeat():
        body = json_body()
        return workers.heartbeat(body.get("worker_id"), body.get("info"))

    @app.post("/api/agent/next-job", role="worker")
    @describe("Claim the next job for an HTTP worker: 200 with its payload, 204 when nothing fits",
              body={"type": "object", "properties": {"worker_id": WORKER_ID}, "required": ["worker_id"]},
              reply=JOB_PAYLOAD, statuses=(204, 400, 401, 403, 404, 409, 413))
    def next_job():
        payload = workers.next_job(json_body().get("worker_id"))
        if payload is None:
            bottle.response.status = 204
            return ""
        return payload

    @app.post("/api/agent/job-status", role="worker")
    @describe("An HTTP worker reports its attempt: running (also periodically) or how it ended; idempotent",
              body={"type": "object", "properties": {
                  "job_id": {"type": "string"},
                  "status": {"type": "string", "enum": ["running", "finished", "failed", "stopped", "canceled"]},
                  "worker_id": WORKER_ID,
                  "attempt": {"type": "integer", "minimum": 1},
                  "container_id": {"type": ["string", "null"]},
                  "container_name": {"type": ["string", "null"]},
                  "exit_code": {"type": ["integer", "null"]},
                  "error": {"type": ["string", "null"]},
                  "details": {"type": ["object", "null"]}}, "required": ["job_id", "status"]},
              reply=OK_REPLY, statuses=(400, 401, 403, 404, 409, 413))
    def job_status():
        return workers.job_status(json_body())
