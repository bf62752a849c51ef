"""The API's OpenAPI 3.1 description, written next to each route with ``describe``.

A route function carries its own description (``describe`` stores it on the function), so the
document cannot drift from the routes: it is built from the app's routes as they are installed,
with path parameters read from each route's rule. ``GET /openapi.json`` serves it; the dashboard's
API page (/ui/api) renders it; tests/test_openapi.py checks every route is described and fuzzes the
live server against it (docs/api.md).
"""

import re
from collections.abc import Callable, Iterable
from typing import TypeVar

import bottle

from .. import __version__, auth, names

Route = TypeVar("Route", bound=Callable)
DESCRIPTION_ATTRIBUTE = "openapi"
OPENAPI_VERSION = "3.1.0"
JSON = "application/json"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")  # HEAD is Bottle's answer to every GET: not listed apart

# The one error shape every failure has (api/app.py), and the statuses a caller may meet anywhere.
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "detail"],
    "properties": {"error": {"type": "string", "description": "a short machine-readable slug"},
                   "detail": {"type": "string", "description": "a sentence for a person"}},
    "additionalProperties": True,  # some errors name what they are about: job_id, field, host...
}
ERROR_REFERENCE = {"$ref": "#/components/schemas/Error"}
STATUS_TEXT = {204: "no content", 301: "moved permanently", 302: "redirect", 303: "see other", 304: "not modified",
               400: "bad request: malformed input, named in the detail", 401: "a token is needed and none or a bad "
               "one was sent", 403: "the token lacks the role this needs, or the file may not be served",
               404: "no such thing", 409: "conflict with the thing's current state; nothing changed",
               413: "request body too large", 503: "a dependency (shared root, MongoDB, Docker) is unavailable",
               507: "the shared root is full; nothing was stored"}
# With auth on any route may refuse the caller; a JSON body may be malformed or too large.
AUTH_STATUSES = (401, 403)
BODY_STATUSES = (400, 413)

# Path parameters that are names checked by opeva_spool/names.py carry that name's pattern.
PATH_PARAMETER_SCHEMAS = {
    "job_id": {"type": "string", "pattern": names.JOB_ID.pattern},
    "host": {"type": "string", "pattern": names.HOST.pattern},
    "site": {"type": "string", "pattern": names.SITE.pattern},
}
# Bottle's rule wildcards: <name>, <name:filter>, <name:filter:config>.
WILDCARD = re.compile(r"<([A-Za-z_][A-Za-z_0-9]*)(?::([A-Za-z_]*)(?::((?:\\.|[^\\>])+))?)?>")


def obj(properties: dict | None = None, required: Iterable[str] = (), **extra: object) -> dict:
    """A JSON object schema naming some of its fields; more may come (answers grow, never shrink)."""
    schema = {"type": "object", "properties": properties or {}, **extra}
    if required:
        schema["required"] = list(required)
    return schema


def array(items: dict | None = None) -> dict:
    return {"type": "array", "items": items or {}}


def nullable(kind: str) -> dict:
    return {"type": [kind, "null"]}


STRING, INTEGER, NUMBER, BOOLEAN = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
FLAG = {"type": "string", "enum": ["1", "0", "true", "false", "yes", "no", "on", "off"]}  # app.query_flag
MESSAGE = obj({"message": STRING}, ["message"])


def describe(summary: str, *, query: dict[str, dict] | None = None, required: tuple[str, ...] = (),
             body: dict | None = None, reply: dict | None = None,
             reply_type: str | tuple[str, ...] = JSON, statuses: tuple[int, ...] = (),
             reply_status: int = 200, headers: dict[str, dict] | None = None,
             description: str = "") -> Callable[[Route], Route]:
    """Describe a route: ``query`` maps parameter names to JSON Schemas (``required`` lists the mandatory
    ones), ``body`` and ``reply`` are JSON Schemas, ``statuses`` the other statuses it may answer (errors,
    and bodiless ones like 204 or 304). ``reply_type`` may name several media types, ``reply_status`` is
    the success status, ``headers`` the reply headers it sets (name -> schema). Path parameters come from
    the route's rule. Put it under the ``@app.get(...)`` line."""
    def attach(function: Route) -> Route:
        setattr(function, DESCRIPTION_ATTRIBUTE, {
            "summary": summary, "query": query or {}, "required": required, "body": body, "reply": reply,
            "reply_type": (reply_type,) if isinstance(reply_type, str) else reply_type, "statuses": statuses,
            "reply_status": reply_status, "headers": headers or {}, "description": description})
        return function

    return attach


