"""Two ways to talk to the app in tests: in-process WSGI calls, and a real waitress on 127.0.0.1."""

import io
import json
import socket
import threading
import urllib.error
import urllib.request
from urllib.parse import unquote_to_bytes, urlsplit

import waitress.server


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<Response {self.status} {self.body[:200]!r}>"


def _encode(body, json_body):
    if json_body is not None:
        return json.dumps(json_body).encode(), "application/json"
    if isinstance(body, str):
        body = body.encode()
    return body or b"", "application/octet-stream"


class Verbs:
    """get/post/put/delete over a ``request(method, url, **kw)``."""

    def get(self, url, **kw):
        return self.request("GET", url, **kw)

    def post(self, url, **kw):
        return self.request("POST", url, **kw)

    def put(self, url, **kw):
        return self.request("PUT", url, **kw)

    def delete(self, url, **kw):
        return self.request("DELETE", url, **kw)


class WsgiClient(Verbs):
    """Calls the WSGI app in this process: fast, and exceptions surface in the test."""

    def __init__(self, app):
        self.app = app

    def request(self, method, url, body=None, json=None, headers=None):
        parts = urlsplit(url)
        data, content_type = _encode(body, json)
        environ = {
            "REQUEST_METHOD": method,
            "PATH_INFO": unquote_to_bytes(parts.path).decode("latin-1"),  # as a real server decodes it
            "QUERY_STRING": parts.query,
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "CONTENT_LENGTH": str(len(data)),
            "CONTENT_TYPE": content_type,
            "wsgi.input": io.BytesIO(data),
            "wsgi.errors": io.StringIO(),
            "wsgi.url_scheme": "http",
            "wsgi.version": (1, 0),
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name, value in (headers or {}).items():
            environ["HTTP_" + name.upper().replace("-", "_")] = value
        captured = {}

        def start_response(status, response_headers, exc_info=None):
            captured["status"] = int(status.split()[0])
            captured["headers"] = dict(response_headers)

        chunks = self.app(environ, start_response)
        try:
            body = b"".join(chunks)
        finally:
            if hasattr(chunks, "close"):
                chunks.close()
        return Response(captured["status"], captured["headers"], body)


class HttpClient(Verbs):
    """Talks to a real server over TCP with urllib."""

    def __init__(self, base_url):
        self.base_url = base_url

    def request(self, method, url, body=None, json=None, headers=None, timeout=30):
        data, content_type = _encode(body, json)
        req = urllib.request.Request(self.base_url + url, data=data if method != "GET" else None, method=method)
        if method != "GET":
            req.add_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return Response(resp.status, dict(resp.headers), resp.read())
        except urllib.error.HTTPError as err:
            return Response(err.code, dict(err.headers), err.read())


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ThreadedServer:
    """waitress serving ``app`` on 127.0.0.1 in a daemon thread; use as a context manager."""

    def __init__(self, app):
        self.server = waitress.server.create_server(app, host="127.0.0.1", port=0, threads=8)
        self.port = self.server.effective_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.closing = False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            self.server.run()
        except (OSError, ValueError):
            if not self.closing:  # closing the sockets under the loop makes it raise: expected
                raise

    def __enter__(self):
        self.thread.start()
        return HttpClient(self.url)

    def __exit__(self, *exc):
        self.closing = True
        self.server.close()
        self.thread.join(5)
