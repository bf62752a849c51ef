"""The web dashboard: its pages and static files under /ui/ (files in opeva_spool/ui/; docs/dashboard.md).

A page is rendered by the server from one layout (``ui/layout.html``: head, styles, scripts) and
the page's body (``ui/pages/<name>.html``), once per process: the files are part of the package.
The page's ES module then calls the JSON API from the browser. Every answer carries
``Cache-Control: no-cache`` with an ETag: a browser revalidates each file (a cheap 304) and never
runs the JavaScript of an older package against the HTML of a newer one.
"""

import functools
import hashlib
import os
import re
from typing import NamedTuple

import bottle

from .. import auth
from ..exceptions import NotFound
from .app import Context
from .openapi import describe

UI_PATH = "/ui/"
UI_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ui")


class Page(NamedTuple):
    title: str
    name: str  # its body is pages/<name>.html, its module <name>.js
    plots: bool = False  # loads the vendored uPlot


JOBS_PAGE = Page("Jobs", "jobs")
# Page name in the URL -> the page; "" is /ui/ itself.
PAGES = {"": JOBS_PAGE, "index.html": JOBS_PAGE, "jobs": JOBS_PAGE, "job": Page("Job", "job", plots=True),
         "hosts": Page("Hosts", "hosts"), "configs": Page("Configs", "configs"),
         "queue": Page("Queue", "queue"), "sweeps": Page("Sweeps", "sweeps"), "sweep": Page("Sweep", "sweep"),
         "usage": Page("Usage", "usage"),
         "datasets": Page("Datasets", "datasets", plots=True), "api": Page("API", "api")}
HTML = "text/html; charset=utf-8"
CONTENT_TYPES = {".js": "text/javascript; charset=utf-8",
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


@functools.cache
def _rendered(page: Page) -> tuple[bytes, str]:
    """The page's HTML and its ETag."""
    with open(os.path.join(UI_ROOT, "layout.html"), encoding="utf-8") as layout, \
            open(os.path.join(UI_ROOT, "pages", f"{page.name}.html"), encoding="utf-8") as body:
        html = bottle.SimpleTemplate(layout.read()).render(
            title=page.title, script=f"{page.name}.js", plots=page.plots, body=body.read()).encode()
    return html, '"' + hashlib.sha256(html).hexdigest()[:32] + '"'


def _send_page(page: Page):
    html, etag = _rendered(page)
    headers = {"ETag": etag, "Content-Security-Policy": CONTENT_SECURITY_POLICY}
    if bottle.request.get_header("If-None-Match") == etag:
        return _with_common_headers(bottle.HTTPResponse(status=304, **headers))
    return _with_common_headers(bottle.HTTPResponse(html, Content_Type=HTML, **headers))


def _send_file(relative_path: str):
    extension = os.path.splitext(relative_path)[1]
    if extension == ".html":  # the layout and the page bodies are templates: pages are served by name
        raise NotFound(f"no dashboard file {relative_path!r}", path=relative_path)
    content_type = CONTENT_TYPES.get(extension, "application/octet-stream")
    response = bottle.static_file(relative_path, root=UI_ROOT, mimetype=content_type)
    if response.status_code >= 400:  # missing (or unreadable) in the package
        raise NotFound(f"no dashboard file {relative_path!r}", path=relative_path)
    return _with_common_headers(response)


def _with_common_headers(response: bottle.HTTPResponse) -> bottle.HTTPResponse:
    response.set_header("Cache-Control", CACHE_CONTROL)
    response.set_header("X-Content-Type-Options", "nosniff")
    return response


def install(app: bottle.Bottle, ctx: Context) -> None:
    # The pages and their files hold no data (the data comes from API calls, which need the token).
    @app.get("/ui", role=auth.PUBLIC)
    @describe("The dashboard (redirects to /ui/)", reply_type="text/html", statuses=(303,))
    def ui_without_slash():
        bottle.redirect(UI_PATH)  # relative asset URLs in the pages need the slash

    @app.get("/ui/", role=auth.PUBLIC)
    @app.get("/ui/<path:path>", role=auth.PUBLIC)
    @describe("A dashboard page or one of its files", reply_type=("text/html", "text/javascript", "text/css",
                                                                   "image/png", "image/svg+xml", "text/plain"),
              statuses=(304, 404))
    def page_or_file(path=""):
        if path in PAGES:
            return _send_page(PAGES[path])
        segments = path.split("/")
        if not all(ASSET_SEGMENT.fullmatch(segment) for segment in segments):
            raise NotFound(f"no dashboard file {path!r}", path=path)
        return _send_file("/".join(segments))
