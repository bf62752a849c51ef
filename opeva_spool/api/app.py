"""The Bottle application: the route context, JSON errors, roles and the audit log, body limits, the route groups.

The HTTP layer only translates: it parses requests, calls the model (spool, index,
site data) and renders what comes back as JSON. Every failure becomes
``{"error": slug, "detail": sentence}`` with a 4xx/5xx status, never a traceback.
Route groups live one per module and each exposes ``install(app, ctx)``.
"""

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import ModuleType

import bottle

from .. import auth
from ..audit import AuditLog
from ..configs import nesting_depth
from ..events import EventBus
from ..exceptions import BadRequest, PayloadTooLarge, SpoolError, Unauthorized, storage_error
from ..hosts import LivenessMonitor
from ..index import JobIndex
from ..metrics import Metrics
from ..service import JobService
from ..settings import Settings, open_reads
from ..sitedata.mongo import SiteData
from ..sitedata.store import DatasetStore
from ..spool import Spool
from ..sweeps import SweepService
from ..workers import WorkerService

log = logging.getLogger(__name__)

MUTATING_METHODS = ("POST", "PUT", "DELETE", "PATCH")
# Far deeper than any real config, schema or job body, and far inside Python's recursion limit, so
# nothing that walks a body recursively afterwards (validators, YAML and BSON encoders) can overflow.
MAX_BODY_DEPTH = 100
TOO_DEEP = f"request body nests arrays and objects more than {MAX_BODY_DEPTH} levels deep"


