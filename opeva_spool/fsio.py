"""Small filesystem primitives with the NFS rules of docs/spool.md built in.

- Writes of state files go temp -> flush -> fsync -> close -> os.replace in the same
  directory, then fsync the directory, so a reader sees the old or the new file, never half.
- Reads tolerate what a moving tree does: a missing file, ESTALE, and a half-written
  JSON document (the training image writes result.json with a plain write) all read
  as ``None`` ("not ready"), never as an exception.
- Files a job wrote are read with ``open_inside``: a job can plant links and special files
  in its folder, and the server must never serve what they point at.
"""

import contextlib
import ctypes
import errno
import json
import os
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterable

from . import crashpoints

# ESTALE: the file was replaced or removed by another NFS client while we looked.
_GONE = (errno.ENOENT, errno.ESTALE, errno.ENOTDIR)


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class GroupCommit:
    """Durability shared by concurrent writers: group commit, as databases do it.

    A caller hands ``sync`` the paths it needs durable and returns only once a flush that *began
    after* it asked has ended: that flush covers its writes, whatever else it covers. One flusher
    thread runs the flushes: while one runs, later callers gather into the next batch, which the
    flusher takes as a whole (``flush(paths of the batch)``) as soon as the running flush ends.
    Under load one flush makes many submissions durable instead of one each, and each caller is
    woken once, by its own batch's end. A flush that fails fails every caller of its batch (each
    gets a FlushError of its own), and none of them is told its writes are durable.

    The flusher starts on the first ``sync`` and ends after FLUSHER_IDLE_SECONDS without work, so an
    object that never flushes (an agent's Spool) costs no thread.
    """

    def __init__(self, flush: Callable[[set[str]], None]) -> None:
        self._flush = flush
        self._cond = threading.Condition()  # guards _gathering and _flusher; the flusher waits on it for work
        self._gathering = _Batch()  # the batch callers join now
        self._flusher: threading.Thread | None = None

    def sync(self, paths: Iterable[str] = ()) -> None:
        with self._cond:
            batch = self._gathering
            batch.paths.update(paths)
            batch.callers += 1
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._run, name="group-commit", daemon=True)
                self._flusher.start()
            self._cond.notify()
        batch.flushed.wait()
        error = batch.error
        if error is not None:
            # One exception object per caller: threads raising the same one would share its traceback.
            if isinstance(error, OSError):
                raise FlushError(error.errno, error.strerror, error.filename) from error
            raise FlushError(errno.EIO, f"the flush failed: {error!r}") from error

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._gathering.callers:
                    if not self._cond.wait(FLUSHER_IDLE_SECONDS) and not self._gathering.callers:
                        self._flusher = None  # under the lock: the next sync starts a new flusher
                        return
                # Race: a caller joining from now on lands in the new batch, whose flush begins after its writes.
                batch, self._gathering = self._gathering, _Batch()
            try:
                crashpoints.reach("commit.flushing")
                self._flush(batch.paths)
                crashpoints.reach("commit.flushed")
            except BaseException as exc:  # whatever it is, the batch's callers must hear of it, not wait forever
                batch.error = exc
            finally:
                batch.flushed.set()


# The group commit's flusher thread ends after this long without a flush to do (the next one starts it again).
FLUSHER_IDLE_SECONDS = 5.0


class FlushError(OSError):
    """A group commit's flush failed: nothing its batch wrote is known to be durable."""


class _Batch:
    """The callers of one flush: what they need durable, how many they are, and how their flush ended."""

    __slots__ = ("callers", "error", "flushed", "paths")

    def __init__(self) -> None:
        self.paths: set[str] = set()
        self.callers = 0
        self.flushed = threading.Event()
        self.error: BaseException | None = None


