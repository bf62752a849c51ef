"""The Docker runtime: each attempt is a container on this host's engine.

A container is created then started (never ``containers.run``, which pulls a missing
image silently), labelled so that a restarted agent finds it again, and a thread
copies its output into the attempt's log file on the share, so the log is live.

Resuming the log after the agent restarts is exact, with no clocks involved: the
container carries the size its log file had when it was created
(``opeva.log_offset``), so ``size now - offset`` bytes of its output are already in
the file; the new copier replays the container's output from the start and skips
that many bytes. (Streaming with ``since=<log file mtime>`` would compare the NFS
server's clock with the engine's, and loses lines that were in flight when the
agent died.) For the replay to be complete the container logs to ``json-file``
without rotation, whatever the daemon's default.

A container runs as ``job_user`` (default: the agent's own uid:gid), not as the image's
user: what it writes on the share (the real image writes progress.json with mode 0600)
must be readable by the service that serves it.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
import time

import docker
import requests
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import DeviceRequest, LogConfig

from .. import locks
from ..exceptions import RuntimeFailure
from ..settings import Settings
from ..states import EndReason
from .base import Execution, Launch, Lease, Runtime, open_log

log = logging.getLogger(__name__)

LABEL_JOB = "opeva.job_id"
LABEL_ATTEMPT = "opeva.attempt"
LABEL_HOST = "opeva.host"
# A digest of the shared root: two deployments on one engine (each with a host "local") never
# adopt, remove or kill each other's containers.
LABEL_ROOT = "opeva.root"
LABEL_LOG_PATH = "opeva.log_path"
LABEL_LOG_OFFSET = "opeva.log_offset"

# What the SDK raises when the engine refuses a request or cannot be reached at all.
ENGINE_ERRORS = (DockerException, requests.RequestException)
# poll() answers this when the engine no longer knows the container (removed behind our
# back): its exit status is lost. 255 is the conventional "status unknown".
VANISHED_EXIT_CODE = 255
# Longest an engine request may take; poll() and check() must not hang on a dead engine.
ENGINE_TIMEOUT = 30
# How long release() waits for the log copier, which may be stuck on a dead engine connection.
RELEASE_JOIN_TIMEOUT = 10
# The copier's pause before re-attaching when the stream broke but the container still runs.
RECONNECT_DELAY = 1.0
# json-file rotates at max-size; 1 TB means never in practice, overriding a daemon default.
NO_ROTATION = LogConfig(type="json-file", config={"max-size": "1t"})


def container_name(job_id: str, attempt: int) -> str:
    """``opeva-<job_id>-a<attempt>``, fitted to Docker's ``[a-zA-Z0-9][a-zA-Z0-9_.-]+``."""
    return f"opeva-{re.sub(r'[^a-zA-Z0-9_.-]', '_', job_id)}-a{int(attempt)}"


def gpu_request(gpus: tuple[str, ...]) -> tuple[list[DeviceRequest], dict[str, str]]:
    """``(device_requests, env)`` giving a container exactly the GPU ids in ``gpus``.

    With no GPUs, NVIDIA_VISIBLE_DEVICES=void: CUDA images set it to ``all``, and on a
    host whose default runtime is nvidia that alone would hand the job every GPU.
    """
    ids = [str(gpu) for gpu in gpus]
    if not ids:
        return [], {"NVIDIA_VISIBLE_DEVICES": "void"}
    request = DeviceRequest(driver="nvidia", device_ids=ids, capabilities=[["gpu"]])
    return [request], {"NVIDIA_VISIBLE_DEVICES": ",".join(ids)}


def _explain(exc):
    if isinstance(exc, APIError) and exc.explanation:
        return str(exc.explanation)
    return str(exc) or type(exc).__name__


def _file_size(path):
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


