"""Placement: what an agent claims next from the queue, and why a queued job waits.

The dispatch order is the sorted listing of ``spool/queued/``: an entry's name starts with
100 - priority, then the job's fair rank, then its submit time (docs/placement.md). The name
also holds the target (a host or ``any``) and the GPUs asked, so an agent decides from names
alone; it reads an entry's spec only when it is about to claim it (the claim needs it
anyway), or when that entry would make it hold its GPUs back (the reservation rule below).
For ``any`` entries the spec may list hosts (``target_hosts``); a "not for me" verdict is kept
per name, since an entry never changes while it is queued.

The server side (``QueueView``) shows the same order with, per job, the first obstacle that
keeps it waiting, read from the hosts' heartbeats (``waiting_reason``).
"""

from __future__ import annotations

import bisect
import datetime as dt
import heapq
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

from .hosts import OFFLINE, ONLINE
from .jobs import ANY_HOST, JobSpec, gpus_needed
from .spool import QUEUED, Entry, Location, Spool

log = logging.getLogger(__name__)

# A directory's mtime moves at the filesystem's clock tick (a few ms on ext4, a whole second on some
# filesystems and NFS exports): a listing is reused only if it was made this long after the mtime it saw.
MTIME_SETTLE_NS = 1_000_000_000
# Up to this many names arriving or leaving between two looks are sorted in one by one, more by a full sort.
INCREMENTAL_SORT_LIMIT = 256
# The server's /queue and /status share one listing of queued/ for at most this long.
SERVER_LISTING_AGE = 1.0
# Caches keyed by entry name are pruned to the current listing once they hold this many extra names.
PRUNE_SLACK = 1024
# A waiting reason names at most this many hosts, then "and N more".
MAX_HOSTS_NAMED = 5


class QueueListing:
    """The entry names in ``spool/queued/``, sorted (= dispatch order), listed again only after a change.

    Listing 10k names costs ~7 ms, a stat of the directory ~0.05 ms. Every rename into or out of
    the directory changes its mtime, but only to the filesystem's clock tick: a change in the
    same tick as the stat before our listing would leave the mtime as we saw it. So a listing is
    reused only while the mtime is unchanged *and* it was made MTIME_SETTLE_NS after that mtime
    (any later change then has a later mtime), and never longer than ``max_age`` seconds, which
    also bounds what an NFS client's attribute cache (or a skewed NFS server clock) can hide. A
    listing that is a moment old is harmless to the protocol: a claim of a gone entry fails its
    rename, and a new entry is seen at the next look.
    """

    def __init__(self, path: str, max_age: float, clock: Callable[[], float] = time.monotonic):
        self.path = path
        self.max_age = max_age
        self.clock = clock
        self.version = 0  # bumped at each new listing
        # (added, gone) entry names of the newest listing against the one before it; None after a full sort.
        self.delta: tuple[list[str], list[str]] | None = None
        self._names: list[str] = []
        self._listed: set[str] = set()
        self._mtime_ns = None
        self._listed_at = float("-inf")
        self._lock = threading.Lock()

    def names(self, fresh: bool = False) -> list[str]:
        """The sorted names (shared: do not change the list); ``fresh`` lists the directory in any case."""
        with self._lock:  # concurrent readers (HTTP threads) list once, not each
            now_ns = time.time_ns()
            try:
                mtime_ns = os.stat(self.path).st_mtime_ns
            except FileNotFoundError:
                return []
            reusable = (not fresh and mtime_ns == self._mtime_ns and self.clock() - self._listed_at < self.max_age)
            if not reusable:
                started = self.clock()
                self._relist()
                settled = now_ns - mtime_ns >= MTIME_SETTLE_NS
                # An unsettled mtime is not remembered: the next look lists again.
                self._mtime_ns = mtime_ns if settled else None
                self._listed_at = started
                self.version += 1
            return self._names

    def _relist(self) -> None:
        listed = set(os.listdir(self.path))  # with temp files (".name"), so that they count as seen
        arrived = listed - self._listed
        # Only arrivals (the common case between two looks) leave the sizes adding up: no second pass for departures.
        departed = self._listed - listed if len(listed) - len(arrived) != len(self._listed) else ()
        added = [name for name in arrived if not name.startswith(".")]
        gone = [name for name in departed if not name.startswith(".")]
        if len(added) + len(gone) > INCREMENTAL_SORT_LIMIT:
            names = sorted(name for name in listed if not name.startswith("."))
            self.delta = None
        else:  # a few arrivals and claims since the last look: cheaper than sorting 10k names again
            names = list(self._names)  # a new list: callers may still be iterating the old one
            for name in gone:
                del names[bisect.bisect_left(names, name)]
            for name in added:
                bisect.insort(names, name)
            self.delta = (added, gone)
        self._names, self._listed = names, listed


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


