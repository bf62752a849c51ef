"""The dataset store: ``datasets/`` on the shared root, its builds, listing, download and delete.

A build is planned synchronously (plan.py: bad input is a 4xx and nothing is written), then runs
in a background thread (builder.py) into ``datasets/.staging/<name>`` and is renamed into place at
the end: a dataset folder is complete or absent. The staging ``mkdir`` is the claim on the name,
which holds across hosts sharing the root. Progress lives in ``datasets/.builds/<name>.json``.
"""

import datetime as dt
import logging
import mimetypes
import os
import shutil
import stat
import threading
import time
import uuid
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from .. import crashpoints, fsio, names
from ..exceptions import Conflict, NotFound, SpoolError
from ..settings import Settings
from .builder import METADATA_FILE, Builder
from .mongo import SiteData, iso, iso_now
from .plan import Plan, plan_build

log = logging.getLogger(__name__)

# A claim whose status has not moved for this long belongs to a build that died with its server.
STALE_BUILD_SECONDS = 600
DOWNLOAD_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Download:
    """What ``GET /dataset/download/<name>`` sends: a folder as a zip made on the fly, a plain file as is."""

    file_name: str  # as the client should save it
    content_type: str
    chunks: Iterator[bytes] | None  # a zip made on the fly; None for a plain file
    file_path: str | None = None  # a plain file, served with ranges and validators by the HTTP layer


class DatasetStore:
    def __init__(self, settings: Settings, sitedata: SiteData) -> None:
        self.sitedata = sitedata
        self.root = os.path.join(settings.shared_root, "datasets")
        self.builds = os.path.join(self.root, ".builds")
        self.staging = os.path.join(self.root, ".staging")
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()

    # --- building -------------------------------------------------------------------------

    def start_build(self, body: dict) -> dict:
        """Plan the build of ``body`` and start it; the answer to ``POST /dataset`` (202)."""
        plan = plan_build(body, self.sitedata, taken=self._taken)
        fsio.makedirs(self.builds)
        fsio.makedirs(self.staging)
        staging = self._claim(plan.name)
        with self._lock:
            thread = threading.Thread(target=self._run, args=(plan, staging), name=f"dataset-{plan.name}", daemon=True)
            self._threads[plan.name] = thread
        self._write_status(plan.name, state="building", progress_pct=0.0, stage="queued", warnings=plan.warnings,
                           gaps=[], error=None, site=plan.site, created_at=iso_now())
        thread.start()
        return {"name": plan.name, "status": "building", "status_url": f"/dataset/status/{plan.name}"}

    def _taken(self, name: str) -> bool:
        return os.path.lexists(names.safe_join(self.root, name))

    def _claim(self, name):
        staging = names.safe_join(self.staging, name)
        try:
            os.mkdir(staging)
        except FileExistsError:
            if not self._stale(name):
                raise Conflict(f"dataset {name!r} is being built", name=name,
                               status_url=f"/dataset/status/{name}") from None
            shutil.rmtree(staging, ignore_errors=True)
            try:
                os.mkdir(staging)
            except FileExistsError:
                raise Conflict(f"dataset {name!r} is being built", name=name) from None
        return staging

    def _stale(self, name):
        with self._lock:
            thread = self._threads.get(name)
        if thread is not None and thread.is_alive():
            return False
        path = self._status_path(name)
        try:
            return time.time() - os.stat(path).st_mtime > STALE_BUILD_SECONDS
        except FileNotFoundError:
            return True

    def _run(self, plan: Plan, staging: str) -> None:
        crashpoints.reach("dataset.building")
        try:
            result = Builder(plan, staging, lambda pct, stage: self._progress(plan.name, pct, stage)).build()
            final = names.safe_join(self.root, plan.name)
            if os.path.lexists(final):
                raise Conflict(f"dataset {plan.name!r} appeared while it was being built")
            os.rename(staging, final)
            fsio.fsync_dir(self.root)
            self._progress(plan.name, 100.0, "done", state="ready", **result)
        except Exception as exc:  # the build thread's only exit: record why and clean up
            if isinstance(exc, SpoolError):
                error = exc.detail
            else:
                log.exception("dataset build %s failed", plan.name)
                error = f"{type(exc).__name__}: {exc}"
            self._progress(plan.name, None, "failed", state="failed", error=error)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            with self._lock:
                self._threads.pop(plan.name, None)

    def wait(self, name: str, timeout: float | None = None) -> None:
        """Block until this process's build of ``name`` ends (tests, shutdown)."""
        with self._lock:
            thread = self._threads.get(name)
        if thread is not None:
            thread.join(timeout)

    # --- status -------------------------------------------------------------------------

    def _status_path(self, name):
        return names.safe_join(self.builds, f"{names.dataset(name)}.json")

    def _write_status(self, name, **fields):
        fields.update(name=name, updated_at=iso_now())
        fsio.atomic_write_json(self._status_path(name), fields, durable=fields.get("state") != "building")

    def _progress(self, name, pct, stage, **fields):
        status = fsio.read_json_object(self._status_path(name)) or {}
        if pct is not None:
            status["progress_pct"] = round(pct, 1)
        status.update(stage=stage, **fields)
        status.pop("name", None)
        self._write_status(name, **status)

    def builds_by_state(self) -> Counter:
        """How many builds this store has a status for, by state (building, ready, failed)."""
        states = Counter()
        for name in fsio.listdir(self.builds):
            if name.endswith(".json") and not name.startswith("."):
                status = fsio.read_json_object(os.path.join(self.builds, name)) or {}
                states[str(status.get("state", "unknown"))] += 1
        return states

    def status(self, name: str) -> dict:
        status = fsio.read_json_object(self._status_path(name))
        if status is None:
            if not os.path.isdir(names.safe_join(self.root, name)):
                raise NotFound(f"no dataset or build named {name!r}", name=name)
            status = {"name": name, "state": "ready", "progress_pct": 100.0, "warnings": [], "gaps": [], "error": None}
        return status

    # --- finished datasets --------------------------------------------------------------------

    def list(self) -> list[dict]:
        entries = []
        for name in sorted(fsio.listdir(self.root)):
            path = os.path.join(self.root, name)
            try:
                info = os.stat(path)
            except OSError:
                continue
            meta = (fsio.read_json_object(os.path.join(path, METADATA_FILE)) or {}) if os.path.isdir(path) else {}
            entries.append({
                "name": name,
                "size": _tree_size(path) if os.path.isdir(path) else info.st_size,
                "created_at": meta.get("created_at") or iso(dt.datetime.fromtimestamp(info.st_mtime, dt.timezone.utc)),
                "description": meta.get("description", ""),
                "site": meta.get("site"),
                "period": meta.get("period"),
                "from_ts": meta.get("from_ts"),
                "until_ts": meta.get("until_ts"),
            })
        return entries

    def path(self, name: str) -> str:
        """The path of an existing dataset (folder or plain file); 404 when there is none."""
        path = names.safe_join(self.root, names.dataset(name))
        if not os.path.lexists(path):
            raise NotFound(f"dataset {name!r} not found", name=name)
        return path

    def download(self, name: str) -> Download:
        """A dataset folder as a zip streamed while it is made (no temp file), a plain file as it is."""
        path = self.path(name)  # refuses a planted link that leads out of datasets/
        try:
            info = os.stat(path)
        except OSError as exc:  # a dangling link, or deleted since
            raise NotFound(f"dataset {name!r} cannot be read: {exc.strerror}", name=name) from None
        if stat.S_ISDIR(info.st_mode):
            return Download(f"{name}.zip", "application/zip", zip_stream(path, name))
        if not stat.S_ISREG(info.st_mode):  # a FIFO would block the request thread for good
            raise NotFound(f"dataset {name!r} is neither a file nor a folder", name=name)
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if content_type.startswith("text/"):
            content_type += "; charset=UTF-8"
        return Download(name, content_type, None, path)

    def delete(self, name: str) -> dict:
        path = self.path(name)
        if os.path.isdir(os.path.join(self.staging, name)):
            raise Conflict(f"dataset {name!r} is being rebuilt; try again when the build ends", name=name)
        if os.path.isdir(path) and not os.path.islink(path):
            # Rename first so the dataset vanishes at once, then remove at leisure.
            trash = os.path.join(self.root, f".trash-{name}-{uuid.uuid4().hex[:8]}")
            os.rename(path, trash)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.unlink(path)
        try:
            os.unlink(self._status_path(name))
        except FileNotFoundError:
            pass
        return {"message": f"dataset {name!r} deleted", "name": name}


