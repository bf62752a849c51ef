"""The Bottle application: error handling, auth, body limits, and the route groups.

The HTTP layer only translates: it parses requests, calls the model (spool, index,
site data) and renders what comes back as JSON. Every failure becomes
``{"error": slug, "detail": sentence}`` with a 4xx/5xx status, never a traceback.
Route groups live one per module and each exposes ``install(app, ctx)``.
"""

import json
import logging

import bottle

from ..exceptions import BadRequest, PayloadTooLarge, SpoolError, Unauthorized

log = logging.getLogger(__name__)

MUTATING_METHODS = ("POST", "PUT", "DELETE", "PATCH")


class Context:
    """What route modules need: settings and the long-lived objects of this server."""

    def __init__(self, settings, **parts):
        self.settings = settings
        for name, value in parts.items():
            setattr(self, name, value)


def error_response(http_status, error, detail, **extra):
    bottle.response.status = http_status
    bottle.response.content_type = "application/json"
    return json.dumps({"error": error, "detail": detail, **extra})


def json_body():
    """The request body as a JSON object: 413 over the limit, 400 if malformed or not an object."""
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
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def query_int(name, default, minimum, maximum):
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


def query_flag(name):
    return bottle.request.query.get(name, "").lower() in ("1", "true", "yes", "on")


class ErrorsAsJson:
    """Bottle plugin: checks the token on mutating requests and maps exceptions to JSON."""

    name = "errors_as_json"
    api = 2

    def __init__(self, token):
        self.token = token

    def apply(self, callback, route):
        def wrapper(*args, **kwargs):
            try:
                if self.token and bottle.request.method in MUTATING_METHODS:
                    header = bottle.request.get_header("Authorization", "")
                    if header != f"Bearer {self.token}":
                        raise Unauthorized("this endpoint needs 'Authorization: Bearer <token>'")
                result = callback(*args, **kwargs)
            except SpoolError as exc:
                return error_response(exc.status, exc.error, exc.detail, **exc.extra)
            except bottle.HTTPResponse:
                raise
            except Exception:  # the one place an unexpected error is turned into JSON
                log.exception("unhandled error in %s %s", bottle.request.method, bottle.request.path)
                return error_response(500, "internal_error", "the server hit an unexpected error")
            if isinstance(result, (dict, list)):
                bottle.response.content_type = "application/json"
                return json.dumps(result)
            return result

        return wrapper


def make_app(ctx, route_modules):
    app = bottle.Bottle()
    app.config["json.enable"] = False
    app.config["opeva.max_body_bytes"] = ctx.settings.max_body_bytes
    # Bottle buffers bodies up to MEMFILE_MAX in memory; we read at most limit + 1 bytes anyway.
    bottle.BaseRequest.MEMFILE_MAX = max(bottle.BaseRequest.MEMFILE_MAX, ctx.settings.max_body_bytes + 1)
    app.install(ErrorsAsJson(ctx.settings.api_token))
    for module in route_modules:
        module.install(app, ctx)

    for status, slug in ((404, "not_found"), (405, "method_not_allowed"), (500, "internal_error")):
        app.error(status)(_error_page(status, slug))
    return app


def _error_page(status, slug):
    def render(http_error):
        bottle.response.content_type = "application/json"
        detail = http_error.body if isinstance(http_error.body, str) and http_error.body else slug
        if status == 500:
            detail = "the server hit an unexpected error"
        return json.dumps({"error": slug, "detail": detail})

    return render