class _Queued:
    """What one agent keeps about a queued entry name: the Entry, the GPUs it would take here, when it was
    first seen (on the agent's clock: the reservation rule's wait counts from there)."""

    __slots__ = ("entry", "need", "seen_at")

    def __init__(self, entry: Entry, need: int, seen_at: float):
        self.entry, self.need, self.seen_at = entry, need, seen_at


class Dispatcher:
    """One agent's choice of the queued entries to claim, in dispatch order.

    ``candidates`` yields (entry, spec) for the entries this host may claim now; the agent
    takes the GPUs and claims (one rename), and on losing a race simply goes on with the next.

    **The reservation rule** (so a job asking many GPUs is not starved by a stream of smaller
    ones): when a GPU job that fits this host's GPUs, but not its free ones, has been queued for
    ``reserve_after`` seconds (on this agent's own clock, from the first look that saw it), this
    agent claims no GPU job behind it in the queue. Its running GPU jobs end, their GPUs stay
    free, and the waiting job is claimed as soon as enough are free. Jobs without GPUs are still
    claimed behind it: they take no GPU. Every agent that could run the job applies the rule, so
    a job for ``any`` host goes to the first of them with enough free GPUs, and the others take
    GPU jobs again once it left the queue.

    The entries for this host are kept per number of GPUs they take here, each list sorted by name
    (= dispatch order) and updated name by name as the listing changes. A look then walks only the
    lists that fit the free GPUs (merged back into dispatch order), and the heads of the others for
    the reservation rule: it does not step over every entry that cannot be taken now.
    """

    def __init__(self, spool: Spool, host: str, gpu_ids: Sequence[str], reserve_after: float,
                 max_listing_age: float, clock: Callable[[], float] = time.monotonic):
        self.spool = spool
        self.host = host
        self.gpu_total = len(gpu_ids)
        self.reserve_after = reserve_after
        self.clock = clock
        self.listing = QueueListing(spool.queued_dir, max_listing_age, clock)
        self.reserved_for: str | None = None  # the job this host keeps its GPUs for, as of the last full pass
        self.retry_due: float | None = None  # on ``clock``: when the first retry skipped in the last full pass is due
        self._queued: dict[str, _Queued | None] = {}  # name -> what it is here; None: never for this host
        self._retry_at: dict[str, dt.datetime | None] = {}  # name -> not to be claimed before (a retry's backoff)
        self._indexed_version = None  # the listing version _by_need is of
        self._by_need: dict[int, list[str]] = {}  # GPUs taken here -> the names of such entries, sorted
        # GPUs taken -> no entry of that list was seen before this (a bound, made exact by each full scan of it)
        self._first_seen: dict[int, float] = {}

    def candidates(self, free_gpus: Callable[[], int]) -> Iterator[tuple[Entry, JobSpec]]:
        """(entry, JobSpec) of each entry this host may claim now, in dispatch order.

        ``free_gpus()`` is asked at the start and after each yield: the caller takes GPUs in between.
        (A runner giving GPUs back meanwhile wakes the agent for another pass.)
        """
        names = self.listing.names()
        if self._indexed_version != self.listing.version:
            self._index(names)
        now = self.clock()
        free = free_gpus()
        reserved_at, reserved_for = self._reservation(free, now)
        retry_due = None
        for name in heapq.merge(*(names for need, names in self._by_need.items() if need <= free)):
            queued = self._queued.get(name)
            if queued is None:
                continue  # learned meanwhile to be for other hosts only
            entry, need = queued.entry, queued.need
            if need > free:
                continue  # GPUs taken by a job claimed earlier in this pass
            if need and reserved_at is not None and name > reserved_at:
                continue  # the reservation rule: no GPU job behind the one this host keeps GPUs for
            backoff = self._backoff_left(name, entry) if entry.attempt > 1 else 0.0
            if backoff > 0:
                retry_due = min(retry_due or float("inf"), now + backoff)
                continue  # a retry waits out its backoff; it holds nothing back meanwhile
            spec = self._read_spec_for_me(name, entry)
            if spec is not None:
                yield entry, spec
                free = free_gpus()
        self.reserved_for, self.retry_due = reserved_for, retry_due

    def _reservation(self, free: int, now: float) -> tuple[str | None, str | None]:
        """(entry name, job id) of the first entry in dispatch order this host keeps its GPUs for, or (None, None):
        a GPU job for this host, not in a retry's backoff, that does not fit the ``free`` GPUs and was seen
        ``reserve_after`` ago. Each list is read from its head until such an entry (or a later one) is found."""
        found = None
        old_enough = now - self.reserve_after
        for need, names in self._by_need.items():
            if need <= free or self._first_seen.get(need, now) > old_enough:
                continue
            first_seen = now
            for name in names:
                if found is not None and name >= found.name:
                    break
                queued = self._queued.get(name)
                if queued is None:
                    continue
                first_seen = min(first_seen, queued.seen_at)
                if queued.seen_at > old_enough:
                    continue
                if queued.entry.attempt > 1 and self._backoff_left(name, queued.entry) > 0:
                    continue
                if self._read_spec_for_me(name, queued.entry) is not None:
                    found = queued.entry
                    break
            else:
                self._first_seen[need] = first_seen  # read to its end: the bound is exact again
        if found is None:
            return None, None
        if self.reserved_for != found.job_id:
            log.info("%s keeps its GPUs free for job %s (needs %d, queued %.0f s)", self.host, found.job_id,
                     self._queued[found.name].need, now - self._queued[found.name].seen_at)
        return found.name, found.job_id

    def _index(self, names: list[str]) -> None:
        """Bring the lists by GPUs up to the listing: name by name after a few changes, else all again."""
        delta = self.listing.delta
        self._prune(names)
        if delta is not None and self._indexed_version == self.listing.version - 1:
            added, gone = delta
            for name in gone:
                # Its list is not looked up through _queued: a name learned to be for other hosts is None there.
                for entries in self._by_need.values():
                    position = bisect.bisect_left(entries, name)
                    if position < len(entries) and entries[position] == name:
                        del entries[position]
                        break
            for name in added:
                queued = self._look(name)
                if queued is not None:
                    bisect.insort(self._by_need.setdefault(queued.need, []), name)
                    self._first_seen[queued.need] = min(self._first_seen.get(queued.need, queued.seen_at),
                                                        queued.seen_at)
        else:
            by_need, first_seen = {}, {}
            for name in names:
                queued = self._queued.get(name, _UNSEEN)
                if queued is _UNSEEN:
                    queued = self._look(name)
                if queued is not None:
                    by_need.setdefault(queued.need, []).append(name)
                    first_seen[queued.need] = min(first_seen.get(queued.need, queued.seen_at), queued.seen_at)
            self._by_need, self._first_seen = by_need, first_seen
        self._indexed_version = self.listing.version

    def _look(self, name: str) -> _Queued | None:
        """What a name means to this host, from the name alone (a legacy name's GPUs from its spec); kept."""
        entry = Entry.parse(name)
        queued = None
        if entry is not None and entry.target in (self.host, ANY_HOST):
            wanted = entry.gpus_wanted
            if entry.legacy:  # old names carry no GPU count
                spec = self.spool.read_spec(Location(QUEUED), entry)
                if spec is None:
                    return None  # claimed meanwhile, or garbage the server sets aside: looked at again if listed
                wanted = spec.gpus
            need = gpus_needed(wanted, self.gpu_total)
            queued = None if need is None else _Queued(entry, need, self.clock())
        self._queued[name] = queued
        return queued

    def _read_spec_for_me(self, name: str, entry: Entry) -> JobSpec | None:
        """The entry's spec if this host is among its targets, else None (a list without it is remembered)."""
        spec = self.spool.read_spec(Location(QUEUED), entry)
        if spec is None:
            return None  # claimed meanwhile, or not readable: the next pass sees
        if entry.target == ANY_HOST and spec.target_hosts and self.host not in spec.target_hosts:
            self._queued[name] = None
            return None
        return spec

    def _backoff_left(self, name: str, entry: Entry) -> float:
        """Seconds until a retry's backoff ends (0 if it has). Spool.retry_at is read once per name: the
        previous attempt's record is final once the entry was requeued. Its time is from the failed
        attempt's host's clock, compared with ours: a skew between hosts shifts the backoff, no more."""
        if name not in self._retry_at:
            self._retry_at[name] = self.spool.retry_at(entry)
        retry_at = self._retry_at[name]
        return (retry_at - dt.datetime.now(dt.timezone.utc)).total_seconds() if retry_at is not None else 0.0

    def _prune(self, names: list[str]) -> None:
        if max(len(self._queued), len(self._retry_at)) <= len(names) + PRUNE_SLACK:
            return
        listed = set(names)
        for cache in (self._queued, self._retry_at):
            for name in [name for name in cache if name not in listed]:
                del cache[name]


