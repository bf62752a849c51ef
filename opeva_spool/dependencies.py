"""Dependencies between jobs: a job submitted with ``after`` or ``after_any`` waits in spool/waiting/.

``decide`` is the rule, a pure function of the dependencies' states:
- every job of ``after`` must end ``finished``; one that ends otherwise (failed, stopped,
  canceled) or is deleted cancels the waiting job with reason ``dependency_failed``;
- every job of ``after_any`` must end, however; a deleted one has ended too;
- when nothing holds the job any more it is released into queued/, else it waits.

``DependencyResolver`` applies it. Only the server moves entries out of waiting/ (one rename
each, ``Spool.release_waiting`` / ``Spool.cancel_waiting``), and nothing but those entries
and the dependencies' own entries is its state: every decision is taken again from disk
after a restart, so a server killed at any moment loses nothing (a cancel's record written
before its rename is written again, the same, by the next decision).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import NamedTuple

from . import fsio
from .index import JobIndex
from .spool import DONE, QUEUED, WAITING, Entry, Location, Spool
from .states import EndReason, JobState

log = logging.getLogger(__name__)

WAIT, RELEASE, CANCEL = "wait", "release", "cancel"
# The resolver looks at the jobs an event names at once; a full pass over waiting/ also runs each
# maintenance round. This is only how long an idle resolver sleeps before it checks for its end.
IDLE_SECONDS = 1.0
# The job events after which dependants are looked at: their dependency ended or is gone.
ENDINGS = frozenset({*(state.value for state in JobState if state.terminal), "deleted"})


class Verdict(NamedTuple):
    """What to do with a waiting job: ``action`` (wait, release, cancel), the dependencies it still
    waits for as (job id, state), and for a cancel the dependency that failed it and that one's state."""

    action: str
    waiting_for: tuple[tuple[str, JobState], ...] = ()
    failed: tuple[str, JobState] | None = None


def decide(after: Iterable[str], after_any: Iterable[str], state_of: Callable[[str], JobState]) -> Verdict:
    """The verdict for a job waiting for ``after`` and ``after_any``; ``state_of`` gives a job's state
    (``not_found`` for one that is deleted). A failed ``after`` dependency cancels at once, whatever
    the others' states."""
    waiting_for = []
    for job_id in after:
        state = state_of(job_id)
        if state == JobState.FINISHED:
            continue
        if state.terminal or state == JobState.NOT_FOUND:
            return Verdict(CANCEL, failed=(job_id, state))
        waiting_for.append((job_id, state))
    for job_id in after_any:
        state = state_of(job_id)
        if not (state.terminal or state == JobState.NOT_FOUND):
            waiting_for.append((job_id, state))
    return Verdict(WAIT, tuple(waiting_for)) if waiting_for else Verdict(RELEASE)


def index_state(index: JobIndex, job_id: str) -> JobState:
    """A job's state as the index knows it (re-checked on disk when stale); ``not_found`` once deleted.

    The index forgets a job only when it is deleted or a stat finds its entry nowhere (an entry
    moves forwards, through locations looked at in that order, so a moving one is found), which
    is what makes ``not_found`` safe to cancel on.
    """
    job = index.get(job_id)
    return JobState.NOT_FOUND if job is None else index.state_of(job)


def waiting_for(index: JobIndex, after: Iterable[str], after_any: Iterable[str]) -> list[dict]:
    """What a waiting job waits for, as /status and /job-info show it: [{job_id, status}]."""
    verdict = decide(after, after_any, lambda job_id: index_state(index, job_id))
    return [{"job_id": job_id, "status": state.value} for job_id, state in verdict.waiting_for]


class Waiting(NamedTuple):
    entry: Entry
    after: tuple[str, ...]
    after_any: tuple[str, ...]


