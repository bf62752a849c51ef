"""The HTTP client behind the ``opeva-spool`` client commands: where the server is and which token to
send (flags, environment, client config file, default), requests, and how a failed request becomes
one human line and an exit status.

Only the standard library (http.client): the client must run wherever the package does.
"""

import http.client
import json
import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO
from urllib.parse import urlencode, urlsplit

import yaml

DEFAULT_SERVER_URL = "http://127.0.0.1:8000"
CLIENT_TIMEOUT_SECONDS = 30
ENV_SERVER, ENV_TOKEN, ENV_CLIENT_CONFIG = "OPEVA_SERVER", "OPEVA_TOKEN", "OPEVA_CLIENT_CONFIG"
CONFIG_DIR_NAME, CONFIG_FILE_NAME = "opeva-spool", "client.yaml"
CONFIG_FILE_MODE = 0o600  # it holds the token
STREAM_CHUNK = 64 * 1024
SHOWN_BODY_CHARS = 200  # of a non-JSON error answer, in the one-line message

# Exit statuses of the client commands.
EXIT_OK = 0
EXIT_ERROR_ANSWER = 1  # the server answered with an error (or something that is not its API)
EXIT_REFUSED = 2  # bad arguments or client settings, or refused before asking the server
EXIT_UNREACHABLE = 3  # the server could not be reached, or the connection broke
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT


class ClientError(Exception):
    """A request that did not get the answer asked for: ``detail`` is the one line to show."""

    exit_code = EXIT_ERROR_ANSWER

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ServerRefused(ClientError):
    """The server answered with an error (its JSON ``{"error", "detail", ...extra}`` when it sent one)."""

    def __init__(self, status: int, error: str, detail: str, extra: Mapping | None = None) -> None:
        super().__init__(detail)
        self.status, self.error, self.extra = status, error, dict(extra or {})


class Unreachable(ClientError):
    exit_code = EXIT_UNREACHABLE


class BadClientConfig(ClientError):
    exit_code = EXIT_REFUSED


# ----- where the server is ---------------------------------------------------------------------

def default_config_path(environ: Mapping[str, str] = os.environ) -> str:
    """$OPEVA_CLIENT_CONFIG, else $XDG_CONFIG_HOME/opeva-spool/client.yaml (XDG default ~/.config)."""
    if environ.get(ENV_CLIENT_CONFIG):
        return environ[ENV_CLIENT_CONFIG]
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, CONFIG_DIR_NAME, CONFIG_FILE_NAME)