_UNSEEN = object()


# ----- why a queued job waits (the server's side) ----------------------------------------------

def host_obstacle(view: Mapping, wanted: int | str) -> str | None:
    """What keeps host ``view`` (as LivenessMonitor.describe gives it) from taking a job asking
    ``wanted`` GPUs now, as a phrase starting with the host's name; None if nothing does."""
    host = view["host"]
    # A host never seen is "suspect" to the monitor for a while after the server starts; to a job it is offline.
    state = view.get("state") if view.get("seconds_since_seen") is not None else OFFLINE
    if state != ONLINE:
        return f"{host} is {state}"
    if view.get("draining"):
        return f"{host} is draining"
    gpu_total, free = len(view.get("gpu_ids") or ()), len(view.get("free_gpus") or ())
    need = gpus_needed(wanted, gpu_total)
    if need is None:
        return f"{host} has {_plural(gpu_total, 'GPU')}" if gpu_total else f"{host} has no GPUs"
    if need > free:
        return f"{host} has {free} free"
    capacity, running = view.get("capacity"), len(view.get("running") or ())
    if isinstance(capacity, int) and running >= capacity:
        return f"{host} is full ({running} of {_plural(capacity, 'job')} running)"
    return None


def eligible_hosts(target: str, target_hosts: Sequence[str], known_hosts: Sequence[str]) -> list[str]:
    """The hosts a job may run on: its target, its list of hosts, or (``any``) every known host."""
    if target != ANY_HOST:
        return [target]
    return list(target_hosts) if target_hosts else list(known_hosts)


