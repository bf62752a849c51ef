"""Job folders dropped onto the share: ``spool/inbox/<folder>/job.json`` (+ optional config).

A folder is accepted exactly like ``POST /run-simulation`` with job.json as the body and
the folder's name as the job id (unless job.json names one). A folder holding ``sweep.json``
instead is a sweep, accepted like ``POST /sweeps`` with the folder's name as the sweep id
(unless sweep.json names one), and otherwise handled as a job's folder. Anything the inbox
will not take is set aside into ``spool/rejected/<folder>.<hex>/`` with a ``reason.json``;
one folder never blocks the rest, whatever it holds.

Ingestion is idempotent for the folder itself, and only for it: before publishing, the
inbox writes an ingest token into the folder and records ``<folder>.<token>`` in the job
(job_info ``inbox_folder``; a sweep's manifest for a sweep). If the server dies after
publishing but before removing the folder, the next scan finds the job carrying this
folder's token and only removes the folder; any other folder whose job id is taken (a later
folder of the same name too) is rejected with "job id taken".

The folder, job.json and the config are opened without following links: a link could
point anywhere on the server's host, and its content would be published into configs/.
"""

import errno
import json
import logging
import os
import re
import stat
import threading
import uuid

from . import fsio, names
from .configs import MAX_CONFIG_BYTES
from .exceptions import Conflict, SpoolError

log = logging.getLogger(__name__)

SOURCE = "inbox"
JOB_FILE = "job.json"
SWEEP_FILE = "sweep.json"
CONFIG_FILES = ("config.yaml", "config.yml")
TOKEN_FILE = ".ingest-token"
TOKEN = re.compile(r"^[0-9a-f]{12}$")
# A job.json that does not parse, or a folder without one, may still be being copied.
SETTLE_SECONDS = 5.0


class Refused(Exception):
    """A folder the inbox does not take; the message is the reason recorded beside it."""


