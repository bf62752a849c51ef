"""Who is calling: the identity a request carries, the roles it holds, and the tokens file behind them.

The auth plugin (api/app.py) resolves a request's credential to an ``Identity`` through an
``Authenticator`` and leaves it in the WSGI environ; routes and services ask ``current()``. With
auth off every caller is the anonymous identity holding every role, so code below never branches
on "is auth on". docs/security.md says what each role may do.

The tokens file holds, per token, a user name, roles and a salted scrypt hash of the token, never
the token itself. A token is ``<id>.<secret>``: the id finds its entry, so a request costs one
hash, and a verified token is remembered (until the file changes) so that it costs one only once.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass

import bottle
import yaml

from . import fsio, names
from .exceptions import BadRequest, Forbidden, SettingsError
from .jobs import utc_now

log = logging.getLogger(__name__)

READ, SUBMIT, ADMIN, WORKER = "read", "submit", "admin", "worker"
ALL_ROLES = frozenset((READ, SUBMIT, ADMIN, WORKER))
# A route anyone may call, auth on or off (the dashboard's files, /health): set as a route's ``role=``.
PUBLIC = "public"
ENVIRON_KEY = "opeva.identity"
# The cookie the dashboard sets for what cannot send a header (EventSource, download links); reads only.
TOKEN_COOKIE = "opeva_token"
# The identity of the single ``api_token`` setting: an admin, as that token could always do everything.
API_TOKEN_USER = "admin"
REALM = "opeva-spool"

# scrypt at the cost OWASP suggests for interactive logins: ~50 ms and 16 MiB per check. Tokens are
# random (no dictionary to try), so this only makes a stolen file useless for guessing; each check
# runs once per token and file version (see TokenFile.identify).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SCRYPT_MAXMEM = 64 * 1024 * 1024
SALT_BYTES = 16
HASH_BYTES = 32
TOKEN_ID_BYTES = 6  # 12 hex digits: finds the entry; not secret
TOKEN_SECRET_BYTES = 32
TOKEN_ID = re.compile(rf"^[0-9a-f]{{{TOKEN_ID_BYTES * 2}}}$")
USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")
# How often a request may look whether the tokens file changed (a stat; on NFS a round trip).
RELOAD_CHECK_SECONDS = 1.0
VERIFIED_CACHE_LIMIT = 4096
TOKENS_FILE_MODE = 0o600
LOCK_SUFFIX = ".lock"


@dataclass(frozen=True)
class Identity:
    """A caller: ``user`` is None when auth is off (nobody is known, everybody may do everything)
    and for an unauthenticated read when reads are open (then it holds only ``read``)."""

    user: str | None
    roles: frozenset[str]

    @property
    def authenticated(self) -> bool:
        return self.user is not None

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.roles

    def require(self, role: str) -> None:
        if role not in self.roles and ADMIN not in self.roles:
            raise Forbidden(f"{self.user or 'this caller'} lacks the {role!r} role", role=role)

    def check_worker(self, worker_id: str) -> None:
        """A worker credential acts only for the worker it names (an admin, or anyone with auth off, for any)."""
        self.require(WORKER)
        if not self.is_admin and self.user != worker_id:  # with auth off every caller is ANONYMOUS, an admin
            raise Forbidden(f"the credential of worker {self.user!r} cannot act as worker {worker_id!r}",
                            worker_id=worker_id)

    def submitter(self, claimed: object) -> object:
        """The ``submitted_by`` a submission of this caller gets: a user's own name, whatever the body says
        (so existing clients that send a local user name keep working, and nobody submits as someone
        else); an admin may name anyone, and is the submitter when naming nobody."""
        if not self.authenticated or (self.is_admin and claimed not in (None, "")):
            return claimed
        return self.user

    def check_owner(self, owner: str, what: str) -> None:
        """Only the submitter of ``what`` (or an admin, or anyone with auth off) may change it."""
        # Only an admin skips the check (ANONYMOUS, with auth off, is one); a caller without a user (an open
        # read, a public route) owns nothing.
        if not self.is_admin and owner != self.user:
            raise Forbidden(f"{what} was submitted by {owner or 'nobody known'!r}, not {self.user}; "
                            "only its submitter or an admin may change it", owner=owner)


ANONYMOUS = Identity(None, ALL_ROLES)
OPEN_READER = Identity(None, frozenset((READ,)))  # no token, where reads are open
NOBODY = Identity(None, frozenset())  # on a public route with auth on: no credential was looked at


def current() -> Identity:
    """The identity of the request being served (ANONYMOUS outside a request or with auth off)."""
    try:
        return bottle.request.environ.get(ENVIRON_KEY, ANONYMOUS)
    except RuntimeError:  # no request bound to this thread
        return ANONYMOUS


# ----- hashing --------------------------------------------------------------------------------


def hash_token(token: str, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$<salt>$<hash>`` (base64) of ``token``, with a fresh random salt unless given."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.scrypt(token.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=SCRYPT_MAXMEM,
                            dklen=HASH_BYTES)
    return "$".join(("scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(digest)))


def verify_token(token: str, stored: str) -> bool:
    """Whether ``token`` hashes to ``stored``; the comparison takes the same time wherever they differ."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(token.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                                maxmem=SCRYPT_MAXMEM, dklen=len(expected))
    except (ValueError, TypeError):  # a malformed hash matches nothing
        return False
    return hmac.compare_digest(actual, expected)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def new_token() -> tuple[str, str]:
    """(id, token) of a fresh random token ``<id>.<secret>``."""
    token_id = secrets.token_hex(TOKEN_ID_BYTES)
    return token_id, f"{token_id}.{secrets.token_urlsafe(TOKEN_SECRET_BYTES)}"


