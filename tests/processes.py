"""Helpers for tests that run the server and agents as real separate processes."""

import os
import signal
import subprocess
import sys
import time

from .clients import HttpClient, free_port

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def spool_env(root, tmp_path, **settings):
    env = dict(os.environ)
    env.pop("OPEVA_CONFIG", None)
    env.update({
        "OPEVA_SHARED_ROOT": str(root),
        "OPEVA_LOCK_DIR": str(tmp_path / "locks"),
        "OPEVA_SCAN_INTERVAL": "0.5",
        "OPEVA_HEARTBEAT_INTERVAL": "0.5",
        "PYTHONPATH": PROJECT_ROOT,
    })
    env.update({f"OPEVA_{key.upper()}": str(value) for key, value in settings.items()})
    return env


def start(command, env, log_path):
    with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "opeva_spool.cli", *command], env=env, cwd=PROJECT_ROOT,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def start_server(root, tmp_path, **settings):
    port = free_port()
    env = spool_env(root, tmp_path, port=port, bind="127.0.0.1", **settings)
    proc = start(["serve"], env, tmp_path / f"server-{port}.log")
    client = HttpClient(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if client.get("/health", timeout=1).status == 200:
                return proc, client
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early; see {tmp_path}/server-{port}.log")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("server did not answer /health within 20 s")


def start_agent(root, tmp_path, host, **settings):
    env = spool_env(root, tmp_path, host=host, **settings)
    return start(["agent"], env, tmp_path / f"agent-{host}-{time.monotonic_ns()}.log")


def stop(proc, sig=signal.SIGTERM, timeout=20):
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
