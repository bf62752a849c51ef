"""The audit trail: one JSON line per mutating request in ``<root>/audit/YYYY-MM-DD.jsonl`` (UTC days).

A line says who (the token's user; null with auth off or for a request refused before it was
known), what (method, route rule and path), which job or sweep, from where (the connection's peer),
the result (HTTP status) and when. Lines are appended with O_APPEND in one write each, so lines of
concurrent requests of this server never interleave. Writing is best effort: a failure is logged
and never fails the request, since refusing work because the log is unwritable would let a full
share stop every change (docs/security.md).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping

from .jobs import utc_now_precise

log = logging.getLogger(__name__)

AUDIT_DIR = "audit"
AUDIT_SUFFIX = ".jsonl"
AUDIT_FILE_MODE = 0o640
AUDIT_DIR_MODE = 0o750
# Keys of a route's URL arguments and of a reply that name what a request acted on.
TARGET_KEYS = ("job_id", "sweep_id", "host", "file_name", "name", "site", "worker_id")


class AuditLog:
    def __init__(self, root: str) -> None:
        self.directory = os.path.join(root, AUDIT_DIR)

    def record(self, *, user: str | None, method: str, route: str, path: str, remote: str | None, status: int,
               targets: Mapping[str, object]) -> None:
        line = {"at": utc_now_precise(), "user": user, "method": method, "route": route, "path": path,
                "remote": remote, "status": status,
                **{key: targets[key] for key in TARGET_KEYS if targets.get(key) is not None}}
        data = (json.dumps(line, sort_keys=True, default=str) + "\n").encode()
        # Opened per line (no descriptor to keep across days, or across an operator moving the folder).
        path = os.path.join(self.directory, time.strftime("%Y-%m-%d", time.gmtime()) + AUDIT_SUFFIX)
        try:
            os.makedirs(self.directory, mode=AUDIT_DIR_MODE, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, AUDIT_FILE_MODE)
            try:
                os.write(fd, data)  # one write with O_APPEND: the line lands whole at the end
            finally:
                os.close(fd)
        except OSError as exc:
            log.error("cannot append to the audit log %s (%s): %s", path, exc.strerror, data.decode().strip())