# ----- the tokens file ------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenEntry:
    id: str
    user: str
    roles: frozenset[str]
    hash: str
    created_at: str = ""

    def to_dict(self) -> dict:
        return {"id": self.id, "user": self.user, "roles": sorted(self.roles), "hash": self.hash,
                "created_at": self.created_at}


def parse_roles(value: object) -> frozenset[str]:
    """Roles from a list or a comma-separated string; 400 for an unknown one or none."""
    parts = value.split(",") if isinstance(value, str) else value
    if not isinstance(parts, (list, tuple)) or not all(isinstance(part, str) for part in parts):
        raise BadRequest(f"roles must be a list of {sorted(ALL_ROLES)}")
    roles = frozenset(part.strip() for part in parts if part.strip())
    unknown = roles - ALL_ROLES
    if unknown or not roles:
        raise BadRequest(f"roles must be some of {sorted(ALL_ROLES)}, not {sorted(unknown) or 'none'}")
    return roles


def check_user(user: object, roles: frozenset[str]) -> str:
    """A user name; a worker's is the host name it works as (it reaches paths: validated as one)."""
    if not isinstance(user, str) or not USER.match(user):
        raise BadRequest(f"invalid user name {user!r}: letters, digits and _.@- (at most 128)")
    if WORKER in roles:
        names.host(user)
    return user