class Inbox:
    def __init__(self, spool, jobs, sweeps=None):
        self.spool = spool
        self.jobs = jobs
        self.sweeps = sweeps  # a SweepService, or None: sweep.json folders are then not taken
        self._lock = threading.Lock()  # one scan at a time (start-up and maintenance both scan)

    def scan(self):
        """Ingest every complete folder; returns {folder: job_id or "rejected: <reason>"}."""
        outcome = {}
        with self._lock:
            for folder in sorted(fsio.listdir(self.spool.inbox_dir)):
                path = os.path.join(self.spool.inbox_dir, folder)
                try:
                    outcome[folder] = self.ingest(folder, path)
                except OSError as exc:  # moved or vanished under us, or the share hiccuped: the next scan decides
                    log.warning("inbox folder %s: %s", folder, exc)
                except Exception as exc:  # whatever one folder holds, it must not stop the others
                    log.exception("inbox folder %s could not be ingested", folder)
                    outcome[folder] = self._reject_quietly(folder, path, f"cannot be ingested: {exc!r}")
        return {folder: result for folder, result in outcome.items() if result is not None}

    def ingest(self, folder, path):
        """Publish one folder's job and remove the folder; the job id, "rejected: ...", or None (not yet)."""
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            return self.reject(folder, path, "a symbolic link, not a folder: links are refused in the inbox")
        if not stat.S_ISDIR(mode):
            if fsio.age(path) < SETTLE_SECONDS:
                return None
            return self.reject(folder, path, f"a file, not a folder: drop a folder holding a {JOB_FILE}")
        # Race: the folder may have been swapped for a link since the lstat; O_NOFOLLOW refuses it (ELOOP).
        dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            return self._ingest_folder(folder, path, dir_fd)
        except Refused as refused:
            return self.reject(folder, path, str(refused))
        finally:
            os.close(dir_fd)

    def _ingest_folder(self, folder, path, dir_fd):
        sweep = self.sweeps is not None and _present(dir_fd, SWEEP_FILE)
        kind, file_name = ("sweep", SWEEP_FILE) if sweep else ("job", JOB_FILE)
        body = self._body(path, dir_fd, file_name)
        if body is None:
            return None
        item_id = body.get(f"{kind}_id") or folder
        try:
            names.job_id(item_id)
            body = dict(body, **self._config_from_folder(dir_fd, body))
            drop = f"{folder}.{_token(dir_fd)}"
            if sweep:
                self.sweeps.submit(dict(body, sweep_id=item_id), origin=SOURCE, inbox_folder=drop)
            else:
                self.jobs.submit(body, origin=SOURCE, job_id=item_id, inbox_folder=drop)
        except Conflict as exc:
            record = (self.sweeps.manifest(item_id) if sweep
                      else fsio.read_json_object(self.spool.folder(item_id).job_info))
            if record is None:
                raise Refused(exc.detail) from None  # not the id: a config name taken with other content
            if record.get("inbox_folder") != drop:
                raise Refused(f"{kind} id taken: {kind} {item_id!r} already exists") from None
            # else this very folder was published before a crash
        except SpoolError as exc:
            raise Refused(exc.detail) from None
        self.spool.trash(path)
        log.info("inbox folder %s accepted as %s %s", folder, kind, item_id)
        return item_id

    def _body(self, path, dir_fd, file_name):
        """The object in job.json or sweep.json (``file_name``); None while the folder may still be arriving."""
        handle = _open_plain(dir_fd, file_name)
        if handle is None:
            if fsio.age(path) < SETTLE_SECONDS:
                return None
            raise Refused(f"no {file_name} in the folder")
        with handle:
            data = _read_limited(handle, file_name, self.jobs.settings.max_body_bytes)
        try:
            body = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            if fsio.age(os.path.join(path, file_name)) < SETTLE_SECONDS:
                return None
            raise Refused(f"{file_name} is not valid JSON") from None
        except RecursionError:
            raise Refused(f"{file_name} is nested too deeply") from None
        if not isinstance(body, dict):
            raise Refused(f"{file_name} must hold a JSON object")
        return body

    def _config_from_folder(self, dir_fd, body):
        """A config file shipped inside the folder becomes an inline config (saved as <job_id>.yaml)."""
        if body.get("config") is not None or body.get("config_path"):
            return {}
        for name in CONFIG_FILES:
            handle = _open_plain(dir_fd, name)
            if handle is not None:
                with handle:
                    data = _read_limited(handle, name, MAX_CONFIG_BYTES)
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError:
                    raise Refused(f"{name} is not UTF-8 text") from None
                return {"config": self.jobs.configs.parse(text, name)}
        return {}

    def reject(self, folder, path, reason):
        self.spool.set_aside(path, SOURCE, reason, folder=folder)
        return f"rejected: {reason}"

    def _reject_quietly(self, folder, path, reason):
        try:
            return self.reject(folder, path, reason)
        except Exception:
            log.exception("inbox folder %s cannot be set aside either; it is tried again at the next scan", folder)
            return None


def _open_plain(dir_fd, name):
    """The regular file ``name`` of the folder, opened without following a link; None if it is missing."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)  # a FIFO must not block
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Refused(f"{name} is a symbolic link; drop folders may not hold links") from None
        raise
    handle = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        handle.close()
        raise Refused(f"{name} is not a regular file")
    return handle


def _present(dir_fd, name):
    """Whether the folder has an entry ``name`` (of any kind: _open_plain judges it when it is read)."""
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _read_limited(handle, name, limit):
    data = handle.read(limit + 1)
    if len(data) > limit:
        raise Refused(f"{name} is larger than {limit} bytes")
    return data


def _token(dir_fd):
    """The folder's ingest token, made once before its job is published (see the module's doc)."""
    handle = _open_plain(dir_fd, TOKEN_FILE)
    if handle is not None:
        with handle:
            token = handle.read(64).decode("ascii", "replace").strip()
        if not TOKEN.match(token):
            raise Refused(f"{TOKEN_FILE} holds no ingest token")
        return token
    token = uuid.uuid4().hex[:12]
    fd = os.open(TOKEN_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=dir_fd)
    with os.fdopen(fd, "w") as handle:
        handle.write(token)
        handle.flush()
        os.fsync(handle.fileno())  # it must outlive an OS crash as long as the job it names
    return token