def description_of(route: bottle.Route) -> dict | None:
    """The route's description. Not ``route.get_undecorated_callback()``: that loops for ever on a closure
    holding no callable (bottle 0.13), and our route functions are closures over their services."""
    function = route.callback
    while not hasattr(function, DESCRIPTION_ATTRIBUTE) and hasattr(function, "__wrapped__"):
        function = function.__wrapped__
    return getattr(function, DESCRIPTION_ATTRIBUTE, None)


def api_routes(app: bottle.Bottle) -> list[bottle.Route]:
    return [route for route in app.routes if route.method in METHODS]


def undescribed(app: bottle.Bottle) -> list[str]:
    """``METHOD rule`` of each route without a description."""
    return [f"{route.method} {route.rule}" for route in api_routes(app) if description_of(route) is None]


def openapi_path(rule: str) -> tuple[str, list[dict]]:
    """A Bottle rule as an OpenAPI path, and its path parameters."""
    parameters = []

    def template(match: re.Match) -> str:
        name, wildcard_filter, config = match.groups()
        if wildcard_filter == "int":
            schema = {"type": "integer"}
        elif wildcard_filter == "re" and config:
            schema = {"type": "string", "pattern": f"^{config}$"}
        else:  # the default filter takes one segment; "path" takes the rest, slashes included
            schema = dict(PATH_PARAMETER_SCHEMAS.get(name, {"type": "string", "minLength": 1}))
        parameters.append({"name": name, "in": "path", "required": True, "schema": schema})
        return "{" + name + "}"

    return WILDCARD.sub(template, rule), parameters


def _content(media_types: Iterable[str], schema: dict | None) -> dict:
    """``reply`` describes the JSON reply; YAML replies are configs (a mapping); anything else is text or bytes."""
    def schema_of(media_type: str) -> dict:
        if media_type == JSON:
            return schema or {}
        return {"type": "object"} if "yaml" in media_type else {"type": "string"}

    return {media_type: {"schema": schema_of(media_type)} for media_type in media_types}


def _response(status: int) -> dict:
    if status < 400:
        return {"description": STATUS_TEXT.get(status, "no body")}
    return {"description": STATUS_TEXT.get(status, "error"), "content": {JSON: {"schema": ERROR_REFERENCE}}}


def operation(route: bottle.Route, described: dict) -> tuple[str, dict]:
    path, parameters = openapi_path(route.rule)
    for name, schema in described["query"].items():
        parameters.append({"name": name, "in": "query", "required": name in described["required"], "schema": schema})
    success = {"description": "success", "content": _content(described["reply_type"], described["reply"])}
    if described["headers"]:
        success["headers"] = {name: {"schema": schema} for name, schema in described["headers"].items()}
    statuses = (set(described["statuses"]) | set(AUTH_STATUSES)) - {described["reply_status"]}
    if described["body"] is not None:
        statuses |= set(BODY_STATUSES)
    responses = {str(described["reply_status"]): success} | {str(status): _response(status)
                                                            for status in sorted(statuses)}
    tag = path.strip("/").split("/")[0].split("{")[0] or "service"
    entry = {"summary": described["summary"], "operationId": route.method.lower() + re.sub(r"\W+", "_", path),
             "tags": [tag], "parameters": parameters, "responses": responses}
    if described["description"]:
        entry["description"] = described["description"]
    if described["body"] is not None:
        entry["requestBody"] = {"required": False, "content": {JSON: {"schema": described["body"]}}}
    return path, entry


def document(app: bottle.Bottle) -> dict:
    """The OpenAPI 3.1 document of every described route of ``app`` (tests require all are)."""
    paths: dict[str, dict] = {}
    for route in api_routes(app):
        described = description_of(route)
        if described is None:
            continue
        path, entry = operation(route, described)
        paths.setdefault(path, {})[route.method.lower()] = entry
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "opeva-spool", "version": __version__,
                 "description": "The HTTP API of opeva-spool, a filesystem-native job spooler. Every failure "
                                "is a JSON `Error`. With auth on, send `Authorization: Bearer <token>` "
                                "(docs/security.md)."},
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": {"Error": ERROR_SCHEMA},
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        # Anonymous with auth off (and for open reads), a bearer token otherwise.
        "security": [{}, {"bearer": []}],
    }


def install(app: bottle.Bottle, ctx) -> None:
    @app.get("/openapi.json", role=auth.PUBLIC)  # the contract holds no data: tools read it without a token
    @describe("This API's OpenAPI 3.1 document (built from the routes' own descriptions)",
              reply={"type": "object", "required": ["openapi", "info", "paths"]})
    def openapi_json():
        # Built per request: route modules installed after this one are in it too.
        return document(app)
