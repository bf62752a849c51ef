"""The web dashboard: its pages and static files under /ui/ (files in opeva_spool/ui/; docs/dashboard.md).

The pages are plain HTML with one ES module each; they call the JSON API from the browser, so
this module only serves files. Every answer carries ``Cache-Control: no-cache`` with an ETag and a
Last-Modified: a browser revalidates each file (a cheap 304) and never runs the JavaScript of an
older package against the HTML of a newer one.
"""

import os
import re

import bottle

from ..exceptions import NotFound
from .app import Context

UI_PATH = "/ui/"
UI_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ui")
# Page name in the URL -> its file; "" is /ui/ itself.
PAGES = {"": "jobs.html", "index.html": "jobs.html", "jobs": "jobs.html", "job": "job.html", "hosts": "hosts.html",
         "configs": "configs.html", "datasets": "datasets.html"}
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml",
                 "": "text/plain; charset=utf-8"}  # LICENSE files
# Each path segment: a plain file or folder name (no dot files, so no "..", no hidden files).
ASSET_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
CACHE_CONTROL = "no-cache"
# The pages load only their own files and talk only to this server; inline style attributes are the
# progress bars' widths. A value planted in a job's name or log is text, never markup, and this keeps it so.
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                           "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


def wants_html(accept: str) -> bool:
    """True when an Accept header ranks text/html above application/json (a browser's does; curl's
    ``*/*`` and an API client's ``application/json`` do not)."""
    return _quality(accept, "text/html") > _quality(accept, "application/json")


def _quality(accept: str, media_type: str) -> float:
    """The q value ``accept`` gives ``media_type``: that of its most specific matching range (RFC 9110 12.5.1)."""
    kind = media_type.split("/")[0]
    best_specificity, best_q = -1, 0.0
    for part in accept.split(","):
        fields = [field.strip() for field in part.split(";")]
        media_range, q = fields[0].lower(), 1.0
        for param in fields[1:]:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        specificity = {media_type: 2, f"{kind}/*": 1, "*/*": 0}.get(media_range, -1)
        if specificity > best_specificity:
            best_specificity, best_q = specificity, q
    return best_q


def _send(relative_path: str):
    content_type = CONTENT_TYPES.get(os.path.splitext(relative_path)[1], "application/octet-stream")
    response = bottle.static_file(relative_path, root=UI_ROOT, mimetype=content_type)
    if response.status_code >= 400:  # missing (or unreadable) in the package
        raise NotFound(f"no dashboard file {relative_path!r}", path=relative_path)
    response.set_header("Cache-Control", CACHE_CONTROL)
    response.set_header("X-Content-Type-Options", "nosniff")
    if relative_path.endswith(".html"):
        response.set_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    return response


def install(app: bottle.Bottle, ctx: Context) -> None:
    @app.get("/ui")
    def ui_without_slash():
        bottle.redirect(UI_PATH)  # relative asset URLs in the pages need the slash

    @app.get("/ui/")
    @app.get("/ui/<path:path>")
    def page_or_file(path=""):
        if path in PAGES:
            return _send(PAGES[path])
        segments = path.split("/")
        if not all(ASSET_SEGMENT.fullmatch(segment) for segment in segments):
            raise NotFound(f"no dashboard file {path!r}", path=path)
        return _send("/".join(segments))
