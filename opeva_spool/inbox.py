"""Job folders dropped onto the share: ``spool/inbox/<folder>/job.json`` (+ optional config).

A folder is accepted exactly like ``POST /run-simulation`` with job.json as the body and
the folder's name as the job id (unless job.json names one). The id being fixed makes
ingestion idempotent: if the server dies after publishing but before removing the
folder, the next scan finds the job already there and only removes the folder.
An invalid folder is moved to ``spool/rejected/`` with a ``reason.json`` and never
blocks the rest of the inbox.
"""

import logging
import os
import time
import uuid

from . import fsio, names
from .exceptions import Conflict, SpoolError
from .jobs import utc_now
from .service import parse_config_text

log = logging.getLogger(__name__)

JOB_FILE = "job.json"
CONFIG_FILES = ("config.yaml", "config.yml")
# A job.json that does not parse may still be being written by a non-atomic copy.
SETTLE_SECONDS = 5.0


class Inbox:
    def __init__(self, spool, jobs):
        self.spool = spool
        self.jobs = jobs

    def scan(self):
        """Ingest every complete folder; returns {folder: job_id or reason}."""
        outcome = {}
        for folder in sorted(fsio.listdir(self.spool.inbox_dir)):
            path = os.path.join(self.spool.inbox_dir, folder)
            if not os.path.isdir(path):
                continue
            try:
                outcome[folder] = self.ingest(folder, path)
            except OSError as exc:  # the folder moved or vanished under us: next scan decides
                log.warning("inbox folder %s: %s", folder, exc)
        return {folder: result for folder, result in outcome.items() if result is not None}

    def ingest(self, folder, path):
        job_file = os.path.join(path, JOB_FILE)
        body = fsio.read_json(job_file)
        if body is None:
            if not os.path.exists(job_file) or _age(job_file) < SETTLE_SECONDS:
                if _age(path) < SETTLE_SECONDS:
                    return None  # still arriving
                return self.reject(folder, path, f"no readable {JOB_FILE} in the folder")
            return self.reject(folder, path, f"{JOB_FILE} is not valid JSON")
        if not isinstance(body, dict):
            return self.reject(folder, path, f"{JOB_FILE} must hold a JSON object")
        job_id = body.get("job_id") or folder
        try:
            names.job_id(job_id)
            body = dict(body, **self._config_from_folder(path, body))
            response = self.jobs.submit(body, origin="inbox", job_id=job_id)
        except Conflict as exc:
            if not self._already_ingested(job_id):
                return self.reject(folder, path, exc.detail)
            response = {"job_id": job_id}
        except SpoolError as exc:
            return self.reject(folder, path, exc.detail)
        self.spool.trash(path)
        log.info("inbox folder %s accepted as job %s", folder, job_id)
        return response["job_id"]

    def _config_from_folder(self, path, body):
        """A config file shipped inside the folder becomes an inline config (saved as <job_id>.yaml)."""
        if body.get("config") is not None or body.get("config_path"):
            return {}
        for name in CONFIG_FILES:
            candidate = os.path.join(path, name)
            if os.path.exists(candidate):
                with open(candidate, encoding="utf-8") as handle:
                    return {"config": parse_config_text(handle.read(), name)}
        return {}

    def _already_ingested(self, job_id):
        info = fsio.read_json_object(self.spool.folder(job_id).job_info)
        return bool(info) and info.get("origin") == "inbox"

    def reject(self, folder, path, reason):
        target = os.path.join(self.spool.rejected_dir, f"{folder}.{uuid.uuid4().hex[:8]}")
        os.rename(path, target)
        fsio.atomic_write_json(os.path.join(target, "reason.json"),
                               {"folder": folder, "reason": reason, "rejected_at": utc_now()})
        log.warning("inbox folder %s rejected: %s", folder, reason)
        return f"rejected: {reason}"


def _age(path):
    try:
        return time.time() - os.stat(path).st_mtime
    except OSError:
        return 0.0

