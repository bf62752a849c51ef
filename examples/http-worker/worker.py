#!/usr/bin/env python3
"""A worker for OPEVA's HTTP worker protocol: takes jobs from the server over HTTP, runs each in a Docker container.

It speaks only the protocol (docs/worker-protocol.md) and imports nothing of opeva-spool: copy this file to a
host that cannot mount the share (or can, then it also writes the job's log there) and run

    pip install requests docker
    OPEVA_SERVER=http://server:8000 WORKER_ID=gpu-node-1 python3 worker.py

Its loop: a heartbeat every WORKER_HEARTBEAT_INTERVAL seconds; while it has room, POST /api/agent/next-job every
POLL_INTERVAL seconds; per job a thread that starts the container, reports ``running`` (and again every
RUNNING_REPORT_INTERVAL seconds: that report is the job's lease), polls GET /status/<job_id> every
STATUS_POLL_INTERVAL seconds for ``stop_requested``/``canceled``, and reports how the container ended. A 409 to
a report means the server gave the attempt away (it found this worker silent for too long): the container is
stopped and its result dropped. SIGUSR1 or WORKER_EXIT_AFTER_JOB=1: exit once the current jobs end;
SIGTERM/SIGINT: stop the containers and exit (the server requeues the jobs when this worker goes silent).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading
import time

import docker
import requests

log = logging.getLogger("opeva-http-worker")

VERSION = "1.0"
LABEL_WORKER, LABEL_JOB, LABEL_ATTEMPT = "opeva.worker_id", "opeva.job_id", "opeva.attempt"
STOP_TIMEOUT = 10  # seconds between SIGTERM and SIGKILL when a container is stopped
REPORT_RETRY_SECONDS = 60.0  # a terminal report is retried this long (it is idempotent)
HTTP_TIMEOUT = 10.0
DATA = "/data"  # where the share appears in a job's container


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


class Server:
    """The three calls of the protocol, and /status."""

    def __init__(self, url: str, worker_id: str, token: str = ""):
        self.url = url.rstrip("/")
        self.worker_id = worker_id
        self.http = requests.Session()
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"

    def post(self, path: str, body: dict) -> requests.Response:
        return self.http.post(f"{self.url}{path}", json={"worker_id": self.worker_id, **body}, timeout=HTTP_TIMEOUT)

    def heartbeat(self, info: dict) -> dict:
        reply = self.post("/api/agent/heartbeat", {"info": info})
        reply.raise_for_status()
        return reply.json()

    def next_job(self) -> dict | None:
        reply = self.post("/api/agent/next-job", {})
        if reply.status_code == 204:
            return None
        reply.raise_for_status()
        return reply.json()

    def report(self, job: dict, status: str, **fields) -> requests.Response:
        return self.post("/api/agent/job-status", {"job_id": job["job_id"], "attempt": job.get("attempt"),
                                                   "status": status, **fields})

    def job_status(self, job_id: str) -> str | None:
        """The job's status as /status says it; None for a job the server no longer has (deleted)."""
        reply = self.http.get(f"{self.url}/status/{job_id}", timeout=HTTP_TIMEOUT)
        if reply.status_code == 404:
            return None
        reply.raise_for_status()
        return reply.json()["status"]


