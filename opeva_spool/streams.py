"""Long-lived responses (log follows, event streams) served beside ordinary requests.

waitress answers every request on one of a fixed set of threads. A follower holds its
thread for as long as it streams, so a dozen of them would starve every other request.
Here each stream gets a thread of its own instead (``StreamingDispatcher``), ordinary
requests keep the pool, and a gate (``StreamGate``) bounds how many streams one client
address and all clients together hold. A stream learns that its client left or that the
server is closing from ``environ[STREAM_GONE]``, which it polls while it waits for data.
"""

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from urllib.parse import parse_qs

from waitress.task import ThreadedTaskDispatcher

# Routes whose ``?follow=1`` keeps the response open; any request accepting an event stream does too,
# and /events always (a plain ``curl`` of it sends no Accept).
FOLLOW_PATHS = ("/logs/", "/file-logs/")
STREAM_PATHS = ("/events",)
EVENT_STREAM = "text/event-stream"
TRUE_FLAGS = ("1", "true", "yes", "on")
# environ key: a callable that turns true once the client is gone or the server is closing.
STREAM_GONE = "opeva.stream_gone"


def is_stream(path: str, query: str, accept: str) -> bool:
    """Whether a request may stay open for long: a log follow, or anything asking for an event stream."""
    if EVENT_STREAM in accept or path in STREAM_PATHS:
        return True
    if not path.startswith(FOLLOW_PATHS):
        return False
    return any(value.lower() in TRUE_FLAGS for value in parse_qs(query).get("follow", ()))


class StreamingDispatcher(ThreadedTaskDispatcher):
    """waitress's thread pool for ordinary requests; a thread of its own for each stream.

    waitress hands it a channel whose first request is the one to serve. The number of
    stream threads needs no cap of its own: a channel runs one request at a time, so
    they are bounded by waitress's connection limit, and a stream over the gate's limits
    ends at once.
    """

    def __init__(self, threads: int):
        super().__init__()
        self.set_thread_count(threads)
        self._streams = set()
        self._streams_lock = threading.Lock()

    def add_task(self, channel):
        requests = getattr(channel, "requests", None)
        # waitress calls this with the channel's requests lock held: requests[0] is stable.
        request = requests[0] if requests else None
        if request is None or request.error or not is_stream(request.path, request.query,
                                                              request.headers.get("ACCEPT", "")):
            return super().add_task(channel)
        thread = threading.Thread(target=self._serve_stream, args=(channel,), name="waitress-stream", daemon=True)
        with self._streams_lock:
            self._streams.add(thread)
        thread.start()

    def _serve_stream(self, channel):
        try:
            channel.service()
        except BaseException:  # as waitress's own worker threads do: log, never kill the server
            self.logger.exception("Exception when servicing %r", channel)
        finally:
            with self._streams_lock:
                self._streams.discard(threading.current_thread())

    def shutdown(self, cancel_pending=True, timeout=5):
        deadline = time.monotonic() + timeout
        done = super().shutdown(cancel_pending, timeout)
        # Streams end on their own within a poll once the server is closing (STREAM_GONE).
        with self._streams_lock:
            streams = list(self._streams)
        for thread in streams:
            thread.join(max(0.0, deadline - time.monotonic()))
        return done


class StreamGate:
    """WSGI middleware: admits at most ``per_client`` open streams per client address and ``total`` in all.

    Beyond that it answers 429 (this client holds too many) or 503 (the server does) as
    JSON. A stream's slot is held until waitress closes its response, which it does when
    the stream ends, the client goes, or the server closes.
    """

    def __init__(self, app, total: int, per_client: int, closing: threading.Event):
        self.app = app
        self.total = total
        self.per_client = per_client
        self.closing = closing
        self._open = Counter()
        self._lock = threading.Lock()

    def open_streams(self) -> int:
        with self._lock:
            return sum(self._open.values())

    def __call__(self, environ, start_response):
        if not is_stream(environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", ""),
                         environ.get("HTTP_ACCEPT", "")):
            return self.app(environ, start_response)
        client = environ.get("REMOTE_ADDR", "")
        refusal = self._admit(client)
        if refusal is not None:
            return _json_error(start_response, *refusal)
        client_gone = environ.get("waitress.client_disconnected", lambda: False)
        environ[STREAM_GONE] = lambda: self.closing.is_set() or client_gone()
        try:
            return _Released(self.app(environ, start_response), lambda: self._release(client))
        except BaseException:
            self._release(client)
            raise

    def _admit(self, client):
        with self._lock:
            if self._open[client] >= self.per_client:
                return ("429 Too Many Requests", "too_many_streams",
                        f"this client already holds {self.per_client} open streams (max_streams_per_client); "
                        f"close one first")
            if sum(self._open.values()) >= self.total:
                return ("503 Service Unavailable", "unavailable",
                        f"the server already holds its maximum of {self.total} open streams (max_streams); "
                        f"try again later")
            self._open[client] += 1
            return None

    def _release(self, client):
        with self._lock:
            self._open[client] -= 1
            if self._open[client] <= 0:
                del self._open[client]


class _Released:
    """The app's response, calling ``release`` once when the server closes it."""

    def __init__(self, response, release: Callable[[], None]):
        self.response = response
        self._release = release

    def __iter__(self):
        return iter(self.response)

    def close(self):
        try:
            if hasattr(self.response, "close"):
                self.response.close()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()


def _json_error(start_response, status, error, detail):
    body = json.dumps({"error": error, "detail": detail}).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
