"""Liveness without shared clocks.

Each agent rewrites ``spool/<host>/heartbeat.json`` every ``heartbeat_interval`` seconds
with an increasing counter. Readers never compare the timestamps in it with their own
clock: the server notes when *it* saw the (boot_id, counter) pair change, on its own
monotonic clock, and judges a host online, suspect or offline from that age alone.

The agent's side of the lease (docs/guarantees.md has the timeline): an agent that has
not rewritten its heartbeat for ``lease_seconds`` (half the offline threshold) claims
nothing and stops its jobs; since it may be too frozen to do so, a guard process
(runtimes/guard.py) that watches the same file ends them on its own clock, SIGTERM at
the lease and SIGKILL ``grace`` later. lease + grace <= 3/4 of ``offline_after``; the
last quarter absorbs the guard's polling and the share's attribute caching. So by the
time the server calls the host offline and requeues its jobs, the old attempts are
dead: two live attempts of one job never overlap.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from . import __version__, fsio
from .runtimes.guard import lease_clock
from .runtimes.slurm_cluster import ClusterPhase, map_state
from .settings import Settings
from .spool import Entry, Spool
from .states import EndReason

log = logging.getLogger(__name__)

ONLINE, SUSPECT, OFFLINE = "online", "suspect", "offline"
# A detached host's (Slurm) running attempt is requeued only once its time limit and this much more have
# passed since its host was last seen: the cluster's KillWait and OverTimeLimit, and a margin for them.
DETACHED_END_GRACE = 300.0


def boot_id():
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return "unknown"


def lease_times(settings: Settings) -> tuple[float, float]:
    """(lease, grace) for an agent with these settings: see the module docstring."""
    lease = settings.offline_after / 2
    return lease, min(settings.stop_grace, settings.offline_after / 4)


class HeartbeatWriter:
    """Rewrites one host's heartbeat and keeps the agent's side of the lease.

    What the heartbeat says about the host (its agent, capacity, GPUs, jobs) comes from
    ``facts``, a callable the agent gives; the writer adds what proves it alive.
    """

    def __init__(self, spool: Spool, host: str, settings: Settings, facts: Callable[[], dict]):
        self.spool = spool
        self.host = host
        self.facts = facts
        self.interval = settings.heartbeat_interval
        self.counter = 0
        self.boot_id = boot_id()
        self.lease_seconds, self.grace = lease_times(settings)
        self.last_written = lease_clock()
        # How often the lease has lapsed. An attempt started under an earlier count may have been
        # killed by its guard meanwhile (an agent that was frozen wakes up to a lapsed lease).
        self.lapses = 0

    def document(self) -> dict:
        return {
            **self.facts(),
            "host": self.host,
            "boot_id": self.boot_id,
            "counter": self.counter,
            "pid": os.getpid(),
            "version": __version__,
            "interval": self.interval,
        }

    def lease_expired(self) -> bool:
        """True while the heartbeat has not reached the share for longer than the lease.

        Computed from the last success, not kept as a flag by the writing thread: that
        thread may itself be stuck in a write to an unreachable hard-mounted share.
        """
        return lease_clock() - self.last_written > self.lease_seconds

    def lease_broken(self, since: int) -> bool:
        """True if the lease has lapsed now or at any time after lapse count ``since``."""
        # Order matters against beat(): it counts the lapse before it renews last_written,
        # so reading the expiry first and the count second never misses a lapse.
        expired = self.lease_expired()
        return expired or self.lapses != since

    def beat(self) -> bool:
        """Write one heartbeat; returns True if it reached the share."""
        self.counter += 1
        try:
            # No fsync: a lost heartbeat is replaced by the next one.
            fsio.atomic_write_json(self.spool.heartbeat_path(self.host), self.document(), durable=False)
            written = True
        except OSError as exc:
            log.warning("heartbeat of %s failed: %s", self.host, exc)
            written = False
        # Checked after the write: a write that hung past the lease (hard mount) or an agent
        # frozen between beats both count as a lapse, before the renewal below hides it.
        if self.lease_expired():
            self.lapses += 1
        if written:
            self.last_written = lease_clock()
        return written

    def run(self, stopping: threading.Event, on_lapse_renewed: Callable[[], None]) -> None:
        """Beat every ``interval`` until ``stopping``; call ``on_lapse_renewed`` when a lapsed lease is renewed."""
        while not stopping.is_set():
            lapses = self.lapses
            if not self.beat() and self.lease_expired():
                log.warning("%s cannot renew its lease: its jobs are being stopped", self.host)
            elif self.lapses != lapses:
                log.warning("%s renewed a lapsed lease: its jobs were stopped and go back to the queue", self.host)
                on_lapse_renewed()
            stopping.wait(self.interval)


class HostView:
    """What the server last saw of one host, timed by the server's own clock."""

    __slots__ = ("changed_at", "doc", "key")

    def __init__(self, key, changed_at, doc):
        self.key, self.changed_at, self.doc = key, changed_at, doc