class Job(threading.Thread):
    """One attempt: its container from start (or adoption after a restart) to its last report."""

    def __init__(self, worker: Worker, payload: dict, container=None):
        super().__init__(name=f"job-{payload['job_id']}", daemon=True)
        self.worker, self.payload, self.container = worker, payload, container
        self.job_id = payload["job_id"]

    def run(self):
        try:
            if self.container is None:
                try:
                    self.container = self._start()
                except docker.errors.DockerException as exc:
                    return self._end("failed", error=f"cannot start the container: {exc}")
            self._follow_log()
            self._supervise()
        except Exception:  # never leave the attempt unreported because of a bug here
            log.exception("job %s: supervision failed", self.job_id)
            self._end("failed", error="the worker's supervision of the job failed")
        finally:
            self.worker.job_done(self)

    def _start(self):
        payload, worker = self.payload, self.worker
        image = payload.get("image") or worker.args.image
        command = payload.get("command") or f"--config {DATA}/{payload['config_path']} --job_id {self.job_id}"
        name = payload.get("container_name") or f"job_{worker.args.worker_id}_{self.job_id[:8]}"
        try:
            worker.docker.images.get(image)
        except docker.errors.ImageNotFound:
            worker.docker.images.pull(image)
        stale = worker.docker.containers.list(all=True, filters={"name": f"^{name}$"}, ignore_removed=True)
        for container in stale:  # a superseded attempt's container of the same name (left by a killed worker)
            container.remove(force=True)
        volumes = {worker.args.shared_dir: {"bind": DATA, "mode": "rw"}} if worker.sees_share else {}
        devices = [docker.types.DeviceRequest(device_ids=payload["gpus"], capabilities=[["gpu"]])] \
            if payload.get("gpus") else None
        container = worker.docker.containers.run(
            image, command, name=name, detach=True, environment=payload.get("env") or {}, volumes=volumes,
            user=f"{os.getuid()}:{os.getgid()}", device_requests=devices,
            labels={LABEL_WORKER: worker.args.worker_id, LABEL_JOB: self.job_id,
                    LABEL_ATTEMPT: str(payload.get("attempt", ""))})
        self._report("running", container_id=container.id, container_name=container.name)
        return container

    def _follow_log(self):
        """Append the container's output to the job's log on the share (when this worker sees it)."""
        if not self.worker.sees_share:
            return
        path = os.path.join(self.worker.args.shared_dir, "jobs", self.job_id, "logs", f"{self.job_id}.log")

        def copy():
            try:
                with open(path, "ab") as handle:
                    for chunk in self.container.logs(stream=True, follow=True):
                        handle.write(chunk)
                        handle.flush()
            except (OSError, docker.errors.DockerException, requests.RequestException) as exc:
                log.warning("job %s: log copy ended: %s", self.job_id, exc)

        threading.Thread(target=copy, name=f"log-{self.job_id}", daemon=True).start()

    def _supervise(self):
        args = self.worker.args
        next_running = time.monotonic() + args.running_report_interval
        next_status = time.monotonic() + args.status_poll_interval
        while True:
            self.container.reload()
            if self.container.status in ("exited", "dead"):
                code = self.container.attrs["State"]["ExitCode"]
                if code == 0:
                    return self._end("finished", exit_code=0)
                return self._end("failed", exit_code=code, error=f"the container exited with code {code}")
            if self.worker.terminating.is_set():
                return self._stop_container()  # no report: the server requeues the job when we go silent
            now = time.monotonic()
            if now >= next_status:
                next_status = now + args.status_poll_interval
                if self._stop_asked():
                    return None
            if now >= next_running:
                next_running = now + args.running_report_interval
                if self._report("running", container_id=self.container.id).status_code == 409:
                    log.warning("job %s: the server gave this attempt away; its container is stopped", self.job_id)
                    return self._stop_container()
            time.sleep(args.container_poll_interval)

    def _stop_asked(self) -> bool:
        """Act on /status: stop_requested -> stopped, canceled -> canceled, gone -> stop quietly; True if it ended."""
        try:
            status = self.worker.server.job_status(self.job_id)
        except requests.RequestException as exc:
            log.warning("job %s: /status failed: %s", self.job_id, exc)
            return False
        if status is None:
            self._stop_container()  # deleted: nobody to report to
            return True
        if status in ("stop_requested", "canceled"):
            code = self._stop_container()
            self._end("stopped" if status == "stop_requested" else "canceled", exit_code=code)
            return True
        return False

    def _stop_container(self) -> int | None:
        try:
            self.container.stop(timeout=STOP_TIMEOUT)
            self.container.reload()
            return self.container.attrs["State"]["ExitCode"]
        except docker.errors.DockerException as exc:
            log.warning("job %s: cannot stop its container: %s", self.job_id, exc)
            return None

    def _end(self, status: str, **fields):
        """Report the ending, retried while the server cannot be reached (the report is idempotent)."""
        if self.container is not None:
            fields.setdefault("container_id", self.container.id)
            fields.setdefault("container_name", self.container.name)
        deadline = time.monotonic() + REPORT_RETRY_SECONDS
        while True:
            try:
                reply = self._report(status, **fields)
                if reply.status_code == 409:
                    log.warning("job %s: the server refused its ending (%s)", self.job_id, reply.text)
                break
            except requests.RequestException as exc:
                if time.monotonic() > deadline:
                    log.error("job %s: its ending %s could not be reported: %s", self.job_id, status, exc)
                    break
                time.sleep(1)
        self._remove_container()
        try:
            self.worker.beat()  # the protocol: a heartbeat right after each job ends
        except requests.RequestException:
            pass

    def _report(self, status: str, **fields) -> requests.Response:
        return self.worker.server.report(self.payload, status, **fields)

    def _remove_container(self):
        if self.container is not None and not self.worker.args.keep_containers:
            try:
                self.container.remove(force=True)
            except docker.errors.DockerException as exc:
                log.warning("job %s: cannot remove its container: %s", self.job_id, exc)