def read_config_file(path: str) -> dict:
    """The client config file's ``server`` and ``token``; {} when there is no file."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise BadClientConfig(f"cannot read the client config {path}: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(data.get(k, ""), str) for k in ("server", "token")):
        raise BadClientConfig(f"the client config {path} must be a mapping with string keys 'server' and 'token'")
    return {k: data[k] for k in ("server", "token") if data.get(k)}


def write_config_file(path: str, server: str | None, token: str | None) -> dict:
    """Set ``server``/``token`` (None keeps the file's, "" removes it) in the client config file, mode 0600."""
    values = read_config_file(path)
    for key, value in (("server", server), ("token", token)):
        if value is not None:
            values[key] = value
        if not values.get(key):
            values.pop(key, None)
    if values.get("server"):
        check_url(values["server"])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temp = f"{path}.tmp{os.getpid()}"
    # Created 0600 from the start: the token is never readable by others, not even for a moment.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, CONFIG_FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        yaml.safe_dump(values, handle, default_flow_style=False)
    os.chmod(temp, CONFIG_FILE_MODE)  # an old temp file of the same name kept its mode
    os.replace(temp, path)
    return values


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadClientConfig(f"the server URL must look like http://host:port, not {url!r}")
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        raise BadClientConfig(f"the server URL {url!r} has a bad port") from None
    return url.rstrip("/")


@dataclass(frozen=True)
class Target:
    """The server to talk to and the token to send, each with where it came from (shown by client-config)."""

    url: str
    token: str = ""
    config_path: str = ""
    sources: dict = field(default_factory=dict)


def resolve(server: str | None = None, token: str | None = None, config_path: str | None = None,
            environ: Mapping[str, str] = os.environ) -> Target:
    """Each of server and token from the flag, else the environment, else the client config file, else the default."""
    path = config_path or default_config_path(environ)
    from_file = read_config_file(path)
    found, sources = {}, {}
    for key, flag, env_name, default in (("server", server, ENV_SERVER, DEFAULT_SERVER_URL),
                                         ("token", token, ENV_TOKEN, "")):
        for value, source in ((flag, f"--{key}"), (environ.get(env_name), f"${env_name}"),
                              (from_file.get(key), path), (default, "default")):
            if value:
                found[key], sources[key] = value, source
                break
        else:
            found[key], sources[key] = default, "default"
    return Target(check_url(found["server"]), found["token"], path, sources)


# ----- requests -----------------------------------------------------------------------------------

@dataclass
class Answer:
    status: int
    headers: dict
    body: bytes

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            kind = self.headers.get("content-type", "no content type")
            raise ClientError(f"the server answered {self.status} with something that is not JSON ({kind}): "
                              f"{_shown(self.body)}") from None


def _shown(body: bytes) -> str:
    text = " ".join(body.decode("utf-8", "replace").split())
    return text[:SHOWN_BODY_CHARS] + ("..." if len(text) > SHOWN_BODY_CHARS else "") if text else "(empty)"


class Client:
    """Requests to one server; every failure is raised as a ClientError with one line to show."""

    def __init__(self, target: Target, timeout: float = CLIENT_TIMEOUT_SECONDS) -> None:
        self.target = target
        self.timeout = timeout
        parts = urlsplit(target.url)
        self._connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        self._netloc = parts.netloc.rpartition("@")[2]
        self._base_path = parts.path.rstrip("/")

    # The JSON API.

    def get(self, path: str, **query) -> object:
        return self.call("GET", path, query).json()

    def post(self, path: str, body: object = None, **query) -> object:
        return self.call("POST", path, query, body).json()

    def put(self, path: str, body: object = None, **query) -> object:
        return self.call("PUT", path, query, body).json()

    def delete(self, path: str, **query) -> object:
        return self.call("DELETE", path, query).json()

    def call(self, method: str, path: str, query: Mapping | None = None, body: object = None) -> Answer:
        """The whole answer to one request; an error status raises ServerRefused."""
        connection, response = self._open(method, path, query, body)
        try:
            answer = Answer(response.status, _headers(response), self._read(response.read))
        finally:
            connection.close()
        if answer.status >= 400:
            raise _refusal(answer)
        return answer

    def stream(self, path: str, **query) -> Iterator[bytes]:
        """The answer's body chunk by chunk as the server sends it (a log follow), with no read timeout."""
        connection, response = self._open("GET", path, query, None)
        try:
            if response.status >= 400:
                raise _refusal(Answer(response.status, _headers(response), self._read(response.read)))
            self._socket.settimeout(None)  # a quiet log sends nothing for as long as it is quiet
            while chunk := self._read(lambda: response.read1(STREAM_CHUNK)):
                yield chunk
        finally:
            connection.close()

    def download(self, path: str, out: BinaryIO) -> dict:
        """Copy the answer's body into ``out``; its headers."""
        connection, response = self._open("GET", path, None, None)
        try:
            if response.status >= 400:
                raise _refusal(Answer(response.status, _headers(response), self._read(response.read)))
            while chunk := self._read(lambda: response.read(STREAM_CHUNK)):
                out.write(chunk)
            return _headers(response)
        finally:
            connection.close()

    def _open(self, method, path, query, body):
        url = self._base_path + path
        query = {k: v for k, v in (query or {}).items() if v is not None and v is not False}
        if query:
            url += "?" + urlencode({k: (1 if v is True else v) for k, v in query.items()})
        headers = {"Accept": "application/json", "User-Agent": "opeva-spool-cli"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.target.token:
            headers["Authorization"] = f"Bearer {self.target.token}"
        connection = self._connection_class(self._netloc, timeout=self.timeout)
        try:
            connection.request(method, url, body=data, headers=headers)
            # Kept: http.client drops connection.sock once the answer says "Connection: close".
            self._socket = connection.sock
            return connection, connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise Unreachable(f"cannot reach the server at {self.target.url}: {_reason(exc)}") from None

    def _read(self, read):
        try:
            return read()
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(f"lost the connection to the server at {self.target.url}: {_reason(exc)}") from None


def _headers(response) -> dict:
    return {name.lower(): value for name, value in response.getheaders()}


def _reason(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, http.client.IncompleteRead):
        return "the answer was cut short"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _refusal(answer: Answer) -> ServerRefused:
    """The server's JSON error as a ServerRefused; an answer that is not one (a proxy's page) says what it was."""
    try:
        doc = json.loads(answer.body)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("detail"), str):
        extra = {k: v for k, v in doc.items() if k not in ("error", "detail")}
        return ServerRefused(answer.status, str(doc.get("error", "")), doc["detail"], extra)
    return ServerRefused(answer.status, "", f"the server answered {answer.status}: {_shown(answer.body)}")
