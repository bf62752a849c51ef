"""Fair sharing between submitters: the rank the server writes into each entry's name.

Within one priority the queue is dispatched in rank order (docs/spool.md, "Dispatch order").
The ranks are virtual finishing times of a weighted-fair queue with every submitter's weight
1 and every job's cost 1:

    rank = max(last rank given to this submitter at this priority, virtual clock) + 1

where the virtual clock of a priority is the highest rank that has left the queue (claimed,
canceled or deleted). A submitter with nothing queued therefore starts right behind what is
being dispatched now, while one with 1,000 jobs queued has ranks clock+1 .. clock+1000: a
second submitter's jobs interleave with them one for one. Equal ranks fall back to submit
time (the next field of the name), so one submitter's jobs keep their order.

Only the server publishes, so only it computes ranks; agents never do: they sort names.
The state is rebuilt at start-up from the index (``restore``): the clock from the entries
that left the queue (and the archive's highest ranks, ``restore_clock``), each submitter's last
rank from its entries still queued or waiting.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from .spool import QUEUED, WAITING, Entry


class FairShare:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clock: dict[int, int] = {}  # priority -> highest rank that left the queue
        self._last: dict[tuple[int, str], int] = {}  # (priority, submitter) -> last rank given
        self._queued: dict[str, Entry] = {}  # job id -> entry, for entries in queued/ or waiting/

    def ranks(self, priority: int, submitter: str, count: int = 1) -> list[int]:
        """The ranks of ``count`` jobs ``submitter`` publishes now at ``priority``, in order."""
        with self._lock:
            first = max(self._last.get((priority, submitter), 0), self._clock.get(priority, 0)) + 1
            self._last[(priority, submitter)] = first + count - 1
        return list(range(first, first + count))

    def clock(self, priority: int) -> int:
        with self._lock:
            return self._clock.get(priority, 0)

    def observe(self, job_id: str, entry: Entry | None, kind: str | None) -> None:
        """The index placed ``job_id``'s ``entry`` in a location of ``kind`` (None, None: it forgot the job).

        Race: placements of one job can come from several threads in either order; a late
        "queued" after the job left only re-adds it to the map, and the clock, a maximum,
        is never wound back.
        """
        with self._lock:
            if kind in (QUEUED, WAITING):
                self._queued[job_id] = entry
                return
            left = self._queued.pop(job_id, None) or entry
            if left is not None and left.rank > self._clock.get(left.priority, 0):
                self._clock[left.priority] = left.rank

    def restore_clock(self, max_ranks: dict[int, int]) -> None:
        """Raise each priority's clock to the highest rank of jobs no longer indexed one by one (archived ones)."""
        with self._lock:
            for priority, rank in max_ranks.items():
                self._clock[priority] = max(self._clock.get(priority, 0), rank)

    def restore(self, placed: Iterable[tuple[Entry, str]], submitter_of: Callable[[Entry, str], str]) -> None:
        """Rebuild from (entry, location kind) pairs of every known job; ``submitter_of`` reads the
        submitter of an entry still in the queue (one spec read each, at start-up only)."""
        for entry, kind in placed:
            self.observe(entry.job_id, entry, kind)
            if kind in (QUEUED, WAITING):
                key = (entry.priority, submitter_of(entry, kind))
                with self._lock:
                    self._last[key] = max(self._last.get(key, 0), entry.rank)
