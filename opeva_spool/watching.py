"""Filesystem events as hints: watchdog observers over single directories.

``native`` uses inotify, which only sees this host's writes; ``polling`` compares
listings and also sees writes from other NFS hosts (subject to attribute caching).
Either way events only wake someone up early: every consumer also rescans on a timer.
"""

import logging

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

log = logging.getLogger(__name__)

POLLING_OBSERVER_SECONDS = 1.0


class _Forward(FileSystemEventHandler):
    def __init__(self, callback):
        self.callback = callback

    def on_any_event(self, event):
        if event.event_type in ("opened", "closed", "closed_no_write"):
            return
        try:
            self.callback(event)
        except Exception:  # a bad callback must not kill the observer thread
            log.exception("event handler failed for %s", event)


class DirectoryWatcher:
    def __init__(self, kind="native", poll_seconds=POLLING_OBSERVER_SECONDS):
        if kind == "polling":
            self.observer = PollingObserver(timeout=min(poll_seconds, POLLING_OBSERVER_SECONDS))
        else:
            self.observer = Observer()
        self.observer.daemon = True
        self._watched = set()

    def watch(self, path, callback):
        """Call ``callback(event)`` for changes directly inside ``path`` (not below)."""
        if path in self._watched:
            return
        self._watched.add(path)
        self.observer.schedule(_Forward(callback), path, recursive=False)

    def start(self):
        self.observer.start()

    def stop(self):
        if self.observer.is_alive():
            self.observer.unschedule_all()  # first, so no emitter queues events into a stopping observer
            self.observer.stop()
            self.observer.join(5)