def fsync_each(paths: Iterable[str]) -> None:
    """fsync every file and directory of ``paths`` (a batch of group commit's ``fsync`` flush)."""
    for path in sorted(paths):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temp_name(directory, base):
    """A temp name that no other writer (process or host) can pick."""
    return os.path.join(directory, f".{base}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def write_new(path, data, durable=True):
    """Create ``path``, which must not exist, with ``data`` (in place: for private dirs and temps).

    Unbuffered, on the descriptor: a buffered file object costs three more system calls (isatty, lseek,
    fstat), and this is on the submit path."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            # NFS reports write errors at fsync/close: both raise here, before any rename or link.
            os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(path, data, durable):
    """Write ``data`` to a fresh temp file beside ``path``; returns the temp's path."""
    directory, base = os.path.split(path)
    tmp = temp_name(directory, base)
    try:
        write_new(tmp, data, durable)
    except BaseException:
        unlink_quietly(tmp)  # created, then the write failed (a full share): the caller never learns its name
        raise
    return tmp


def atomic_write_bytes(path, data, durable=True):
    """Replace ``path`` with ``data`` atomically; ``durable=False`` skips fsync (progress, heartbeats)."""
    directory = os.path.dirname(path)
    tmp = None
    try:
        tmp = _write_temp(path, data, durable)
        os.replace(tmp, path)
    except BaseException:
        if tmp:
            unlink_quietly(tmp)
        raise
    if durable:
        fsync_dir(directory)


def json_bytes(obj):
    # No indent: json's C encoder only runs without it, and this is on the submit path.
    return json.dumps(obj, sort_keys=True).encode() + b"\n"


def atomic_create_bytes(path, data):
    """Create ``path`` with ``data`` only if it does not exist (FileExistsError otherwise).

    A hard link of a complete temp file is atomic and exclusive, also on NFS, where
    O_EXCL on the final name would expose a half-written file.
    """
    tmp = _write_temp(path, data, durable=True)
    try:
        os.link(tmp, path)
    finally:
        unlink_quietly(tmp)
    fsync_dir(os.path.dirname(path))


def unlink_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def atomic_write_json(path, obj, durable=True):
    atomic_write_bytes(path, json_bytes(obj), durable)


def _parse_json(data):
    """The parsed document, or None if ``data`` is not (yet) valid JSON."""
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):  # half-written, or nested beyond the parser
        return None


def read_json(path):
    """The parsed document, or None if it is missing, vanishing or not (yet) valid JSON."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        if exc.errno in _GONE or exc.errno == errno.EISDIR:
            return None
        raise
    return _parse_json(data)


def read_json_object(path):
    """Like read_json, but anything other than a JSON object also reads as not ready."""
    doc = read_json(path)
    return doc if isinstance(doc, dict) else None


class Refused(Exception):
    """A job file that must not be served: outside its folder, no regular file, or too big."""


# The biggest job file (result.json, progress.json, job_info.json) read into memory.
MAX_JOB_JSON_BYTES = 64 * 1024 * 1024


def open_inside(path, folder):
    """``path`` opened for binary reading, or None if it does not exist; it must be a regular
    file that resolves inside ``folder``, else Refused. Other OSErrors (EACCES, EIO) propagate.

    Links are followed as long as the file they reach is inside ``folder`` (a job may link
    within its own folder). ``folder`` itself is not resolved, only its parent is: a folder
    replaced by a link is outside itself. Race: a check on the name followed by an open of the
    name could be fooled by swapping a link in between, so the name is opened once (O_PATH:
    no read, no blocking on a FIFO, no side effect of opening a device), the check is made on
    that open file (its type by fstat, its real path by /proc/self/fd), and the file is then
    reopened through the same descriptor, which reaches that inode whatever the name now is.
    """
    inside = os.path.join(os.path.realpath(os.path.dirname(folder)), os.path.basename(folder)) + os.sep
    try:
        pinned = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in _GONE:
            return None
        if exc.errno == errno.ELOOP:
            raise Refused("is a symlink loop") from None
        raise
    try:
        mode = os.fstat(pinned).st_mode
        if not stat.S_ISREG(mode):
            raise Refused(f"is not a regular file (mode {stat.filemode(mode)})")
        # The kernel's path of the open file (" (deleted)" appended if it was unlinked since).
        if not os.readlink(f"/proc/self/fd/{pinned}").startswith(inside):
            raise Refused("resolves outside its folder")
        return open(os.open(f"/proc/self/fd/{pinned}", os.O_RDONLY | os.O_CLOEXEC), "rb")
    finally:
        os.close(pinned)


def append_inside(path, folder):
    """``path`` opened for binary appending (created if missing), every component below ``folder``
    opened without following links: a job that replaced its log or logs/ by a link to a file of
    the host makes this fail with ELOOP/ENOTDIR instead of making the agent (often root) write
    there. Walking with O_NOFOLLOW from an open directory leaves no check-then-use race."""
    parts = os.path.relpath(path, folder).split(os.sep)
    if parts[0] == os.pardir:
        raise ValueError(f"{path} is not below {folder}")
    directory = _open_dir_nofollow(folder, parts[:-1])
    try:
        fd = os.open(parts[-1], os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                     dir_fd=directory)
    finally:
        os.close(directory)
    return open(fd, "ab")


def replace_inside(path, folder, data):
    """Replace ``path`` with ``data`` atomically (temp + rename, no fsync: progress data), every
    component below ``folder`` opened without following links, as ``append_inside`` does."""
    parts = os.path.relpath(path, folder).split(os.sep)
    if parts[0] == os.pardir:
        raise ValueError(f"{path} is not below {folder}")
    directory = _open_dir_nofollow(folder, parts[:-1])
    tmp = os.path.basename(temp_name("", parts[-1]))
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                     dir_fd=directory)
        with open(fd, "wb") as handle:
            handle.write(data)
        # The rename replaces a link planted under the name itself; it never writes through it.
        os.rename(tmp, parts[-1], src_dir_fd=directory, dst_dir_fd=directory)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=directory)
        raise
    finally:
        os.close(directory)


def _open_dir_nofollow(folder, parts):
    """The directory ``folder``/``parts``... opened, no component (``folder`` included) followed if a link."""
    directory = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for part in parts:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
            os.close(directory)
            directory = inner
    except BaseException:
        os.close(directory)
        raise
    return directory


def make_leaf_dir(path):
    """mkdir of ``path`` alone (never its parents); an existing one is fine. FileNotFoundError
    when the parent is gone: a deleted job's folder must not come back through its sub-folders."""
    try:
        os.mkdir(path)
    except FileExistsError:
        pass


