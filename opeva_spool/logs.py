"""Serving a job's log: its tail, and following it as it grows.

Each follower polls its open file (a read that returns nothing costs one syscall) on its own
stream thread. Polls are spread out in time, which matters more than their number: waking
all the followers of a log at once when it grows (one watcher thread, tried) made 200 threads
runnable together, and a /health request behind them waited 70-90 ms at p99 instead of ~10.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable

from . import fsio
from .jobs import JobFolder

LOG_CHUNK = 64 * 1024
# A new line reaches followers within this (bench/cli_follow.py: line written -> printed by
# `logs -f`, p95 94 ms at 0.1 s, 142 ms at 0.15 s, 240 ms at 0.25 s); /health p99 beside 200 followers
# (bench/run.py --streams-only) 7-8 ms at 0.15 s, 9-17 ms at 0.1 s. See the module's note on the cost.
FOLLOW_POLL_SECONDS = 0.15


def tail_offset(handle, lines):
    """Byte offset where the last ``lines`` lines start, reading backwards in blocks."""
    end = handle.seek(0, os.SEEK_END)
    if lines <= 0:
        return end
    position, newlines = end, 0
    # A trailing newline ends the last line rather than starting an empty one.
    if end:
        handle.seek(end - 1)
        if handle.read(1) == b"\n":
            position -= 1
    while position > 0:
        size = min(LOG_CHUNK, position)
        position -= size
        handle.seek(position)
        block = handle.read(size)
        found = block.count(b"\n")
        if newlines + found >= lines:  # the line starts in this block: find its newline from the block's end
            cut = len(block)
            for _ in range(lines - newlines):
                cut = block.rfind(b"\n", 0, cut)
            return position + cut + 1
        newlines += found
    return 0


def open_log(path):
    """The job's log opened for reading, or None while there is none to serve.

    A log that leaves its job's folder, or is no regular file, counts as none: the service
    answered 403 for it before the stream began, and one planted later is never served
    (raising here would only cut the stream short with a traceback)."""
    try:
        return fsio.open_inside(path, JobFolder.of_log(path).path)
    except fsio.Refused:
        return None


def stream_log(path: str, tail: int | None, follow: bool, ended: Callable[[], bool],
               gone: Callable[[], bool]) -> Iterable[bytes]:
    """The log at ``path``: all of it or its last ``tail`` lines, then (``follow``) what is appended until
    ``ended()`` (then one more pass: its last lines may land just before) or ``gone()``.

    Without ``follow`` it is the open file itself, at the first byte to send: Bottle hands a file to the
    WSGI server's ``wsgi.file_wrapper``, and waitress sends it straight from the file, with a
    Content-Length of what it holds then. Read in chunks by a request thread instead, each gigabyte went
    through Python bytes and waitress's spill file, and the server grew by 20-70 MiB per GiB read
    (bench/logs.py). The cost: waitress's event-loop thread does the reads, which on a cold NFS share
    wait a round trip per block. Without a file_wrapper (another WSGI server, the in-process tests) Bottle reads it in
    64 KiB blocks."""
    handle = open_log(path)
    if not follow:
        if handle is None:
            return iter(())  # no body; an empty list would be answered as JSON ``[]``
        if tail is not None:
            handle.seek(tail_offset(handle, tail))
        return handle
    return _follow(handle, path, tail, ended, gone)


def _follow(handle, path, tail, ended, gone):
    try:
        if handle is not None and tail is not None:
            handle.seek(tail_offset(handle, tail))
        finishing = False
        while not gone():  # a follower that left, or a closing server, ends the stream within a poll
            if handle is None:
                handle = open_log(path)
            chunk = handle.read(LOG_CHUNK) if handle else b""
            if chunk:
                yield chunk
                continue
            if finishing:
                return
            finishing = ended()
            if not finishing:
                time.sleep(FOLLOW_POLL_SECONDS)
    finally:
        if handle is not None:
            handle.close()
