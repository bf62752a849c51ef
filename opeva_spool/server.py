"""The server: the HTTP API over the spool, its index and maintenance, and the embedded worker."""

import logging
import os
import threading
import time

import waitress
from waitress import wasyncore

from . import fsio, sweeps
from .agent import Agent
from .api import agent as agent_api
from .api import app as api_app
from .api import configs as configs_api
from .api import events as events_api
from .api import jobs as jobs_api
from .api import openapi as openapi_api
from .api import queue as queue_api
from .api import sites as sites_api
from .api import sweeps as sweeps_api
from .api import system as system_api
from .api import ui as ui_api
from .api import usage as usage_api
from .dependencies import DependencyResolver
from .events import EventBus, EventJournal, TransitionTracker
from .fairshare import FairShare
from .hosts import LivenessMonitor
from .inbox import Inbox
from .index import JobIndex, MtimeGate
from .jobs import EMBEDDED_HOST
from .metrics import Metrics
from .queue import QueueView
from .runtimes import make_runtime
from .service import JobService
from .sitedata.mongo import SiteData
from .sitedata.store import DatasetStore
from .spool import QUEUED, TERMINAL_DIRS, UNREADABLE_ENTRY_SETTLE_SECONDS, Entry, Location, Spool
from .streams import StreamGate, StreamingDispatcher
from .watching import DirectoryWatcher
from .webhook import WebhookSender
from .workers import WorkerService

log = logging.getLogger(__name__)

# The archive pass (archive.py) runs at most this often, and archives at most ARCHIVE_BATCH jobs a round: a
# backlog (the first pass over a big tree) is worked off a batch per maintenance round, not in one long round.
ARCHIVE_EVERY_SECONDS = 3600.0
ARCHIVE_BATCH = 50_000
WAITRESS_THREADS = 16
# Connections beyond the open streams (waitress's own default limit).
ORDINARY_CONNECTIONS = 100
# At shutdown, in-flight requests get this long to finish before their connections are closed.
DRAIN_SECONDS = 5.0
DRAIN_POLL_SECONDS = 0.05


def dependency_checks(settings, sitedata):
    """Reachability checks for /health, only for what is configured."""
    checks = {}
    if settings.mongo_uri:
        checks["mongodb"] = sitedata.mongo.ping
    if settings.runtime == "docker" or settings.docker_host:
        checks["docker"] = make_runtime(settings).check
    return checks


