"""The server: the HTTP API over the spool, its index and maintenance, and the embedded worker."""

import logging
import os
import threading

import waitress

from . import fsio
from .agent import Agent
from .api import app as api_app
from .api import configs as configs_api
from .api import jobs as jobs_api
from .api import sites as sites_api
from .api import system as system_api
from .configs import WriteMode
from .hosts import LivenessMonitor
from .inbox import Inbox
from .index import JobIndex
from .runtimes import make_runtime
from .service import JobService
from .sitedata.mongo import SiteData
from .spool import QUEUED, TERMINAL_DIRS, Entry, Location, Spool
from .watching import DirectoryWatcher

log = logging.getLogger(__name__)

EMBEDDED_HOST = "local"
# done/ can hold every job ever run; it is listed in full only every this many scans.
FULL_SCAN_EVERY = 12
WAITRESS_THREADS = 8


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
        self.spool = Spool(settings.shared_root)
        self.spool.ensure_layout()
        self.index = JobIndex(self.spool)
        self.index.sync(include_done=True)
        removed = self.spool.recover_orphans(self.index.job_ids())
        if removed:
            log.warning("moved %d half-published job folders to the trash: %s", len(removed), removed[:10])
        self.jobs = JobService(settings, self.spool, self.index, on_publish=self._wake_embedded_worker)
        # A requeue renames the entry (attempt + 1): the index learns the new name at once.
        self.monitor = LivenessMonitor(self.spool, settings.hosts, settings.offline_after, on_moved=self.index.place)
        self.inbox = Inbox(self.spool, self.jobs)
        sitedata = SiteData(settings)
        ctx = api_app.Context(settings, spool=self.spool, index=self.index, jobs=self.jobs, monitor=self.monitor,
                              sitedata=sitedata, dependency_checks=dependency_checks(settings, sitedata))
        self.app = api_app.make_app(ctx, [jobs_api, configs_api, system_api, sites_api])
        self.agent = None
        if settings.embedded_worker:
            self.agent = Agent(settings, self.spool, make_runtime(settings), host=EMBEDDED_HOST)
        self.watcher = DirectoryWatcher(settings.observer, settings.scan_interval)
        self.stopping = threading.Event()
        self.nudge = threading.Event()
        self._maintenance = threading.Thread(target=self._maintain, name="maintenance", daemon=True)
        self._httpd = None

    # ----- events and maintenance ---------------------------------------------------------

    def _wake_embedded_worker(self, entry):
        # The server published it, so it can tell its own worker at once: watchdog holds
        # inotify events for up to 0.5 s behind any rename out of queued/ (move pairing).
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

    def maintain_once(self, rounds=0):
        """One maintenance round. Each step runs on its own: one failing (a transient NFS error,
        or an item no step expected) is logged and the rest of the round still runs."""
        steps = (
            ("watch", self._watch_entry_dirs),
            ("sync", lambda: self.index.sync(include_done=rounds % FULL_SCAN_EVERY == 0)),
            ("observe hosts", self.monitor.observe),
            ("reclaim offline hosts", self.monitor.reclaim_offline),
            ("inbox", self.inbox.scan),
            ("unreadable entries", self._set_aside_unreadable_entries),
            ("trash", self.spool.empty_trash),
            ("stop requests", self._clear_answered_stop_requests),
        )
        for name, step in steps:
            try:
                step()
            except Exception:
                log.exception("maintenance step %r failed; the round goes on", name)

    def _set_aside_unreadable_entries(self):
        for entry in self.spool.reject_unreadable_queued():
            self.index.vacate(Location(QUEUED), entry)

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
        rounds = 1  # the constructor did the first full sync
        while not self.stopping.is_set():
            self.nudge.wait(self.settings.scan_interval)
            self.nudge.clear()
            if self.stopping.is_set():
                return
            try:
                self.maintain_once(rounds)
            except Exception:  # maintenance must keep running through transient NFS errors
                log.exception("maintenance round failed")
            rounds += 1

    # ----- lifecycle ----------------------------------------------------------------------

    def start(self):
        """Start watching, maintenance and the embedded worker (not the HTTP listener)."""
        self._watch_entry_dirs()
        self.watcher.watch(self.spool.spool_dir, self._on_spool_dir_event)
        self.watcher.watch(self.spool.inbox_dir, self._on_spool_dir_event)
        self.watcher.start()
        self._maintenance.start()
        if self.agent:
            self.agent.start()
        self.inbox.scan()
        return self

    def serve_forever(self):
        self._httpd = waitress.create_server(self.app, host=self.settings.bind, port=self.settings.port,
                                             threads=WAITRESS_THREADS)
        log.info("serving on http://%s:%s, shared root %s", self.settings.bind, self._httpd.effective_port,
                 self.spool.root)
        try:
            self._httpd.run()
        finally:
            self.close()

    def close(self):
        self.stopping.set()
        self.nudge.set()
        if self._httpd is not None:
            self._httpd.close()
        self.watcher.stop()
        if self.agent:
            self.agent.shutdown(timeout=self.settings.stop_grace + 5)

    def submit_demo(self):
        """The quick start's demo job: a simulated training run on the embedded worker."""
        self.jobs.configs.write("demo.yaml", DEMO_CONFIG, WriteMode.SAME)
        return self.jobs.submit({"config_path": "demo.yaml", "target_host": EMBEDDED_HOST,
                                 "job_name": "demo-training", "submitted_by": "quick-start"})


DEMO_CONFIG = """\
experiment: {name: demo, run_name: quick-start, logging: {log_level: INFO, mlflow: false}}
simulator: {dataset_path: /data/datasets/demo/schema.json, central_agent: false, reward_function: RewardFunction}
algorithm: {seed: 22, hyperparameters: {checkpoint_interval: 20}}
demo: {episodes: 3, steps: 40, step_seconds: 0.1}
"""