class DependencyResolver:
    """Releases or cancels the jobs in waiting/ as their dependencies end.

    One thread (``run``) does all the work, so the cache of waiting/ needs no lock: it is woken
    by job events (``on_job_event``, a TransitionTracker listener: each ending wakes it for
    that job's dependants, and each new waiting job for itself) and by each maintenance round
    (``maintain``: a full pass, the safety net for an event that was missed). Working in its
    own thread also keeps a cascade (a canceled job cancels its own dependants) off the
    threads that report events: an API request, the watcher, the index's sync.
    """

    def __init__(self, spool: Spool, index: JobIndex, on_release: Callable[[Entry], None] | None = None):
        self.spool = spool
        self.index = index
        self.on_release = on_release or (lambda entry: None)
        self._waiting: dict[str, Waiting] = {}  # entry name -> what it waits for (a spec never changes)
        self._dependants: dict[str, set[str]] = {}  # dependency job id -> entry names waiting for it
        self._wake = threading.Event()
        self._lock = threading.Lock()  # guards the two requests below, which other threads make
        self._ended: set[str] = set()
        self._arrived: dict[str, Entry] = {}  # entry name -> entry, of jobs new in waiting/
        self._full = True  # the first pass, at start-up, looks at everything

    # ----- requests (any thread) ----------------------------------------------------------

    def on_job_event(self, event: dict, job, live: bool) -> None:
        if event.get("to") in ENDINGS:
            with self._lock:
                self._ended.add(event["job_id"])
            self._wake.set()
        elif event.get("to") == JobState.WAITING.value and job is not None:
            with self._lock:  # a new waiting job: its dependencies may have ended already
                self._arrived[job.entry.name] = job.entry
            self._wake.set()

    def maintain(self) -> None:
        with self._lock:
            self._full = True
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    # ----- the resolver's thread ----------------------------------------------------------

    def run(self, stopping: threading.Event) -> None:
        while not stopping.is_set():
            # Cleared before the requests are taken: one made while a pass runs wakes the next.
            self._wake.clear()
            with self._lock:
                ended, arrived, full = self._ended, self._arrived, self._full
                self._ended, self._arrived, self._full = set(), {}, False
            try:
                self.resolve(ended, arrived.values(), full)
            except Exception:  # a transient NFS error must not end the resolver; the next round retries
                log.exception("resolving dependencies failed; the next maintenance round tries again")
                with self._lock:
                    self._full = True
            self._wake.wait(IDLE_SECONDS)

    def resolve(self, ended: Iterable[str] = (), arrived: Iterable[Entry] = (), full: bool = False) -> None:
        """Decide for the waiting jobs that depend on ``ended`` and for those ``arrived`` (for all, if ``full``)."""
        if full:
            self._refresh()  # a listing: events only name the jobs that arrived and ended
            names = set(self._waiting)
        else:
            names = {entry.name for entry in arrived if self._learn(entry)}
            for job_id in ended:
                names |= self._dependants.get(job_id, set())
        states: dict[str, JobState] = {}  # one look per dependency per pass: a sweep may share one

        def state_of(job_id):
            if job_id not in states:
                states[job_id] = index_state(self.index, job_id)
            return states[job_id]

        for name in sorted(names):  # queue order: released jobs keep it
            waiting = self._waiting.get(name)
            if waiting is not None:
                self._settle(waiting, decide(waiting.after, waiting.after_any, state_of))

    def _refresh(self) -> None:
        """Bring the cache in line with a listing of waiting/."""
        listed = set(fsio.listdir(self.spool.waiting_dir))
        for name in set(self._waiting) - listed:
            self._drop(name)
        for name in listed - set(self._waiting):
            entry = Entry.parse(name)
            if entry is not None:
                self._learn(entry)

    def _learn(self, entry: Entry) -> bool:
        """Cache what a waiting entry waits for (read once: a spec never changes); False if it is not in waiting/."""
        if entry.name in self._waiting:
            return True
        spec = self.spool.read_spec(Location(WAITING), entry)
        if spec is None:
            return False  # moved meanwhile (released, a stop canceled it, a delete took it), or not a spec
        waiting = Waiting(entry, tuple(spec.after), tuple(spec.after_any))
        self._waiting[entry.name] = waiting
        for job_id in (*waiting.after, *waiting.after_any):
            self._dependants.setdefault(job_id, set()).add(entry.name)
        return True

    def _drop(self, name: str) -> None:
        waiting = self._waiting.pop(name)
        for job_id in (*waiting.after, *waiting.after_any):
            names = self._dependants.get(job_id)
            if names is not None:
                names.discard(name)
                if not names:
                    del self._dependants[job_id]

    def _settle(self, waiting: Waiting, verdict: Verdict) -> None:
        entry = waiting.entry
        if verdict.action == RELEASE:
            # False: the entry left waiting/ meanwhile (a stop or a delete), and that one's caller told the index.
            if self.spool.release_waiting(entry):
                log.info("job %s released: its dependencies ended", entry.job_id)
                self.index.place(Location(QUEUED), entry)
                self.on_release(entry)
        elif verdict.action == CANCEL:
            job_id, state = verdict.failed
            how = "was deleted" if state == JobState.NOT_FOUND else f"ended {state.value}"
            if self.spool.cancel_waiting(entry, EndReason.DEPENDENCY_FAILED,
                                         dependency={"job_id": job_id, "status": state.value},
                                         error=f"dependency {job_id} {how}"):
                log.info("job %s canceled: dependency %s %s", entry.job_id, job_id, how)
                self.index.place(Location(DONE, JobState.CANCELED.value), entry)
        else:
            return
        self._drop(entry.name)
