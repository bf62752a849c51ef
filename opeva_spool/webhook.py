"""The optional webhook: a JSON POST to ``webhook_url`` when a job ends.

One background thread sends, from a bounded queue: the server only ever enqueues (never
waits on the receiver), and when the receiver is down for long the queue fills and the
newest notifications are dropped with a warning rather than memory growing. A failed POST
(connection error, timeout, any non-2xx) is retried with exponential backoff a bounded
number of times. Delivery is at most once per server run: notifications still queued at
shutdown are lost; a job that ended while the server was down is notified at its next start
(the event tracker's reconciliation reports it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from . import __version__
from .events import JOB
from .exceptions import SettingsError
from .index import IndexedJob
from .spool import Spool
from .states import JobState

log = logging.getLogger(__name__)

QUEUE_LIMIT = 1000
ATTEMPTS = 5
FIRST_BACKOFF_SECONDS = 0.5  # then 1, 2, 4: about 7.5 s of retrying before a notification is given up
TIMEOUT_SECONDS = 5.0


class WebhookSender:
    def __init__(self, url: str, spool: Spool, attempts: int = ATTEMPTS, first_backoff: float = FIRST_BACKOFF_SECONDS,
                 timeout: float = TIMEOUT_SECONDS):
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
            raise SettingsError(f"setting 'webhook_url' must be an http:// or https:// URL, not {url!r}")
        self.url = url
        self.spool = spool
        self.attempts = attempts
        self.first_backoff = first_backoff
        self.timeout = timeout
        self.delivered = 0
        self.failed = 0
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_LIMIT)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhook", daemon=True)
        self._thread.start()

    def on_job_event(self, event: dict, job: IndexedJob | None, live: bool) -> None:
        """Event listener: enqueue a notification for a job that reached a terminal state."""
        if event["type"] != JOB or job is None or not JobState(event["to"]).terminal:
            return
        try:
            self._queue.put_nowait((event, job.entry))
        except queue.Full:
            log.warning("webhook queue full (%d); notification of job %s dropped", QUEUE_LIMIT, event["job_id"])

    def payload(self, event: dict, entry) -> dict:
        """What is POSTed: the job's ending, with its attempt record's exit code, reason and times."""
        record = self.spool.read_attempt(entry) or {}
        return {
            "event": "job.ended",
            "job_id": event["job_id"],
            "status": event["to"],
            "host": event["host"],
            "attempt": event["attempt"],
            "exit_code": record.get("exit_code"),
            "reason": record.get("reason"),
            "started_at": record.get("started_at"),
            "ended_at": record.get("ended_at") or event["at"],
            "event_id": event["id"],
            "at": event["at"],
        }

    def _run(self) -> None:
        while not self._stopping.is_set():
            item = self._queue.get()
            if item is None:  # close() wakes us
                continue
            event, entry = item
            try:
                body = json.dumps(self.payload(event, entry)).encode()
            except OSError as exc:  # the record unreadable: still tell what is known
                log.warning("webhook for job %s: attempt record unreadable: %s", event["job_id"], exc)
                body = json.dumps({"event": "job.ended", "job_id": event["job_id"], "status": event["to"]}).encode()
            if self._deliver(body):
                self.delivered += 1
            else:
                self.failed += 1
                log.warning("webhook for job %s given up after %d attempts", event["job_id"], self.attempts)

    def _deliver(self, body: bytes) -> bool:
        backoff = self.first_backoff
        for attempt in range(1, self.attempts + 1):
            request = urllib.request.Request(self.url, data=body, method="POST", headers={
                "Content-Type": "application/json", "User-Agent": f"opeva-spool/{__version__}"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    response.read()
                return True
            except (urllib.error.URLError, OSError, ValueError) as exc:  # HTTPError (non-2xx) is a URLError
                log.info("webhook POST %d/%d to %s failed: %s", attempt, self.attempts, self.url, exc)
            if attempt == self.attempts or self._stopping.wait(backoff):
                return False
            backoff *= 2
        return False

    def close(self, timeout: float = 2.0) -> None:
        self._stopping.set()
        # Race: with the queue full the wake-up does not fit; then the sender is busy and sees
        # _stopping between two notifications (or in its backoff wait) anyway.
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(timeout)
