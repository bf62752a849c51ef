"""The config store: experiment configs under ``configs/``, the one place that lists, reads,
writes, deletes, parses and keeps the history of them (the HTTP layer, job submission and
the inbox all come here).

    configs/<name>.yaml                          the current config
    configs/.history/<name>.yaml/<utc>-<sha8>.yaml   content that was replaced or deleted

A link in configs/ is never followed, listed, written through or removed: anyone who can
write to the share (a job's container can) could otherwise plant ``x.yaml -> /etc/...``
and read or probe files outside it through the API. Reads open with O_NOFOLLOW, so a link
swapped in after a check is refused too; writes are renames and links, which replace or
refuse a link and never write through it.
"""

from __future__ import annotations

import datetime
import enum
import errno
import hashlib
import math
import os
import stat
import threading
from typing import NamedTuple

import yaml

from . import fsio, names
from .exceptions import BadRequest, Conflict, NotFound

MAX_CONFIG_BYTES = 512 * 1024
# Real experiment configs nest a handful of levels; deeper input is refused before it can
# exhaust the stack in the YAML dumper or loader (both recurse per level).
MAX_CONFIG_DEPTH = 100
HISTORY_DIR = ".history"
LOCK_STRIPES = 16
# Prefix of the paths the API reports (``config_path``), relative to the shared root.
CONFIGS_PREFIX = "configs/"
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: a planted FIFO
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class WriteMode(str, enum.Enum):
    CREATE = "create"  # 409 if the name exists
    REPLACE = "replace"  # overwrite; the previous content goes to the history
    SAME = "same"  # 409 only if the name exists with other content (a re-submitted save_as)


class Saved(NamedTuple):
    """What a write did: the file name, whether a config of that name existed, and where its
    previous content was kept (None when nothing changed or nothing was there)."""

    file_name: str
    replaced: bool
    history_path: str | None