def read_tokens(path: str) -> list[TokenEntry]:
    """The entries of a tokens file ([] when it does not exist); SettingsError when it is malformed."""
    try:
        with open(path, encoding="utf-8") as handle:
            loaded = yaml.safe_load(handle)  # YAML, and so JSON too
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise SettingsError(f"cannot read the tokens file {path}: {exc.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SettingsError(f"the tokens file {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    loaded = loaded or {}
    items = loaded.get("tokens") if isinstance(loaded, dict) else None
    if not isinstance(items, list):
        raise SettingsError(f"the tokens file {path} must be a mapping with a list 'tokens'")
    entries = []
    for number, item in enumerate(items, 1):
        try:
            if not isinstance(item, dict):
                raise BadRequest("not a mapping")
            if not isinstance(item.get("id"), str) or not TOKEN_ID.match(item["id"]):
                raise BadRequest(f"'id' must be {TOKEN_ID_BYTES * 2} hex digits")
            if not isinstance(item.get("hash"), str) or not item["hash"].startswith("scrypt$"):
                raise BadRequest("'hash' must be a scrypt hash (made by 'opeva-spool token add')")
            roles = parse_roles(item.get("roles"))
            entries.append(TokenEntry(item["id"], check_user(item.get("user"), roles), roles, item["hash"],
                                      str(item.get("created_at") or "")))
        except BadRequest as exc:
            raise SettingsError(f"token {number} in {path}: {exc.detail}") from None
    return entries


def write_tokens(path: str, entries: list[TokenEntry]) -> None:
    """Replace the tokens file atomically (a running server reads either the old or the new one), mode 0600."""
    data = yaml.safe_dump({"tokens": [entry.to_dict() for entry in entries]}, sort_keys=False).encode()
    directory = os.path.dirname(os.path.abspath(path))
    tmp = fsio.temp_name(directory, os.path.basename(path))
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, TOKENS_FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        fsio.unlink_quietly(tmp)
        raise
    fsio.fsync_dir(directory)


@contextlib.contextmanager
def _editing(path: str):
    """Hold the tokens file's lock (``<path>.lock``, flock) while it is read, changed and written, so two
    ``token add`` run at once both land. The server only reads the file and takes no lock."""
    fd = os.open(path + LOCK_SUFFIX, os.O_WRONLY | os.O_CREAT, TOKENS_FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def add_token(path: str, user: str, roles: frozenset[str]) -> tuple[TokenEntry, str]:
    """Make a token for ``user`` with ``roles``, store its hash; returns the entry and the token (shown once)."""
    check_user(user, roles)
    token_id, token = new_token()
    entry = TokenEntry(token_id, user, roles, hash_token(token), utc_now())
    with _editing(path):
        write_tokens(path, [*read_tokens(path), entry])
    return entry, token


def remove_tokens(path: str, which: str) -> list[TokenEntry]:
    """Remove the token with id ``which``, or every token of user ``which``; returns what was removed."""
    with _editing(path):
        entries = read_tokens(path)
        removed = [entry for entry in entries if which in (entry.id, entry.user)]
        if removed:
            write_tokens(path, [entry for entry in entries if entry not in removed])
    return removed


class TokenFile:
    """The tokens file as a running server sees it: re-read when it changed (looked at most every
    RELOAD_CHECK_SECONDS), so adding or revoking a token needs no restart.

    A file that cannot be read or parsed grants nothing (logged) until it is fixed: a typo made while
    revoking a token must not leave the old file's tokens valid. A missing file grants nothing either.
    """

    def __init__(self, path: str, check_every: float = RELOAD_CHECK_SECONDS) -> None:
        self.path = path
        self.check_every = check_every
        self._lock = threading.Lock()
        self._signature = None
        self._loaded = False
        self._checked_at = None
        self._by_id: dict[str, TokenEntry] = {}
        self._verified: dict[bytes, Identity] = {}  # sha256(token) -> identity, for this version of the file
        self._refresh()

    def identify(self, token: str) -> Identity | None:
        """The identity of a token in the file, or None."""
        self._refresh()
        token_id = token.split(".", 1)[0]
        entry = self._by_id.get(token_id)
        if entry is None:
            return None
        key = hashlib.sha256(token.encode()).digest()
        identity = self._verified.get(key)
        if identity is None and verify_token(token, entry.hash):
            identity = Identity(entry.user, entry.roles)
            with self._lock:
                if len(self._verified) >= VERIFIED_CACHE_LIMIT:
                    self._verified.clear()
                # Only if the file was not reloaded meanwhile: a revoked token must not come back.
                if self._by_id.get(token_id) is entry:
                    self._verified[key] = identity
        return identity

    def _refresh(self) -> None:
        now = time.monotonic()
        if self._checked_at is not None and now - self._checked_at < self.check_every:
            return
        with self._lock:
            self._checked_at = now
            signature = self._stat()
            if self._loaded and signature == self._signature:
                return
            self._loaded = True
            self._signature = signature
            try:
                entries = read_tokens(self.path)
                if signature is None:
                    log.warning("the tokens file %s does not exist: it grants no access", self.path)
            except SettingsError as exc:
                log.error("%s; until it is fixed no token of that file is accepted", exc.detail)
                entries = []
            self._by_id = {entry.id: entry for entry in entries}
            self._verified = {}

    def _stat(self):
        """What changes when the file is replaced or edited: its inode, size and modification time."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return ("unreadable", exc.errno)
        return (st.st_ino, st.st_size, st.st_mtime_ns)


class Authenticator:
    """Turns a request's credential into an Identity: the tokens file's tokens and the single ``api_token``
    (an admin). ``enabled`` is False when neither is configured: then everybody is ANONYMOUS."""

    def __init__(self, api_token: str = "", tokens_file: str = "", open_reads: bool | None = None) -> None:
        self.api_token = api_token.encode() if api_token else None
        self.tokens = TokenFile(tokens_file) if tokens_file else None
        # Compatible default: with only api_token set, reads stay open as they always were.
        self.open_reads = self.tokens is None if open_reads is None else open_reads

    @property
    def enabled(self) -> bool:
        return self.api_token is not None or self.tokens is not None

    def identify(self, credential: str) -> Identity | None:
        """The identity a credential stands for, or None for one that is not valid."""
        # compare_digest takes the same time wherever the two differ: no guessing the api_token by timing.
        if self.api_token is not None and hmac.compare_digest(credential.encode("utf-8", "replace"), self.api_token):
            return Identity(API_TOKEN_USER, ALL_ROLES)
        if self.tokens is not None:
            return self.tokens.identify(credential)
        return None