@dataclass
class Context:
    """What route modules need: the settings and the long-lived objects of one server (Server builds it).

    The job parts are None only in an app that installs no route needing them (a test of one
    route group); site data needs nothing but the settings and connects on first use, so it is
    made here when not given.
    """

    settings: Settings
    spool: Spool | None = None
    index: JobIndex | None = None
    jobs: JobService | None = None
    monitor: LivenessMonitor | None = None
    sitedata: SiteData | None = None
    datasets: DatasetStore | None = None
    events: EventBus | None = None
    metrics: Metrics | None = None
    sweeps: SweepService | None = None
    workers: WorkerService | None = None
    # name -> check for /health: None when reachable, else a sentence (or it raises)
    dependency_checks: dict[str, Callable[[], str | None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.sitedata is None:
            self.sitedata = SiteData(self.settings)
        if self.datasets is None:
            self.datasets = DatasetStore(self.settings, self.sitedata)


def error_response(http_status: int, error: str, detail: str, **extra: object) -> str:
    bottle.response.status = http_status
    bottle.response.content_type = "application/json"
    return json.dumps({"error": error, "detail": detail, **extra})


def json_body() -> dict:
    """The request body as a JSON object: 413 over the limit, 400 if malformed, too deep or not an object."""
    request = bottle.request
    limit = request.app.config["opeva.max_body_bytes"]
    length = request.content_length
    if length > limit:
        raise PayloadTooLarge(f"request body of {length} bytes exceeds the limit of {limit} bytes")
    raw = request.body.read(limit + 1)
    if len(raw) > limit:
        raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    except RecursionError:  # the parser recurses once per level: ~1,000 levels overflow it
        raise BadRequest(TOO_DEEP) from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    if nesting_depth(body) > MAX_BODY_DEPTH:  # measured without recursion
        raise BadRequest(TOO_DEEP)
    return body


def query_int(name: str, default: int | None, minimum: int, maximum: int) -> int | None:
    raw = bottle.request.query.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name!r} must be an integer, not {raw!r}") from None
    if not minimum <= value <= maximum:
        raise BadRequest(f"query parameter {name!r} must be between {minimum} and {maximum}")
    return value


def query_flag(name: str) -> bool:
    return bottle.request.query.get(name, "").lower() in ("1", "true", "yes", "on")


class JsonErrors:
    """Bottle plugin: a ``SpoolError`` becomes its JSON error, anything unexpected a JSON 500 (logged),
    and a dict or list a route returns becomes a JSON body."""

    name = "json_errors"
    api = 2

    def apply(self, callback: Callable, route: bottle.Route) -> Callable:
        def wrapper(*args, **kwargs):
            try:
                result = callback(*args, **kwargs)
            except SpoolError as exc:
                return error_response(exc.status, exc.error, exc.detail, **exc.extra)
            except bottle.HTTPResponse:
                raise
            except Exception as exc:  # the one place an unexpected error is turned into JSON
                # A full or read-only share fails whichever write comes first: every route answers it alike.
                refused = storage_error(exc) if isinstance(exc, OSError) else None
                if refused is not None:
                    log.warning("%s %s: %s", bottle.request.method, bottle.request.path, exc)
                    return error_response(refused.status, refused.error, refused.detail, **refused.extra)
                log.exception("unhandled error in %s %s", bottle.request.method, bottle.request.path)
                return error_response(500, "internal_error", "the server hit an unexpected error")
            if isinstance(result, (dict, list)):
                bottle.response.content_type = "application/json"
                return json.dumps(result)
            return result

        return wrapper


def route_role(route: bottle.Route) -> str:
    """The role a route needs: its ``role=`` route config, else ``read`` to read and ``submit`` to change."""
    return route.config.get("role") or (auth.SUBMIT if route.method in MUTATING_METHODS else auth.READ)


class RoleAuth:
    """Bottle plugin: resolves the request's credential to an ``auth.Identity`` (left in the environ for
    ``auth.current()``) and enforces the route's role: 401 for a missing or bad token, 403 for a missing role.

    The credential is ``Authorization: Bearer <token>``; a read (GET/HEAD) also takes the ``opeva_token``
    cookie, which the dashboard sets because EventSource and download links cannot send a header. A cookie
    never authorises a change, so another site cannot make a browser change anything (no CSRF).
    Installed inside JsonErrors, which renders the errors.
    """

    name = "role_auth"
    api = 2

    def __init__(self, authenticator: auth.Authenticator) -> None:
        self.authenticator = authenticator

    def apply(self, callback: Callable, route: bottle.Route) -> Callable:
        role = route_role(route)

        def public(*args, **kwargs):
            # No credential is looked at; a service asking auth.current() here gets nobody, never ANONYMOUS.
            bottle.request.environ[auth.ENVIRON_KEY] = auth.NOBODY
            return callback(*args, **kwargs)

        def wrapper(*args, **kwargs):
            identity = self.identify(role)
            bottle.request.environ[auth.ENVIRON_KEY] = identity
            identity.require(role)
            return callback(*args, **kwargs)

        return public if role == auth.PUBLIC else wrapper

    def identify(self, role: str) -> auth.Identity:
        request = bottle.request
        header = request.get_header("Authorization", "")
        scheme, _, credential = header.partition(" ")
        if header and scheme.lower() != "bearer":
            raise self.unauthorized("send the token as 'Authorization: Bearer <token>'")
        from_cookie = not header and request.method in ("GET", "HEAD")
        if from_cookie:
            credential = request.get_cookie(auth.TOKEN_COOKIE, "")
        credential = credential.strip()
        open_read = role == auth.READ and self.authenticator.open_reads
        identity = self.authenticator.identify(credential) if credential else None
        if identity is not None:
            return identity
        # A cookie is sent whether the page meant it or not (cookies ignore ports: another deployment's
        # dashboard on this host may have set it), so a bad one counts as none where reads are open.
        if open_read and (not credential or from_cookie):
            return auth.OPEN_READER
        if not credential:
            raise self.unauthorized("this endpoint needs 'Authorization: Bearer <token>'")
        sent_as = f"the {auth.TOKEN_COOKIE} cookie" if from_cookie else "'Authorization: Bearer'"
        raise self.unauthorized(f"the token sent as {sent_as} is not valid (unknown, revoked or mistyped)")

    @staticmethod
    def unauthorized(detail: str) -> Unauthorized:
        bottle.response.set_header("WWW-Authenticate", f'Bearer realm="{auth.REALM}"')  # RFC 6750 3
        return Unauthorized(detail)


class Audit:
    """Bottle plugin: appends one line per mutating request to the audit log (audit.py), whatever its
    outcome, refused ones included. Installed inside JsonErrors (it sees the route's reply and the
    SpoolError of a failure) and outside RoleAuth (it sees a 401/403 too)."""

    name = "audit"
    api = 2

    def __init__(self, log: AuditLog) -> None:
        self.log = log

    def apply(self, callback: Callable, route: bottle.Route) -> Callable:
        if route.method not in MUTATING_METHODS:
            return callback

        def wrapper(*args, **kwargs):
            result, status = None, 500
            try:
                result = callback(*args, **kwargs)
                status = bottle.response.status_code
                return result
            except SpoolError as exc:
                status = exc.status
                raise
            except bottle.HTTPResponse as exc:
                status = exc.status_code
                raise
            except OSError as exc:  # JsonErrors answers a full or read-only share as storage_error says
                refused = storage_error(exc)
                status = refused.status if refused is not None else 500
                raise
            finally:
                request = bottle.request
                identity = request.environ.get(auth.ENVIRON_KEY)
                targets = {**(result if isinstance(result, dict) else {}), **kwargs}
                # The peer's address, not bottle's remote_addr: that believes X-Forwarded-For, which any client
                # can send (waitress drops it from clients it does not trust as proxies).
                self.log.record(user=identity.user if identity else None, method=request.method, route=route.rule,
                                path=request.path, remote=request.environ.get("REMOTE_ADDR"), status=status,
                                targets=targets)

        return wrapper


def make_app(ctx: Context, route_modules: Iterable[ModuleType]) -> bottle.Bottle:
    app = bottle.Bottle()
    app.config["json.enable"] = False
    app.config["opeva.max_body_bytes"] = ctx.settings.max_body_bytes
    # Bottle buffers bodies up to MEMFILE_MAX in memory; we read at most limit + 1 bytes anyway.
    bottle.BaseRequest.MEMFILE_MAX = max(bottle.BaseRequest.MEMFILE_MAX, ctx.settings.max_body_bytes + 1)
    # Plugins installed first wrap outermost: JsonErrors must see what Audit and RoleAuth raise.
    app.install(JsonErrors())
    app.install(Audit(AuditLog(ctx.settings.shared_root)))
    authenticator = auth.Authenticator(ctx.settings.api_token, ctx.settings.tokens_file,
                                       open_reads(ctx.settings.open_reads))
    app.config["opeva.auth_enabled"] = authenticator.enabled  # /whoami says it
    if authenticator.enabled:  # else every caller is auth.ANONYMOUS
        app.install(RoleAuth(authenticator))
    for module in route_modules:
        module.install(app, ctx)

    for status, slug in ((404, "not_found"), (405, "method_not_allowed"), (500, "internal_error")):
        app.error(status)(_error_page(status, slug))
    return app


def _error_page(status: int, slug: str) -> Callable[[bottle.HTTPError], str]:
    def render(http_error):
        bottle.response.content_type = "application/json"
        detail = http_error.body if isinstance(http_error.body, str) and http_error.body else slug
        if status == 500:
            detail = "the server hit an unexpected error"
        return json.dumps({"error": slug, "detail": detail})

    return render
