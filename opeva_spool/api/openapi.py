"""The API's OpenAPI description, written next to each route with ``describe``.

A route function carries its own description (``describe`` stores it on the function), so the
document cannot drift from the routes: it is built from the app's routes as they are installed.
"""

from collections.abc import Callable
from typing import TypeVar

Route = TypeVar("Route", bound=Callable)
DESCRIPTION_ATTRIBUTE = "openapi"


def describe(summary: str, *, query: dict[str, dict] | None = None, required: tuple[str, ...] = (),
             body: dict | None = None, reply: dict | None = None, reply_type: str = "application/json",
             statuses: tuple[int, ...] = ()) -> Callable[[Route], Route]:
    """Describe a route: ``query`` maps parameter names to JSON Schemas (``required`` lists the mandatory
    ones), ``body`` and ``reply`` are JSON Schemas, ``statuses`` the error statuses it may answer.
    Path parameters come from the route's rule. Put it under the ``@app.get(...)`` line."""
    def attach(function: Route) -> Route:
        setattr(function, DESCRIPTION_ATTRIBUTE, {"summary": summary, "query": query or {}, "required": required,
                                                  "body": body, "reply": reply, "reply_type": reply_type,
                                                  "statuses": statuses})
        return function

    return attach