class DockerExecution(Execution):
    """One container; ``copied`` is how many bytes of its output the log file already holds."""

    def __init__(self, container, log_path: str, copied: int = 0):
        self.container = container
        self.container_id = container.id
        self.container_name = container.name
        self.log_path = log_path
        self._api = container.client.api
        self._code = None
        self._copied = copied
        self._closing = threading.Event()
        self._copier = threading.Thread(
            target=self._copy_output, name=f"logs-{container.name}", daemon=True
        )
        self._copier.start()

    def _state(self):
        """The container's State, or None once the engine no longer knows it."""
        try:
            return self._api.inspect_container(self.container_id)["State"]
        except NotFound:
            return None

    def poll(self) -> int | None:
        if self._code is None:
            try:
                state = self._state()
            except ENGINE_ERRORS:
                return None  # engine unreachable: not known to have ended; ask again later
            if state is None:
                self._code = VANISHED_EXIT_CODE
            elif state["Status"] in ("exited", "dead"):
                self._code = state["ExitCode"]
        return self._code

    def _signal(self, signum):
        try:
            self._api.kill(self.container_id, signal=signum)
        except NotFound:
            pass  # removed meanwhile: nothing left to signal
        except APIError as exc:
            # 409: it stopped between the caller's decision and this call, which is the goal.
            if exc.status_code != 409:
                raise self._signal_failed(exc) from None
        except ENGINE_ERRORS as exc:
            raise self._signal_failed(exc) from None

    def _signal_failed(self, exc):
        return RuntimeFailure(EndReason.ENGINE_ERROR, f"cannot signal {self.container_name}: {_explain(exc)}")

    def describe(self) -> dict:
        return {"container_id": self.container_id, "container_name": self.container_name}

    def detach(self) -> None:
        # The container runs on; the restarted agent adopts it and resumes the log copy.
        self._closing.set()

    def signal_stop(self) -> None:
        # kill with SIGTERM returns at once; `docker stop` would block for its own grace period.
        self._signal("SIGTERM")

    def kill(self) -> None:
        self._signal("SIGKILL")

    def release(self) -> None:
        """Kill it if still running (a stale adopted one), finish the log copy, remove it."""
        if self.poll() is None:
            self.kill()
        self._closing.set()
        # Join before removing: the copier drains the stream, which ends once the container
        # has stopped; removing first could cut off its last output.
        self._copier.join(RELEASE_JOIN_TIMEOUT)
        try:
            self._api.remove_container(self.container_id, force=True)
        except NotFound:
            pass
        except ENGINE_ERRORS as exc:
            log.warning("cannot remove container %s: %s", self.container_name, _explain(exc))

    def _copy_output(self):
        """Append the container's output to the log file until the container has ended."""
        while True:
            try:
                self._copy_stream()
                # A follow stream ends when the container stops, and also when the engine drops
                # the connection (daemon restart with live-restore, tunnel hiccup) while it runs on.
                if self._ended():
                    return
            except NotFound:
                return  # removed: there is no output left to copy
            except ENGINE_ERRORS as exc:
                # Even if it has ended meanwhile, attach again: the rest of its output is still there.
                log.warning("log stream of %s broke: %s", self.container_name, _explain(exc))
            except OSError as exc:
                log.warning("cannot write %s: %s", self.log_path, exc)
            if self._closing.is_set():
                return  # release() has stopped waiting for the rest
            time.sleep(RECONNECT_DELAY)

    def _copy_stream(self):
        # Every attach replays the output from the start; skip what the file already holds.
        seen = 0
        with open_log(self.log_path) as out:
            for chunk in self._api.logs(self.container_id, stream=True, follow=True, stdout=True, stderr=True):
                held = self._copied - seen
                seen += len(chunk)
                if held < len(chunk):
                    out.write(chunk[max(held, 0):])
                    out.flush()
                    self._copied = seen

    def _ended(self):
        try:
            state = self._state()
        except ENGINE_ERRORS:
            return False  # unreachable: keep trying until it answers or release() closes us
        return state is None or state["Status"] in ("exited", "dead")


