"""Session fixtures for tests that need a real Docker engine and a tiny local image.

The engine is the one ``DOCKER_HOST`` names (CI starts it with ``.ci/docker.sh``).
Without one, CI fails; elsewhere the fixture starts a private dockerd when it can
(binary present, running as root) and skips otherwise. The image is busybox-static
imported as ``localhost/busybox:test``: no registry can be reached here.
"""

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import time

import docker
import pytest
import requests

BUSYBOX_IMAGE = "localhost/busybox:test"


def _unavailable(why):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why} (CI must provide it)")
    pytest.skip(why)


def _connect(url):
    """A client for the engine at url if it answers, else None."""
    client = docker.DockerClient(base_url=url, timeout=30)
    try:
        client.ping()
    except (docker.errors.DockerException, requests.RequestException):
        client.close()
        return None
    return client


def _start_dockerd():
    # Short dir: the socket path must fit the 108-byte limit of unix socket names.
    work = tempfile.mkdtemp(prefix="dk", dir="/tmp")
    url = f"unix://{work}/docker.sock"
    with open(f"{work}/dockerd.log", "ab") as log:
        proc = subprocess.Popen(
            ["dockerd", "--host", url, "--data-root", f"{work}/docker", "--exec-root", f"{work}/dx",
             "--pidfile", f"{work}/dockerd.pid", "--iptables=false", "--bridge=none"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        client = _connect(url) if os.path.exists(f"{work}/docker.sock") else None
        if client:
            return proc, work, url, client
        time.sleep(0.1)
    _stop_dockerd(proc, work)
    pytest.fail(f"the private dockerd did not answer within 20 s (see {work}/dockerd.log)")


def _stop_dockerd(proc, work):
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    # dockerd leaves mounts under its dirs; deepest first, or the parents are busy.
    with open("/proc/mounts", encoding="utf-8") as mounts:
        points = [line.split()[1] for line in mounts]
    for point in sorted((p for p in points if p == work or p.startswith(work + "/")), reverse=True):
        if subprocess.run(["umount", point], capture_output=True).returncode:
            subprocess.run(["umount", "-l", point], capture_output=True)
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def docker_engine():
    """(url, client) of a Docker engine that answers."""
    url = os.environ.get("DOCKER_HOST")
    client = _connect(url) if url else None
    if client:
        yield url, client
        client.close()
        return
    why = f"the Docker engine at DOCKER_HOST={url} does not answer" if url else "DOCKER_HOST is not set"
    if os.environ.get("CI") == "true":
        _unavailable(why)
    if not shutil.which("dockerd") or os.geteuid() != 0:
        _unavailable(f"{why}, and a private dockerd needs the dockerd binary and root")
    proc, work, url, client = _start_dockerd()
    try:
        yield url, client
    finally:
        client.close()
        _stop_dockerd(proc, work)


def _is_static(path):
    # ldd refuses a binary with no dynamic loader; only such a busybox runs in an image without libc.
    return subprocess.run(["ldd", path], capture_output=True).returncode != 0


@pytest.fixture(scope="session")
def busybox_image(docker_engine):
    """The name of a busybox image on the engine, imported from busybox-static if missing."""
    client = docker_engine[1]
    try:
        client.images.get(BUSYBOX_IMAGE)
        return BUSYBOX_IMAGE
    except docker.errors.ImageNotFound:
        pass
    busybox = shutil.which("busybox")
    if not busybox or not _is_static(busybox):
        _unavailable("a static busybox (Debian package busybox-static) is needed to build the test image")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        for name, mode in (("bin", 0o755), ("data", 0o755), ("tmp", 0o1777)):
            entry = tarfile.TarInfo(name)
            entry.type, entry.mode = tarfile.DIRTYPE, mode
            tar.addfile(entry)
        tar.add(busybox, arcname="bin/busybox")
        for applet in applets:
            if applet != "busybox":
                entry = tarfile.TarInfo(f"bin/{applet}")
                entry.type, entry.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(entry)
    repository, tag = BUSYBOX_IMAGE.rsplit(":", 1)
    client.api.import_image_from_data(data.getvalue(), repository=repository, tag=tag, changes=['CMD ["sh"]'])
    return BUSYBOX_IMAGE