class LivenessMonitor:
    """Reads heartbeats, judges hosts, and puts a lost host's jobs back in the queue."""

    def __init__(self, spool, configured_hosts, offline_after, on_moved=None, detached_grace=DETACHED_END_GRACE):
        self.spool = spool
        self.configured_hosts = tuple(configured_hosts)
        self.offline_after = offline_after
        self.detached_grace = detached_grace
        self.on_moved = on_moved or (lambda location, entry: None)
        self.started = time.monotonic()
        self._views = {}
        self._lock = threading.Lock()

    def observe(self):
        now = time.monotonic()
        for host in self.hosts():
            doc = fsio.read_json_object(self.spool.heartbeat_path(host))
            if doc is None:
                continue
            key = (doc.get("boot_id"), doc.get("agent_id"), doc.get("counter"))
            with self._lock:
                view = self._views.get(host)
                if view is None or view.key != key:
                    self._views[host] = HostView(key, now, doc)

    def hosts(self):
        return self.spool.known_hosts(self.configured_hosts)

    def age(self, host):
        """Seconds since the server saw this host's heartbeat change (since start-up if never)."""
        with self._lock:
            view = self._views.get(host)
        return time.monotonic() - (view.changed_at if view else self.started)

    def state(self, host):
        with self._lock:
            view = self._views.get(host)
        age = self.age(host)
        interval = float((view.doc if view else {}).get("interval") or 2.0)
        if view is not None and age <= 3 * interval:
            return ONLINE
        return OFFLINE if age > self.offline_after else SUSPECT

    def describe(self, host):
        with self._lock:
            view = self._views.get(host)
        doc = view.doc if view else {}
        return {
            "host": host,
            "state": self.state(host),
            "seconds_since_seen": round(self.age(host), 1) if view else None,
            "configured": host in self.configured_hosts,
            "capacity": doc.get("capacity"),
            "gpu_ids": doc.get("gpu_ids", []),
            "free_gpus": doc.get("free_gpus", []),
            "running": doc.get("running", []),
            "runtime": doc.get("runtime"),
            "version": doc.get("version"),
            "draining": bool(doc.get("draining", False)),
            "detached": bool(doc.get("detached", False)),
        }

    def detached(self, host):
        """True if the host's jobs run on without its agent (a Slurm cluster's), as its heartbeat says."""
        with self._lock:
            view = self._views.get(host)
        return bool(view is not None and view.doc.get("detached"))

    def ended_at_cluster(self, host, entry):
        """True once a detached host's attempt cannot be running any more: it was running at the cluster
        (not pending: it might start later) when its agent last recorded it, and its time limit plus
        ``detached_grace`` has passed since the host was last seen. Measured on this server's clock from
        the last heartbeat change, so no clocks are compared: the attempt started before that moment."""
        record = self.spool.read_attempt(entry) or {}
        limit, state = record.get("time_limit_seconds"), record.get("cluster_state")
        if not isinstance(limit, (int, float)) or not limit or not state:
            return False  # no limit known, or never seen at the cluster: only its agent can tell
        if map_state(state)[0] is ClusterPhase.PENDING:
            return False
        return self.age(host) > limit + self.detached_grace

    def reclaim_offline(self):
        """Requeue (or fail, per max_retries) the running entries of every offline host.

        A detached host's (Slurm's) attempts are left to its restarted agent, which adopts them, until
        their time limit has surely passed (``ended_at_cluster``): the cluster runs them on, no guard can
        end them, and requeuing one would run the job twice at once.
        """
        for host in self.spool.worker_hosts():
            if self.state(host) != OFFLINE:
                continue
            detached = self.detached(host)
            for name in fsio.listdir(self.spool.running_dir(host)):
                entry = Entry.parse(name)
                if entry is None:
                    continue
                if self.spool.recorded_ending(entry):
                    continue  # ended; its owner (or complete_finished) moves it
                if detached and not self.ended_at_cluster(host, entry):
                    continue
                placed = self.spool.recover_lost(entry, host, reason=EndReason.HOST_LOST)
                if placed:
                    self.on_moved(*placed)
