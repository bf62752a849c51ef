"""Hosts and health."""

import threading
import time
from collections.abc import Callable

import bottle

from .. import __version__, auth, names
from ..exceptions import NotFound, Unavailable
from .app import Context
from .openapi import BOOLEAN, STRING, array, describe, nullable, obj
from .ui import UI_PATH, wants_html

DEPENDENCY_CHECK_TTL = 10.0
# /health's look at the shared root (a probe file written and removed, stats, rejected/ listed) is reused this long.
STORAGE_CHECK_TTL = 1.0
DRAIN_REPLY = obj({"host": STRING, "draining": BOOLEAN, "message": STRING}, ["host", "draining", "message"])


class CachedCheck:
    """A slow reachability check (MongoDB, Docker) run in the background at most every ``ttl`` s.

    /health answers from the last result so it stays fast while the check is slow or hangs.
    """

    def __init__(self, check: Callable[[], str | None], ttl: float = DEPENDENCY_CHECK_TTL) -> None:
        self.check = check
        self.ttl = ttl
        self.result = {"status": "checking"}
        self.checked_at = None
        self._lock = threading.Lock()
        self._running = False

    def get(self) -> dict:
        with self._lock:
            stale = self.checked_at is None or time.monotonic() - self.checked_at > self.ttl
            if stale and not self._running:
                self._running = True
                threading.Thread(target=self._refresh, daemon=True).start()
            return self.result

    def _refresh(self):
        try:
            problem = self.check()
            result = {"status": "ok"} if problem is None else {"status": "unreachable", "detail": problem}
        except Exception as exc:  # any failure of a dependency is a health fact, not an error
            result = {"status": "unreachable", "detail": str(exc)}
        with self._lock:
            self.result, self.checked_at, self._running = result, time.monotonic(), False


class RecentResult:
    """A check run by the request that finds its last result older than ``ttl`` s; others reuse that result.

    For /health's look at the shared root: probes every few milliseconds would otherwise each write and
    remove a file in staging/ (an inotify event for the server's own watcher; on NFS a round trip). A
    request arriving while another one runs the check gets the previous result instead of queueing behind
    a slow share; only the very first requests wait for the first result.
    """

    def __init__(self, check: Callable[[], object], ttl: float = STORAGE_CHECK_TTL) -> None:
        self.check = check
        self.ttl = ttl
        self.result = None
        self.checked_at = None
        self._running = threading.Lock()

    def get(self):
        fresh = self.checked_at is not None and time.monotonic() - self.checked_at <= self.ttl
        if fresh or not self._running.acquire(blocking=self.checked_at is None):
            return self.result
        try:
            if self.checked_at is None or time.monotonic() - self.checked_at > self.ttl:  # not refreshed meanwhile
                # result is stored before checked_at: a reader that sees the new time sees the new result.
                self.result, self.checked_at = self.check(), time.monotonic()
            return self.result
        finally:
            self._running.release()


def install(app: bottle.Bottle, ctx: Context) -> None:
    spool = ctx.spool
    monitor = ctx.monitor
    dependency_checks = {name: CachedCheck(check) for name, check in ctx.dependency_checks.items()}
    storage = RecentResult(lambda: (
        [problem for problem in (spool.check_writable(), spool.check_one_filesystem()) if problem],
        spool.rejected_summary()))  # dropped folders and queued/ garbage set aside

    @app.get("/whoami")
    @describe("Who the caller is: the token's user and the roles it holds (an admin holds every role); with auth "
              "off nobody, holding every role. The dashboard hides what the roles do not allow",
              reply=obj({"user": nullable("string"), "roles": array(STRING), "auth": BOOLEAN},
                        ["user", "roles", "auth"]))
    def whoami():
        identity = auth.current()
        return {"user": identity.user, "roles": sorted(auth.ALL_ROLES if identity.is_admin else identity.roles),
                "auth": app.config["opeva.auth_enabled"]}

    @app.get("/hosts")
    @describe("Known hosts and what their agents' heartbeats say",
              reply=obj({"available_hosts": array(STRING), "hosts": array(obj({"host": STRING, "state": STRING}))},
                        ["available_hosts", "hosts"]))
    def hosts():
        monitor.observe()
        names = monitor.hosts()
        return {"available_hosts": names, "hosts": [monitor.describe(host) for host in names]}

    def set_drain(host, draining):
        if names.host(host) not in monitor.hosts():
            raise NotFound(f"unknown host {host!r} (known: {', '.join(monitor.hosts()) or 'none'})", host=host)
        spool.request_drain(host, undo=not draining)
        return {"host": host, "draining": draining,
                "message": f"host {host}: drain {'requested' if draining else 'lifted'}; its agent sees it "
                           f"within a poll and says so in its heartbeat"}

    app.post("/hosts/<host>/drain", role=auth.ADMIN)(describe(
        "Drain a host: its agent takes no new jobs (admin)", reply=DRAIN_REPLY, statuses=(400, 404, 503))(
        lambda host: set_drain(host, True)))
    app.delete("/hosts/<host>/drain", role=auth.ADMIN)(describe(
        "Lift a host's drain (admin)", reply=DRAIN_REPLY, statuses=(400, 404, 503))(
        lambda host: set_drain(host, False)))

    @app.get("/health", role=auth.PUBLIC)  # for load balancers and probes, which hold no token
    @describe("The server's health: shared root, job counts, MongoDB and Docker reachability",
              reply=obj({"status": STRING, "version": STRING, "shared_root": STRING, "jobs": obj(), "mongodb": obj(),
                         "docker": obj()}, ["status"]), statuses=(503,))
    def health():
        problems, rejected = storage.get()
        body = {
            "status": "ok" if not problems else "error",
            "version": __version__,
            "shared_root": spool.root,
            "problems": problems,
            "jobs": ctx.index.counts(),
            "rejected": rejected,
            "mongodb": dependency_checks["mongodb"].get() if "mongodb" in dependency_checks
            else {"status": "not_configured"},
            "docker": dependency_checks["docker"].get() if "docker" in dependency_checks
            else {"status": "not_configured"},
        }
        if problems:
            raise Unavailable("; ".join(problems), **{k: v for k, v in body.items() if k != "problems"})
        return body

    @app.get("/", role=auth.PUBLIC)
    @describe("What this service is (a browser is sent to the dashboard)", statuses=(303,),
              reply=obj({"service": STRING, "version": STRING}, ["service", "version"]))
    def root():
        if wants_html(bottle.request.get_header("Accept", "")):  # a browser: to the dashboard
            bottle.redirect(UI_PATH)
        bottle.response.content_type = "application/json"
        return {"service": "opeva-spool", "version": __version__, "docs": "see README.md", "openapi": "/openapi.json",
                "api_page": UI_PATH + "api"}
