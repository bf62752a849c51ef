"""Hosts and health."""

import logging
import threading
import time
from collections.abc import Callable

import bottle

from .. import __version__, auth, names
from ..exceptions import NotFound, Unavailable
from .app import Context
from .openapi import BOOLEAN, STRING, array, describe, nullable, obj
from .ui import UI_PATH, wants_html

log = logging.getLogger(__name__)

DEPENDENCY_CHECK_TTL = 10.0
# /health's own facts (a probe file written and removed, stats, rejected/ listed, the index's counts) are
# refreshed in the background at most this often.
HEALTH_FACTS_TTL = 1.0
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
    """A result refreshed in the background at most every ``ttl`` s; only the very first requests wait for it.

    For /health's own facts. Probes every few milliseconds would otherwise each write and remove a file
    in staging/ (an inotify event for the server's own watcher; on NFS a round trip) and wait for the
    index's lock, which a maintenance pass over a big tree holds for a while: /health's p99 was that wait.
    A request finding the result stale starts one refresh and answers with the previous result.
    """

    def __init__(self, compute: Callable[[], object], ttl: float = HEALTH_FACTS_TTL) -> None:
        self.compute = compute
        self.ttl = ttl
        self.result = None
        self.computed_at = None
        self._first = threading.Lock()
        self._lock = threading.Lock()
        self._refreshing = False

    def get(self):
        if self.computed_at is None:
            with self._first:  # a server's first probes: there is nothing older to answer with
                if self.computed_at is None:
                    self.result, self.computed_at = self.compute(), time.monotonic()
        with self._lock:
            if time.monotonic() - self.computed_at > self.ttl and not self._refreshing:
                self._refreshing = True
                threading.Thread(target=self._refresh, name="health-facts", daemon=True).start()
            return self.result

    def _refresh(self):
        try:
            result = self.compute()
        except Exception:  # the previous facts stay; the next stale request tries again
            log.exception("refreshing /health's facts failed")
            result = None
        with self._lock:
            if result is not None:
                self.result = result
            self.computed_at, self._refreshing = time.monotonic(), False


def install(app: bottle.Bottle, ctx: Context) -> None:
    spool = ctx.spool
    monitor = ctx.monitor
    dependency_checks = {name: CachedCheck(check) for name, check in ctx.dependency_checks.items()}
    facts = RecentResult(lambda: (
        [problem for problem in (spool.check_writable(), spool.check_one_filesystem()) if problem],
        ctx.index.counts(),
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
        problems, counts, rejected = facts.get()
        body = {
            "status": "ok" if not problems else "error",
            "version": __version__,
            "shared_root": spool.root,
            "problems": problems,
            "jobs": counts,
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