class ConfigStore:
    def __init__(self, configs_dir: str):
        self.configs_dir = configs_dir
        # A replace is read, keep, rename: two at once on one name could both keep the same old
        # content and lose the one between them, so writes and deletes of a name take its lock
        # (striped, so other names' writes and their fsyncs still run in parallel). The server
        # is the only API writer of configs/.
        self._locks = tuple(threading.Lock() for _ in range(LOCK_STRIPES))

    # ----- parse and serialise (no files) -------------------------------------------------

    @staticmethod
    def parse(text: str, source: str) -> dict:
        """The YAML mapping in ``text`` (safe_load only); 400 unless it is one."""
        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            # Where the parser gave up, 1-based, so that an editor can point at the line.
            mark = getattr(exc, "problem_mark", None)
            where = {"line": mark.line + 1, "column": mark.column + 1} if mark is not None else {}
            raise BadRequest(f"{source} is not valid YAML: {exc}", **where) from None
        except RecursionError:  # the loader recurses per nesting level
            raise _too_deep(source) from None
        if not isinstance(config, dict):
            raise BadRequest(f"{source} must be a YAML mapping")
        if nesting_depth(config) > MAX_CONFIG_DEPTH:
            raise _too_deep(source)
        return config

    @staticmethod
    def serialise(config: dict, source: str = "config") -> str:
        """YAML text for a config given as a JSON object; 400 if it nests too deeply to write."""
        if nesting_depth(config) > MAX_CONFIG_DEPTH:
            raise _too_deep(source)
        return yaml.safe_dump(config, sort_keys=False)

    # ----- reads --------------------------------------------------------------------------

    def list(self) -> list[str]:
        """Config file names, sorted; links and anything not a regular file are left out."""
        try:
            with os.scandir(self.configs_dir) as entries:
                return sorted(entry.name for entry in entries
                              if names.CONFIG_FILE.match(entry.name) and entry.is_file(follow_symlinks=False))
        except FileNotFoundError:
            return []

    def read_text(self, file_name: str) -> str:
        """The config's text; 404 if there is none, 400 for a link, a non-file, or too large."""
        file_name = names.config_file(file_name)
        data = self._read_bytes(file_name)
        if data is None:
            raise NotFound(f"no config {file_name!r}", file=file_name)
        return _decode(data, file_name)

    def read(self, file_name: str) -> dict:
        """The config parsed (a mapping)."""
        return self.parse(self.read_text(file_name), CONFIGS_PREFIX + names.config_file(file_name))

    def history(self, file_name: str) -> list[str]:
        """Paths (``configs/.history/<name>/...``) of the config's earlier contents, oldest first."""
        file_name = names.config_file(file_name)
        try:
            fd = self._history_dir(file_name, create=False)
        except FileNotFoundError:
            return []
        try:
            return [self._history_path(file_name, name) for name in sorted(os.listdir(fd))
                    if not name.startswith(".")]
        finally:
            os.close(fd)

    # ----- writes -------------------------------------------------------------------------

    def write(self, file_name: str, text: str, mode: WriteMode) -> Saved:
        """Save ``text`` as configs/<file_name> atomically (readers see the old or the new file)."""
        file_name = names.config_file(file_name)
        mode = WriteMode(mode)
        data = text.encode("utf-8")
        if len(data) > MAX_CONFIG_BYTES:
            raise BadRequest(f"config {file_name!r} is larger than {MAX_CONFIG_BYTES} bytes", file=file_name)
        with self._lock(file_name):
            old = self._read_bytes(file_name)  # also refuses a link before anything is written
            if old == data and mode != WriteMode.CREATE:
                return Saved(file_name, True, None)
            if mode == WriteMode.REPLACE:
                kept = self._keep(file_name, old) if old is not None else None
                # os.replace swaps a link planted since the read for our file; it never writes through it.
                fsio.atomic_write_bytes(self._path(file_name), data)
                return Saved(file_name, old is not None, kept)
            try:
                # A hard link: exclusive, and it refuses any existing name, a link included.
                fsio.atomic_create_bytes(self._path(file_name), data)
            except FileExistsError:
                self._refuse_non_file(file_name)
                why = ("already exists and overwrite is false" if mode == WriteMode.CREATE
                       else "already exists with other content; pass overwrite to replace it")
                raise Conflict(f"config {file_name!r} {why}", file=file_name) from None
            return Saved(file_name, False, None)

    def delete(self, file_name: str) -> str:
        """Remove the config, keeping its content in the history; returns where it was kept.

        A link is refused (400), not removed: the API never shows links, so it does not
        delete them either; whoever planted one removes it on the share.
        """
        file_name = names.config_file(file_name)
        with self._lock(file_name):
            old = self._read_bytes(file_name)
            if old is None:
                raise NotFound(f"no config {file_name!r}", file=file_name)
            kept = self._keep(file_name, old)
            try:
                os.unlink(self._path(file_name))
            except FileNotFoundError:  # removed on the share meanwhile: gone either way
                pass
        return kept

    # ----- internals ----------------------------------------------------------------------

    def _lock(self, file_name):
        return self._locks[hash(file_name) % LOCK_STRIPES]

    def _path(self, file_name):
        # The name is validated (no separators, no leading dot); links are dealt with where the file is opened.
        return os.path.join(self.configs_dir, file_name)

    def _read_bytes(self, file_name):
        """The file's bytes, None if missing; 400 for a link or anything but a regular file."""
        try:
            fd = os.open(self._path(file_name), _READ_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as exc:
            # ELOOP: the name is a link (O_NOFOLLOW). Anything else unreadable is the share's problem.
            if exc.errno == errno.ELOOP:
                raise _link_refused(file_name) from None
            raise
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise _link_refused(file_name)
            data = handle.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise BadRequest(f"config {file_name!r} is larger than {MAX_CONFIG_BYTES} bytes", file=file_name)
        return data

    def _refuse_non_file(self, file_name):
        try:
            mode = os.lstat(self._path(file_name)).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISREG(mode):
            raise _link_refused(file_name)

    def _history_dir(self, file_name, create):
        """An fd of configs/.history/<file_name>/, opened level by level without following links."""
        fd = os.open(self.configs_dir, _DIR_FLAGS & ~os.O_NOFOLLOW)  # configs/ itself may be a mount or link
        try:
            for part in (HISTORY_DIR, file_name):
                if create:
                    try:
                        os.mkdir(part, dir_fd=fd)
                    except FileExistsError:
                        pass
                try:
                    inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise BadRequest(f"configs/{HISTORY_DIR} holds a link or a file where a folder belongs; "
                                         "links in configs/ are refused") from None
                    raise
                os.close(fd)
                fd = inner
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _keep(self, file_name, data):
        """Save ``data`` (the content being replaced or deleted) in the history; returns its path.

        Written and fsynced before the config changes: a crash here leaves the config as it was
        (and at worst a partial copy in the history, which is an archive nobody reads back).
        """
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        name = f"{stamp}-{hashlib.sha256(data).hexdigest()[:8]}.yaml"
        fd = self._history_dir(file_name, create=True)
        try:
            try:
                out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644, dir_fd=fd)
            except FileExistsError:  # same microsecond, same content: already kept
                return self._history_path(file_name, name)
            with os.fdopen(out, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.fsync(fd)
        finally:
            os.close(fd)
        return self._history_path(file_name, name)

    @staticmethod
    def _history_path(file_name, name):
        return f"{CONFIGS_PREFIX}{HISTORY_DIR}/{file_name}/{name}"


def _decode(data, file_name):
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"config {file_name!r} is not UTF-8 text", file=file_name) from None


def _link_refused(file_name):
    return BadRequest(f"configs/{file_name} is a link or not a regular file; links in configs/ are refused "
                      "(they could reach files outside the shared root)", file=file_name)


def _too_deep(source):
    return BadRequest(f"{source} nests deeper than {MAX_CONFIG_DEPTH} levels")


def nesting_depth(value: object) -> float:
    """How deep lists and mappings nest in ``value``; a cycle (a YAML alias can make one) is infinite.

    Iterative, so measuring cannot exhaust the stack itself, and each container is measured
    once, so shared nodes (YAML aliases, "billion laughs") cost nothing extra.
    """
    heights, open_ids = {}, set()
    stack = [(value, False)]
    while stack:
        node, measured_children = stack.pop()
        if not isinstance(node, (dict, list)):
            continue
        key = id(node)
        children = [child for child in (node.values() if isinstance(node, dict) else node)
                    if isinstance(child, (dict, list))]
        if measured_children:
            open_ids.discard(key)
            heights[key] = 1 + max((heights[id(child)] for child in children), default=0)
        elif key in open_ids:  # reached again from inside itself
            return math.inf
        elif key not in heights:
            open_ids.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in children)
    return heights.get(id(value), 0)