class Server:
    def __init__(self, settings):
        self.settings = settings
        self.spool = Spool(settings.shared_root, settings.commit_flush)
        self.spool.ensure_layout()
        # First: a committed sweep that a crash left half moved out is completed before the spool is listed,
        # and before recover_orphans could take a job folder whose entry is still in the sweep for an orphan.
        rolled = sweeps.recover(self.spool)
        if rolled:
            log.warning("published %d jobs of sweeps interrupted by a crash", len(rolled))
        self.index = JobIndex(self.spool)
        self.index.sync(include_done=True)  # loads the archive's month files first
        removed = self.spool.recover_orphans(self.index.unknown_among)
        if removed:
            log.warning("moved %d half-published job folders to the trash: %s", len(removed), removed[:10])
        self.fairshare = FairShare()
        self.jobs = JobService(settings, self.spool, self.index, on_publish=self._wake_embedded_worker,
                               fairshare=self.fairshare)
        self._upgrade_legacy_entries()
        indexed = {job.entry.job_id: job for job in self.index.jobs()}
        # The submitter of a queued job is read through JobService.meta, which keeps it for list filters too.
        self.fairshare.restore(((job.entry, job.location.kind) for job in indexed.values()),
                               lambda entry, kind: self.jobs.meta(indexed[entry.job_id])[0])
        self.fairshare.restore_clock(self.index.archive.max_ranks())
        # A requeue renames the entry (attempt + 1): the index learns the new name at once.
        self.monitor = LivenessMonitor(self.spool, settings.hosts, settings.offline_after, on_moved=self.index.place)
        self.jobs.queue = QueueView(self.spool, self.monitor)
        self.sweeps = sweeps.SweepService(self.spool, self.index, self.jobs)
        self.inbox = Inbox(self.spool, self.jobs, self.sweeps)
        sitedata = SiteData(settings)
        datasets = DatasetStore(settings, sitedata)
        self.events = EventBus(EventJournal(os.path.join(self.spool.spool_dir, "events")))
        self.metrics = Metrics(self.index, self.monitor, self.events, datasets)
        self.webhook = WebhookSender(settings.webhook_url, self.spool) if settings.webhook_url else None
        self.dependencies = DependencyResolver(self.spool, self.index, on_release=self._wake_embedded_worker)
        listeners = (self.metrics.on_job_event, self.dependencies.on_job_event) + (
            (self.webhook.on_job_event,) if self.webhook else ())
        self.transitions = TransitionTracker(self.events, self.index, self.monitor, listeners)
        # Before anything else can change the index: what happened while the server was down comes first.
        self.transitions.reconcile()
        self.index.on_change = self._job_changed
        self.index.on_archived = self.transitions.archived
        self._archive_due = 0.0  # monotonic time of the next archive pass
        self._queued_gate = MtimeGate(int((UNREADABLE_ENTRY_SETTLE_SECONDS + 1) * 1e9))
        ctx = api_app.Context(settings, spool=self.spool, index=self.index, jobs=self.jobs, monitor=self.monitor,
                              sitedata=sitedata, datasets=datasets, events=self.events, metrics=self.metrics,
                              sweeps=self.sweeps, dependency_checks=dependency_checks(settings, sitedata),
                              workers=WorkerService(settings, self.spool, self.index, self.jobs, self.monitor))
        self.app = api_app.make_app(ctx, [jobs_api, queue_api, configs_api, system_api, sites_api, events_api, ui_api,
                                          sweeps_api, usage_api, agent_api, openapi_api])
        self.agent = None
        if settings.embedded_worker:
            self.agent = Agent(settings, self.spool, make_runtime(settings), host=EMBEDDED_HOST)
        self.watcher = DirectoryWatcher(settings.observer, settings.scan_interval)
        self.stopping = threading.Event()
        self.nudge = threading.Event()
        self._maintenance = threading.Thread(target=self._maintain, name="maintenance", daemon=True)
        self._active_watch = threading.Thread(target=self.transitions.watch_active, args=(self.stopping,),
                                              name="active-jobs", daemon=True)
        self._resolver = threading.Thread(target=self.dependencies.run, args=(self.stopping,), name="dependencies",
                                          daemon=True)
        # A plain flag, not an Event: shutdown() runs in signal handlers, and Event.set takes a lock
        # that the handler of an earlier signal, interrupted inside Event.set, may be holding.
        self._shutdown_requested = False
        self._httpd = None
        self.streams = None  # the StreamGate, once listening

    # ----- events and maintenance ---------------------------------------------------------

    def _job_changed(self, job_id, job):
        self.fairshare.observe(job_id, job.entry if job else None, job.location.kind if job else None)
        self.transitions.job_changed(job_id, job)

    def _upgrade_legacy_entries(self):
        for entry in self.spool.upgrade_legacy_queued():
            self.index.place(Location(QUEUED), entry)

    def _wake_embedded_worker(self, entry):
        # The server published it, so it can tell its own worker at once, before the worker's
        # watcher reports the entry (a thread hop with inotify, up to a poll with polling).
        if self.agent is not None and self.agent.wants(entry.name):
            self.agent.wake.set()

    def _on_entry_event(self, event):
        """Feed the index from an event: dest paths are placements, src paths departures."""
        if event.is_directory:
            return
        dest = getattr(event, "dest_path", "") or ""
        arrived = dest or (event.src_path if event.event_type in ("created", "modified") else "")
        departed = event.src_path if event.event_type in ("deleted", "moved") else ""
        for path, arriving in ((arrived, True), (departed, False)):
            if not path:
                continue
            directory, name = os.path.split(path)
            entry, location = Entry.parse(name), self.spool.location_of_dir(directory)
            if entry is None or location is None:
                continue
            if arriving:
                self.index.place(location, entry)
            else:
                self.index.vacate(location, entry)

    def _on_spool_dir_event(self, event):
        # A new host's running/ appears when its agent first starts: watch it too.
        self.nudge.set()

    def _watch_entry_dirs(self):
        self.watcher.watch(self.spool.queued_dir, self._on_entry_event)
        for host in self.spool.worker_hosts():
            self.watcher.watch(self.spool.running_dir(host), self._on_entry_event)
        if self.settings.observer == "native":
            # Polling done/ (every job ever run) would cost a listing per second; leaving a
            # running/ dir is enough of a hint there, and the full scan is the safety net.
            for state in TERMINAL_DIRS:
                self.watcher.watch(self.spool.done_path(state), self._on_entry_event)

    def maintain_once(self):
        """One maintenance round. Each step runs on its own: one failing (a transient NFS error,
        or an item no step expected) is logged and the rest of the round still runs."""
        steps = (
            ("watch", self._watch_entry_dirs),
            ("sync", self.index.sync),
            ("observe hosts", self.monitor.observe),
            ("reclaim offline hosts", self.monitor.reclaim_offline),
            ("sweeps", self.sweeps.maintain),
            ("inbox", self.inbox.scan),
            ("queued entries", self._check_queued_entries),
            ("trash", self.spool.empty_trash),
            ("stop requests", self._clear_answered_stop_requests),
            ("events", self.transitions.maintain),
            ("dependencies", self.dependencies.maintain),
            ("archive", self._archive),
        )
        for name, step in steps:
            try:
                step()
            except Exception:
                log.exception("maintenance step %r failed; the round goes on", name)

    def _archive(self):
        """Archive and delete what is due (rate-limited: ARCHIVE_EVERY_SECONDS, sooner while a backlog remains)."""
        settings = self.settings
        if time.monotonic() < self._archive_due or not (settings.archive_after_days > 0
                                                        or settings.delete_after_days > 0):
            return
        # Before the pass: one that fails (a full share) is tried again at the next hour, not every round.
        self._archive_due = time.monotonic() + ARCHIVE_EVERY_SECONDS
        outcome = self.jobs.archiver.run(settings.archive_after_days, settings.delete_after_days, limit=ARCHIVE_BATCH)
        if outcome.archived or outcome.deleted:
            log.info("archived %d ended jobs, deleted %d past delete_after_days", len(outcome.archived),
                     len(outcome.deleted))
        if outcome.remaining:
            self._archive_due = 0.0  # the next batch at the next round

    def _check_queued_entries(self):
        """Set aside unreadable entries and upgrade legacy names in queued/, when it changed: an entry that arrived
        is looked at once it is UNREADABLE_ENTRY_SETTLE_SECONDS old, so queued/ is looked at until its mtime is."""
        if not self._queued_gate.changed(self.spool.queued_dir):
            return
        for entry in self.spool.reject_unreadable_queued():
            self.index.vacate(Location(QUEUED), entry)
        self._upgrade_legacy_entries()

    def _clear_answered_stop_requests(self):
        for name in fsio.listdir(self.spool.requests_dir):
            job_id = name[: -len(".stop")] if name.endswith(".stop") else None
            if not job_id:
                continue
            try:
                job = self.index.get(job_id) if job_id in self.index else None
                if job is None or self.index.state_of(job).terminal:
                    self.spool.clear_stop_request(job_id)
            except OSError as exc:  # this one request is looked at again next round
                log.warning("stop request %s: %s", name, exc)

    def _maintain(self):
        while not self.stopping.is_set():
            self.nudge.wait(self.settings.scan_interval)
            self.nudge.clear()
            if self.stopping.is_set():
                return
            try:
                self.maintain_once()
            except Exception:  # maintenance must keep running through transient NFS errors
                log.exception("maintenance round failed")

    # ----- lifecycle ----------------------------------------------------------------------

    def start(self):
        """Start the embedded worker, watching and maintenance (not the HTTP listener)."""
        if self.agent:
            self.agent.start()  # first: a refusal (another agent for this root and host) starts nothing else
        self._watch_entry_dirs()
        self.watcher.watch(self.spool.spool_dir, self._on_spool_dir_event)
        self.watcher.watch(self.spool.inbox_dir, self._on_spool_dir_event)
        self.watcher.start()
        self._maintenance.start()
        self._active_watch.start()
        self._resolver.start()
        self.inbox.scan()
        return self

    def listen(self, port=None):
        """Bind the HTTP listener (``port`` 0: any free one) and return the port it got."""
        settings = self.settings
        dispatcher = StreamingDispatcher(WAITRESS_THREADS)
        app = StreamGate(self.app, settings.max_streams, settings.max_streams_per_client, closing=self.stopping)
        self._httpd = waitress.create_server(
            app, host=settings.bind, port=settings.port if port is None else port, threads=WAITRESS_THREADS,
            _dispatcher=dispatcher,
            # Lookahead 1: waitress keeps reading a busy connection, so it sees a follower hang up.
            channel_request_lookahead=1,
            connection_limit=settings.max_streams + ORDINARY_CONNECTIONS,
            asyncore_use_poll=True,  # select() cannot watch descriptors above 1023
        )
        self.streams = app
        return self._httpd.effective_port

    def serve_forever(self):
        """Serve HTTP until ``shutdown`` is called (from a signal handler or another thread), then close."""
        if self._httpd is None:
            self.listen()
        httpd = self._httpd
        log.info("serving on http://%s:%s, shared root %s", self.settings.bind, httpd.effective_port, self.spool.root)
        try:
            while not self._shutdown_requested:
                self._loop_once(httpd, httpd.adj.asyncore_loop_timeout)
        finally:
            self._close_http(httpd)
            self.close()

    def shutdown(self):
        """Make ``serve_forever`` return. Safe in a signal handler, also one interrupting another:
        it takes no lock, only sets a flag and writes to a pipe."""
        self._shutdown_requested = True
        # The loop may sit in poll(); the trigger's pipe wakes it (a bare os.write, no lock taken).
        # Once stopping is set the loop has returned, and the trigger may be closed already.
        if self._httpd is not None and not self.stopping.is_set():
            self._httpd.pull_trigger()

    def _close_http(self, httpd):
        """Stop accepting, let in-flight requests finish (at most DRAIN_SECONDS), then close every connection.

        This runs in the thread that ran the loop: closing sockets from a signal handler
        while that loop waits on them is what made waitress die with EBADF.
        """
        deadline = time.monotonic() + DRAIN_SECONDS
        # Not httpd.close(): that closes the trigger too, which finishing requests still pull.
        wasyncore.dispatcher.close(httpd)
        self.stopping.set()  # streams see it within a poll and end their responses
        self.events.wake()  # event streams wait for events, not on a poll: tell them now
        while time.monotonic() < deadline and any(
                channel.requests or channel.total_outbufs_len for channel in list(httpd.active_channels.values())):
            self._loop_once(httpd, DRAIN_POLL_SECONDS)
        httpd.task_dispatcher.shutdown(timeout=max(0.0, deadline - time.monotonic()))
        wasyncore.close_all(httpd._map)

    @staticmethod
    def _loop_once(httpd, timeout):
        """One round of waitress's socket loop (what its run() repeats), so that a flag can end it between rounds."""
        wasyncore.loop(timeout=timeout, map=httpd._map, use_poll=httpd.adj.asyncore_use_poll, count=1)

    def close(self):
        """Stop maintenance, watching and the embedded worker (its jobs end as at an agent's shutdown)."""
        self.stopping.set()
        self.nudge.set()
        self.watcher.stop()
        self.dependencies.wake()  # its thread sees stopping now instead of after its idle wait
        if self.agent:
            self.agent.shutdown(timeout=self.settings.stop_grace + 5)
        if self.webhook:
            self.webhook.close()
        self.events.close()  # last: the agent's last moves above are still journaled