def read_job_json(path, folder, limit=MAX_JOB_JSON_BYTES):
    """The JSON object a job wrote at ``path``, or None if it is missing, half-written or no
    object; opened with ``open_inside`` (so Refused and OSErrors propagate), Refused over ``limit`` bytes."""
    handle = open_inside(path, folder)
    if handle is None:
        return None
    with handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise Refused(f"is larger than {limit} bytes")
    doc = _parse_json(data)
    return doc if isinstance(doc, dict) else None


def rename_claim(src, dst):
    """Rename src -> dst; True if this call moved it, False if someone else did first.

    On NFS a rename whose reply was lost is retransmitted and the retry reports ENOENT
    although the first attempt succeeded. So after ENOENT, ``dst`` existing means
    "maybe ours": the caller decides with information only it has (see spool.claim).
    Returns None in that ambiguous case.
    """
    try:
        os.rename(src, dst)
        return True
    except OSError as exc:
        if exc.errno not in _GONE:
            raise
    return None if os.path.exists(dst) else False


def listdir(path):
    """Names in a directory, [] if it does not exist (yet); hidden temp files left out."""
    try:
        return [name for name in os.listdir(path) if not name.startswith(".")]
    except OSError as exc:
        if exc.errno in _GONE:
            return []
        raise


def is_gone(exc):
    return isinstance(exc, OSError) and exc.errno in _GONE


def age(path):
    """Seconds since ``path`` (itself, not a link's target) was modified; 0.0 if it is gone."""
    try:
        return time.time() - os.lstat(path).st_mtime
    except OSError:
        return 0.0


def makedirs(path):
    os.makedirs(path, exist_ok=True)


_LIBC = ctypes.CDLL(None, use_errno=True)  # ctypes releases the GIL during a call


def sync_filesystem(path: str) -> None:
    """Make everything written on the filesystem of ``path`` durable: syncfs(2), one call for the
    thousands of files of a sweep instead of an fsync each (os.sync where libc has no syncfs)."""
    syncfs = getattr(_LIBC, "syncfs", None)
    if syncfs is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), path)
    finally:
        os.close(fd)