class DockerRuntime(Runtime):
    name = "docker"
    job_root = "/data"
    survives_agent = True

    def __init__(self, settings: Settings):
        self.settings = settings
        self.command_template = settings.docker_command
        self.default_image = settings.default_image
        self.job_user = settings.job_user or f"{os.getuid()}:{os.getgid()}"
        self._client = None
        self._client_lock = threading.Lock()

    def _engine(self):
        # Created on first use: the SDK asks the engine its API version when it connects,
        # and an engine that is down must give check() a sentence, not the agent a crash.
        with self._client_lock:
            if self._client is None:
                if self.settings.docker_host:
                    self._client = docker.DockerClient(base_url=self.settings.docker_host, timeout=ENGINE_TIMEOUT)
                else:
                    self._client = docker.from_env(timeout=ENGINE_TIMEOUT)
            return self._client

    def _engine_url(self):
        return self.settings.docker_host or os.environ.get("DOCKER_HOST") or "the default socket"

    def _not_answering(self, exc):
        return f"the Docker engine at {self._engine_url()} does not answer: {_explain(exc)}"

    def _unavailable(self, exc):
        return RuntimeFailure(EndReason.ENGINE_UNAVAILABLE, self._not_answering(exc))

    def check(self) -> str | None:
        try:
            self._engine().ping()
        except ENGINE_ERRORS as exc:
            return self._not_answering(exc)
        return None

    def container_spec(self, launch: Launch, image: str, log_offset: int) -> dict:
        """The keyword arguments of ``containers.create`` for one attempt."""
        device_requests, gpu_env = gpu_request(launch.gpus)
        command = launch.command if isinstance(launch.command, str) else [str(part) for part in launch.command]
        labels = {
            LABEL_JOB: launch.job_id,
            LABEL_ATTEMPT: str(launch.attempt),
            **self.owner_labels(launch.host),
            LABEL_LOG_PATH: launch.log_path,
            LABEL_LOG_OFFSET: str(log_offset),
        }
        spec = {
            "image": image,
            "command": command,
            "name": container_name(launch.job_id, launch.attempt),
            "labels": labels,
            "user": self.job_user,
            # The agent assigns the GPUs: its choice wins over any configured variable.
            "environment": {**self.settings.docker_env, **launch.env, **gpu_env},
            "volumes": {
                self.settings.docker_data_mount or self.settings.shared_root: {"bind": self.job_root, "mode": "rw"}
            },
            "device_requests": device_requests,
            "log_config": NO_ROTATION,
            # An init as PID 1 forwards SIGTERM to the job; the kernel ignores TERM sent to a
            # namespace's PID 1 that has no handler, so signal_stop() would do nothing.
            "init": True,
        }
        if self.settings.docker_network_mode:
            spec["network_mode"] = self.settings.docker_network_mode
        return spec

    def _ensure_image(self, engine: docker.DockerClient, image: str, host: str) -> None:
        try:
            engine.images.get(image)
            return
        except ImageNotFound:
            pass
        if not self.settings.docker_allow_pull:
            raise RuntimeFailure(EndReason.IMAGE_MISSING, f"image {image} is not present on host {host}")
        try:
            engine.images.pull(image)
        except ENGINE_ERRORS as exc:
            detail = f"cannot pull image {image} on host {host}: {_explain(exc)}"
            raise RuntimeFailure(EndReason.IMAGE_PULL_FAILED, detail) from None

    def start(self, launch: Launch) -> DockerExecution:
        image = launch.image or self.default_image
        try:
            engine = self._engine()
            self._ensure_image(engine, image, launch.host)
        except ENGINE_ERRORS as exc:
            raise self._unavailable(exc) from None
        spec = self.container_spec(launch, image, _file_size(launch.log_path))
        try:
            container = engine.containers.create(**spec)
        except ENGINE_ERRORS as exc:
            detail = f"cannot create container {spec['name']}: {_explain(exc)}"
            raise RuntimeFailure(EndReason.CREATE_FAILED, detail) from None
        try:
            container.start()
        except ENGINE_ERRORS as exc:
            # Remove the half-made container: it would hold the name and be adopted later.
            try:
                container.remove(force=True)
            except ENGINE_ERRORS:
                log.warning("cannot remove the failed container %s", spec["name"])
            detail = f"cannot start container {spec['name']}: {_explain(exc)}"
            raise RuntimeFailure(EndReason.START_FAILED, detail) from None
        return DockerExecution(container, launch.log_path)

    def guard_host(self, host: str, lease: Lease) -> subprocess.Popen:
        """The containers guard (guard.py): kills this host's containers if the lease lapses.

        Its own session, so a signal to the agent's process group (Ctrl-C, systemd's
        KillMode=mixed) does not reach it, and stdout/stderr go to the agent's, so its
        kills appear in the agent's log (journald).
        """
        env = dict(os.environ)
        package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (package_parent, env.get("PYTHONPATH"))))
        argv = [sys.executable, "-m", "opeva_spool.runtimes.guard", "containers",
                "--heartbeat", lease.heartbeat_path, "--lease", str(lease.seconds), "--grace", str(lease.grace),
                *(arg for label in self.owner_filters(host) for arg in ("--label", label)),
                "--agent-id", lease.agent_id, "--agent-pid", str(os.getpid()),
                "--docker-host", self.settings.docker_host or os.environ.get("DOCKER_HOST", "")]
        return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, start_new_session=True, close_fds=True)

    def owner_labels(self, host: str) -> dict[str, str]:
        """The labels that mark the containers this deployment runs for ``host``."""
        return {LABEL_HOST: host, LABEL_ROOT: locks.root_digest(self.settings.shared_root)}

    def owner_filters(self, host: str) -> list[str]:
        """``owner_labels`` as engine label filters (all must match)."""
        return [f"{name}={value}" for name, value in self.owner_labels(host).items()]

    def adopt(self, host: str, current: set[tuple[str, int]] | None = None) -> dict[tuple[str, int], DockerExecution]:
        found = {}
        try:
            # ignore_removed: a container removed between the listing and its inspection is skipped.
            containers = self._engine().containers.list(
                all=True, filters={"label": self.owner_filters(host)}, ignore_removed=True
            )
        except ENGINE_ERRORS as exc:
            # Not {}: that would make the agent fail jobs whose containers may well be running.
            raise self._unavailable(exc) from None
        for container in containers:
            labels = container.labels
            try:
                key = (labels[LABEL_JOB], int(labels[LABEL_ATTEMPT]))
                log_path = labels[LABEL_LOG_PATH]
                offset = int(labels[LABEL_LOG_OFFSET])
            except (KeyError, ValueError):
                log.warning("container %s has opeva labels but not ours; left alone", container.name)
                continue
            if container.status == "removing":
                continue  # already being released
            if current is not None and key not in current:
                # Superseded: no copier for it. Its log path may be the next attempt's log by now
                # (moved aside when that attempt started), and a replay would write into it.
                try:
                    container.remove(force=True)
                except ENGINE_ERRORS as exc:
                    log.warning("cannot remove the superseded container %s: %s", container.name, _explain(exc))
                continue
            if container.status == "created":
                # The agent died between create and start: finish what it asked for.
                try:
                    container.start()
                except ENGINE_ERRORS as exc:
                    log.warning("cannot start the adopted container %s: %s", container.name, _explain(exc))
                    continue
            # A file smaller than the offset was replaced: copy all the output again.
            found[key] = DockerExecution(container, log_path, copied=max(0, _file_size(log_path) - offset))
        return found