class Worker:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.server = Server(args.server, args.worker_id, args.token)
        self.docker = docker.from_env()
        self.sees_share = os.path.isdir(os.path.join(args.shared_dir, "jobs"))
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()
        self.exit_after_job = args.exit_after_job
        self.terminating = threading.Event()

    def info(self) -> dict:
        with self.lock:
            running = sorted(self.jobs)
        return {"version": VERSION, "hostname": socket.gethostname(), "capacity": self.args.capacity,
                "heartbeat_interval": self.args.heartbeat_interval, "gpu_ids": self.args.gpus, "running": running}

    def beat(self) -> dict:
        return self.server.heartbeat(self.info())

    def job_done(self, job: Job) -> None:
        with self.lock:
            self.jobs.pop(job.job_id, None)

    def start_job(self, payload: dict, container=None) -> None:
        job = Job(self, payload, container)
        with self.lock:
            self.jobs[job.job_id] = job
        job.start()

    def reconcile(self, held: list[str]) -> None:
        """After a restart: follow again the containers of the attempts the server says we hold; remove the others
        of ours (attempts the server gave away while we were down); an attempt whose container is gone failed."""
        # ignore_removed: a container removed between the listing and its inspection is left out, not an error.
        ours = self.docker.containers.list(all=True, filters={"label": f"{LABEL_WORKER}={self.args.worker_id}"},
                                           ignore_removed=True)
        adopted = set()
        for container in ours:
            job_id, attempt = container.labels.get(LABEL_JOB), container.labels.get(LABEL_ATTEMPT, "")
            if job_id in held and job_id not in adopted and attempt.isdigit():
                adopted.add(job_id)
                self.start_job({"job_id": job_id, "attempt": int(attempt)}, container)
            else:
                container.remove(force=True)
        for job_id in set(held) - adopted:
            reply = self.server.report({"job_id": job_id}, "failed", error="the worker restarted and its container "
                                                                            "was gone")
            log.warning("job %s: container gone after a restart; reported failed (%s)", job_id, reply.status_code)

    def run(self) -> int:
        first = self.beat()
        self.reconcile(first.get("running") or [])
        next_beat = time.monotonic() + self.args.heartbeat_interval
        while not self.terminating.is_set():
            now = time.monotonic()
            try:
                if now >= next_beat:
                    next_beat = now + self.args.heartbeat_interval
                    self.beat()
                with self.lock:
                    room = len(self.jobs) < self.args.capacity
                    idle = not self.jobs
                if self.exit_after_job and idle:
                    return 0
                if room and not self.exit_after_job:
                    payload = self.server.next_job()
                    if payload is not None:
                        log.info("job %s attempt %s: starting", payload["job_id"], payload.get("attempt"))
                        self.start_job(payload)
                        continue  # ask again at once while there is room
            except requests.RequestException as exc:
                log.warning("the server cannot be reached: %s", exc)
            self.terminating.wait(min(self.args.poll_interval, max(0.0, next_beat - time.monotonic())))
        for job in list(self.jobs.values()):
            job.join(STOP_TIMEOUT + 5)
        return 0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", default=os.environ.get("OPEVA_SERVER", "http://localhost:8000"))
    parser.add_argument("--worker-id", default=os.environ.get("WORKER_ID", socket.gethostname()))
    parser.add_argument("--shared-dir", default=os.environ.get("OPEVA_SHARED_DIR", "/opt/opeva_shared_data"))
    parser.add_argument("--image", default=os.environ.get("WORKER_IMAGE", "opeva-simulator:latest"))
    parser.add_argument("--token", default=os.environ.get("OPEVA_TOKEN", ""), help="the worker's API token")
    parser.add_argument("--capacity", type=int, default=int(os.environ.get("WORKER_CAPACITY", 1)))
    parser.add_argument("--gpus", default=os.environ.get("WORKER_GPUS", ""), help="GPU ids, comma-separated")
    parser.add_argument("--heartbeat-interval", type=float, default=env_float("WORKER_HEARTBEAT_INTERVAL", 30))
    parser.add_argument("--poll-interval", type=float, default=env_float("POLL_INTERVAL", 5))
    parser.add_argument("--status-poll-interval", type=float, default=env_float("STATUS_POLL_INTERVAL", 10))
    parser.add_argument("--running-report-interval", type=float, default=env_float("RUNNING_REPORT_INTERVAL", 30))
    parser.add_argument("--container-poll-interval", type=float, default=env_float("CONTAINER_POLL_INTERVAL", 1))
    parser.add_argument("--exit-after-job", action="store_true", default=os.environ.get("WORKER_EXIT_AFTER_JOB") == "1")
    parser.add_argument("--keep-containers", action="store_true", help="leave ended containers for inspection")
    args = parser.parse_args(argv)
    args.gpus = [gpu for gpu in args.gpus.split(",") if gpu]
    return args


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    worker = Worker(parse_args(argv))
    signal.signal(signal.SIGUSR1, lambda *_: setattr(worker, "exit_after_job", True))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.terminating.set())
    return worker.run()


if __name__ == "__main__":
    raise SystemExit(main())