def waiting_reason(entry: Entry, wanted: int | str, hosts: Sequence[str], views: Mapping[str, Mapping],
                   ahead: int, retry_at: dt.datetime | None = None, now: dt.datetime | None = None) -> str:
    """Why the queued ``entry`` (asking ``wanted`` GPUs, for ``hosts``) is not claimed yet, in one sentence.

    The first obstacle wins: a retry's backoff, then hosts that cannot take it now (each named
    with its own reason), then the ``ahead`` jobs before it in the queue. ``views`` holds
    LivenessMonitor.describe of each host (a host without one is offline: it never reported).
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    if retry_at is not None and retry_at > now:
        when = retry_at.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"retry {entry.attempt - 1} not before {when}"
    if not hosts:
        return "no worker host has reported yet"
    obstacles = [host_obstacle(views.get(host) or {"host": host}, wanted) for host in hosts]
    if all(obstacles):
        if len(hosts) == 1 and entry.target != ANY_HOST:
            return obstacles[0]
        named = obstacles[:MAX_HOSTS_NAMED]
        more = f", and {len(obstacles) - len(named)} more" if len(obstacles) > len(named) else ""
        if wanted == "all":
            lacking = "all its GPUs free"
        elif wanted:
            lacking = f"{_plural(wanted, 'free GPU')}"
        else:
            lacking = "room"
        return f"no host with {lacking}: {', '.join(named)}{more}"
    if ahead:
        return f"{_plural(ahead, 'job')} ahead"
    return "next in line: a host with room claims it at its next look"


class QueueView:
    """The queue as the server shows it: GET /queue and the queue fields of /status.

    It lists ``queued/`` itself (a QueueListing shared by all requests): the sorted listing is
    the order agents claim in, so it is shown as the agents see it. Parsed names and what only
    the spec holds (submitter, host list, submit time) are kept per entry name while the entry
    is queued: a queued entry never changes.
    """

    def __init__(self, spool: Spool, monitor, max_listing_age: float = SERVER_LISTING_AGE):
        self.spool = spool
        self.monitor = monitor
        self.listing = QueueListing(spool.queued_dir, max_listing_age)
        # Race: HTTP threads fill these at once; a dict's get and set are atomic, and two threads
        # reading the same name store the same value. Pruning replaces a dict whole.
        self._parsed: dict[str, Entry | None] = {}
        self._facts: dict[str, dict] = {}  # name -> what a row takes from the spec
        self._retry_at: dict[str, dt.datetime | None] = {}  # name -> its retry's backoff end (Spool.retry_at)

    def rows(self, limit: int) -> tuple[list[dict], int]:
        """(the first ``limit`` queued jobs in dispatch order as /queue rows, how many entries are queued)."""
        self.monitor.observe()
        names = self._names()
        hosts, views = self._views()
        rows, ahead = [], _Ahead()
        for position, entry in enumerate(self._parse(names), start=1):
            if len(rows) >= limit:
                break
            if entry is None:
                continue
            facts = self._spec_facts(entry)
            if facts is not None:
                rows.append(self._row(entry, facts, position, ahead, hosts, views))
            ahead.add(entry)
        return rows, len(names)

    def place(self, entry: Entry) -> dict:
        """{queue_position, waiting_reason} of a queued entry (both None if it is no longer queued)."""
        names = self._names()
        position = _position(names, entry.name)
        if position is None:  # published after the listing (a client reads its own write), or gone
            names = self._names(fresh=True)
            position = _position(names, entry.name)
        facts = self._spec_facts(entry) if position is not None else None
        if facts is None:
            return {"queue_position": None, "waiting_reason": None}
        ahead = _Ahead()
        for before in self._parse(names[: position - 1]):
            if before is not None:
                ahead.add(before)
        hosts, views = self._views()
        row = self._row(entry, facts, position, ahead, hosts, views)
        return {"queue_position": position, "waiting_reason": row["waiting_reason"]}

    def _names(self, fresh: bool = False) -> list[str]:
        names = self.listing.names(fresh)
        if max(len(self._parsed), len(self._facts), len(self._retry_at)) > len(names) + PRUNE_SLACK:
            listed = set(names)
            self._parsed = {name: entry for name, entry in self._parsed.items() if name in listed}
            self._facts = {name: facts for name, facts in self._facts.items() if name in listed}
            self._retry_at = {name: when for name, when in self._retry_at.items() if name in listed}
        return names

    def _parse(self, names: list[str]) -> Iterator[Entry | None]:
        parsed = self._parsed
        for name in names:
            entry = parsed.get(name, _UNSEEN)
            if entry is _UNSEEN:
                entry = parsed[name] = Entry.parse(name)
            yield entry

    def _views(self) -> tuple[list[str], dict[str, dict]]:
        hosts = self.monitor.hosts()
        return hosts, {host: self.monitor.describe(host) for host in hosts}

    def _spec_facts(self, entry: Entry) -> dict | None:
        facts = self._facts.get(entry.name)
        if facts is None:
            spec = self.spool.read_spec(Location(QUEUED), entry)
            if spec is None:
                return None  # claimed or canceled meanwhile
            facts = self._facts[entry.name] = {
                "target_hosts": list(spec.target_hosts), "submitted_by": spec.submitted_by,
                "submitted_at": spec.submitted_at, "gpus": spec.gpus}
        return facts

    def _retry_of(self, entry: Entry) -> dt.datetime | None:
        if entry.attempt < 2:
            return None
        if entry.name not in self._retry_at:
            self._retry_at[entry.name] = self.spool.retry_at(entry)
        return self._retry_at[entry.name]

    def _row(self, entry: Entry, facts: dict, position: int, ahead: _Ahead, hosts: list[str], views: dict) -> dict:
        wanted = facts["gpus"]
        eligible = eligible_hosts(entry.target, facts["target_hosts"], hosts)
        reason = waiting_reason(entry, wanted, eligible, views, ahead.for_hosts(eligible),
                                self._retry_of(entry))
        return {"job_id": entry.job_id, "position": position, "target_host": entry.target,
                "target_hosts": facts["target_hosts"], "priority": entry.priority, "gpus": wanted,
                "submitted_by": facts["submitted_by"], "submitted_at": facts["submitted_at"],
                "attempt": entry.attempt, "waiting_reason": reason}


class _Ahead:
    """Counts the entries ahead of a job by target, to tell how many of them compete for its hosts.

    From names only: an ``any`` entry ahead counts for every host (its spec may list fewer).
    """

    def __init__(self):
        self.any = 0
        self.by_host: dict[str, int] = {}

    def add(self, entry: Entry) -> None:
        if entry.target == ANY_HOST:
            self.any += 1
        else:
            self.by_host[entry.target] = self.by_host.get(entry.target, 0) + 1

    def for_hosts(self, hosts: Sequence[str]) -> int:
        return self.any + sum(self.by_host.get(host, 0) for host in hosts)


def _position(names: list[str], name: str) -> int | None:
    """1-based place of ``name`` in the sorted ``names``, or None."""
    index = bisect.bisect_left(names, name)
    return index + 1 if index < len(names) and names[index] == name else None