def zip_stream(folder: str, prefix: str) -> Iterator[bytes]:
    """Yield a zip of ``folder``'s regular files (as ``prefix/...``) chunk by chunk, no temp file."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED) as archive:
        for directory, dirs, files in os.walk(folder):
            dirs.sort()
            for file_name in sorted(files):
                path = os.path.join(directory, file_name)
                if os.path.islink(path) or not os.path.isfile(path):
                    continue  # a planted symlink must not export what it points to
                info = zipfile.ZipInfo.from_file(path, os.path.join(prefix, os.path.relpath(path, folder)))
                info.compress_type = zipfile.ZIP_DEFLATED
                with open(path, "rb") as source, archive.open(info, "w") as target:
                    while chunk := source.read(DOWNLOAD_CHUNK):
                        target.write(chunk)
                        yield sink.take()
                yield sink.take()
    yield sink.take()


class _Sink:
    """A write-only stream for zipfile that hands out what was written so far."""

    def __init__(self):
        self.chunks = []

    def write(self, data):
        self.chunks.append(bytes(data))
        return len(data)

    def flush(self):
        pass

    def take(self):
        data = b"".join(self.chunks)
        self.chunks.clear()
        return data


def _tree_size(path):
    total = 0
    for directory, _, files in os.walk(path):
        for file_name in files:
            try:
                total += os.lstat(os.path.join(directory, file_name)).st_size
            except OSError:
                pass
    return total
