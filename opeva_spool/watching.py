"""Filesystem events as hints: watchdog observers over single directories.

``native`` uses inotify, which only sees this host's writes; ``polling`` compares
listings and also sees writes from other NFS hosts (subject to attribute caching).
Either way events only wake someone up early: every consumer also rescans on a timer.
"""

import logging

from watchdog.events import FileSystemEventHandler
from watchdog.observers.inotify import InotifyEmitter, InotifyObserver
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


class _PromptInotifyEmitter(InotifyEmitter):
    """inotify without watchdog's move pairing, which only delays us.

    watchdog holds each IN_MOVED_FROM for 0.5 s, hoping to pair it with an IN_MOVED_TO of
    the same watch, and every later event of that watch waits behind it (its queue is
    FIFO): a claim into running/ within 0.5 s of a job leaving it was seen 0.5 s late.
    Our watches are single directories and entries move between directories, never
    within one, so no pair is ever made: a moved-from is handed on at once, as a delete.
    """

    def on_thread_start(self):
        super().on_thread_start()
        try:
            self._inotify._move_event_grouper._queue.delay = 0  # watchdog's internals: see the fallback
        except AttributeError:  # another watchdog version: events still arrive, only later
            log.debug("watchdog's move pairing delay could not be turned off")


class _PromptInotifyObserver(InotifyObserver):
    def __init__(self):
        super().__init__()
        self._emitter_class = _PromptInotifyEmitter


class DirectoryWatcher:
    def __init__(self, kind="native", poll_seconds=POLLING_OBSERVER_SECONDS):
        if kind == "polling":
            self.observer = PollingObserver(timeout=min(poll_seconds, POLLING_OBSERVER_SECONDS))
        else:
            self.observer = _PromptInotifyObserver()
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
