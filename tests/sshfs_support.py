"""Emulated worker hosts that see the shared root through their own sshfs (FUSE) mount.

One network namespace per host, joined by veth pairs to a bridge in the root namespace on
a private /24 of 10.201.x.0 that no interface here uses yet. A throwaway sshd (own host key,
own config, own authorized key) listens only on the bridge address; each host mounts the
shared root with sshfs from inside its namespace, so all its file operations go through
SFTP — like a second machine on NFS: rename is atomic at the server, flock is not forwarded,
inotify does not see the other hosts' writes, and listings may be cached (turned off here).

Needs root, ``ip``, ``nsenter``, ``sshd``, ``ssh``, ``ssh-keygen``, ``sshfs``, ``fusermount3``
and /dev/fuse (``.ci/hosts.sh`` installs them). Without them CI fails and elsewhere the tests skip.
Everything is torn down in ``close()``, which also works after a partial ``start()``.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest

SSH_PORT = 2222
TOOLS = ("ip", "nsenter", "ssh", "ssh-keygen", "sshfs", "fusermount3")
SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = "/run/sshd"  # compiled into Debian's sshd; systemd makes it for the system one
# Every lookup goes to the server: the kernel's name/attribute caches off (timeouts 0) and
# sshfs's own directory cache off. With the defaults (1 s kernel, 20 s sshfs dir cache)
# a host lists jobs that another host already claimed, and sees new ones up to 20 s late.
SSHFS_CACHE_OPTIONS = "dir_cache=no,attr_timeout=0,entry_timeout=0,negative_timeout=0"


def unavailable(why):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why} (CI must provide it: .ci/hosts.sh)")
    pytest.skip(why)


def missing_prerequisites():
    """Why the emulation cannot run here, or None."""
    if os.geteuid() != 0:
        return "emulated sshfs hosts need root (network namespaces, FUSE mounts)"
    missing = [tool for tool in TOOLS if not shutil.which(tool)]
    if not os.access(SSHD, os.X_OK):
        missing.append(SSHD)
    if missing:
        return f"emulated sshfs hosts need {', '.join(missing)} (openssh-server openssh-client sshfs iproute2 fuse3)"
    if not os.path.exists("/dev/fuse"):
        return "emulated sshfs hosts need /dev/fuse"
    return None


def new_hosts(tmp_path_factory, name, host_names):
    """(work dir, shared root, SshfsHosts not yet started) — or skip/fail without the prerequisites."""
    why = missing_prerequisites()
    if why:
        unavailable(why)
    work = tmp_path_factory.mktemp(name)
    root = work / "share"
    root.mkdir()
    return work, root, SshfsHosts(work / "hosts", root, host_names)


def _run(*command):
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def _quiet(*command):
    return subprocess.run(command, capture_output=True).returncode == 0


def _free_subnet():
    """The first 10.201.x.0/24 that no interface or route here uses yet."""
    used = _run("ip", "-4", "-o", "addr", "show") + _run("ip", "-4", "route", "show")
    for third in range(0, 250):
        if f"10.201.{third}." not in used:
            return f"10.201.{third}"
    raise RuntimeError("no free 10.201.x.0/24 subnet")


def _mounted(path):
    with open("/proc/mounts", encoding="utf-8") as mounts:
        return any(line.split()[1] == path for line in mounts)


class Host:
    def __init__(self, name, netns, veth, address, mount, local):
        self.name, self.netns, self.veth, self.address = name, netns, veth, address
        self.mount = mount  # this host's view of the shared root
        self.local = local  # this host's local disk (lock dir, logs)
        self.sshfs = None

    def command(self, *argv):
        """argv run inside this host's network namespace."""
        return ["nsenter", f"--net=/run/netns/{self.netns}", *argv]


class SshfsHosts:
    """Start with ``start()``, always ``close()``; ``hosts[name]`` gives each Host."""

    def __init__(self, work, shared_root, names):
        self.work = str(work)
        self.shared_root = str(shared_root)
        self.names = names
        self.tag = uuid.uuid4().hex[:6]  # interface/namespace names are per run: runs may overlap
        self.bridge = f"osb{self.tag}"
        self.hosts = {}
        self.sshd = None
        self.made_privsep = False
        self.server_address = None

    # ----- setup --------------------------------------------------------------------------

    def start(self):
        os.makedirs(self.work, exist_ok=True)
        subnet = _free_subnet()
        self.server_address = f"{subnet}.1"
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.server_address}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        for index, name in enumerate(self.names):
            host = Host(name, netns=f"osn{self.tag}{index}", veth=f"osv{self.tag}{index}",
                        address=f"{subnet}.{11 + index}", mount=os.path.join(self.work, name, "share"),
                        local=os.path.join(self.work, name, "local"))
            self.hosts[name] = host
            _run("ip", "netns", "add", host.netns)
            _run("ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
            _run("ip", "link", "set", host.veth, "master", self.bridge, "up")
            _run("ip", "-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
            _run("ip", "-n", host.netns, "link", "set", "lo", "up")
            _run("ip", "-n", host.netns, "link", "set", "eth0", "up")
            os.makedirs(host.mount)
            os.makedirs(host.local)
        self._start_sshd()
        for host in self.hosts.values():
            self._mount(host)
        return self

    def _start_sshd(self):
        ssh = os.path.join(self.work, "ssh")
        os.makedirs(ssh, mode=0o700)
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "opeva-test-host", "-f", f"{ssh}/host_key")
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "opeva-test-client", "-f", f"{ssh}/client_key")
        with open(f"{ssh}/client_key.pub", encoding="utf-8") as public:
            key = public.read().strip()
        subnet = self.server_address.rsplit(".", 1)[0]
        with open(f"{ssh}/authorized_keys", "w", encoding="utf-8") as keys:
            keys.write(f'from="{subnet}.0/24",restrict {key}\n')
        with open(f"{ssh}/sshd_config", "w", encoding="utf-8") as config:
            config.write(f"""ListenAddress {self.server_address}:{SSH_PORT}
HostKey {ssh}/host_key
PidFile {ssh}/sshd.pid
AuthorizedKeysFile {ssh}/authorized_keys
AllowUsers root
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
X11Forwarding no
AllowTcpForwarding no
PermitTTY no
MaxStartups 50
Subsystem sftp internal-sftp
""")
        if not os.path.isdir(PRIVSEP_DIR):
            os.makedirs(PRIVSEP_DIR, mode=0o755)
            self.made_privsep = True
        self.ssh_dir = ssh
        # -D: stay in the foreground (our child, so we can always kill it); -e: log to stderr.
        with open(f"{ssh}/sshd.log", "ab") as log:
            self.sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", f"{ssh}/sshd_config"], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if self.sshd.poll() is not None:
                raise RuntimeError(f"sshd exited ({self.sshd.returncode}); see {ssh}/sshd.log")
            try:
                socket.create_connection((self.server_address, SSH_PORT), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"sshd did not listen within 5 s; see {ssh}/sshd.log")

    def _mount(self, host):
        options = ",".join([
            "reconnect", "ServerAliveInterval=5", "ServerAliveCountMax=3", "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null", "BatchMode=yes", "IdentitiesOnly=yes",
            f"IdentityFile={self.ssh_dir}/client_key", f"Port={SSH_PORT}", "LogLevel=ERROR",
            SSHFS_CACHE_OPTIONS,
        ])
        with open(os.path.join(host.local, "sshfs.log"), "ab") as log:
            # -f: foreground, so the sshfs process is our child and can always be killed; in a
            # process group of its own with its ssh client, which outlives it if it dies mid-connect.
            # -F /dev/null: no user or system ssh_config changes what the test asked for.
            host.sshfs = subprocess.Popen(
                host.command("sshfs", "-f", "-F", "/dev/null", "-o", options,
                             f"root@{self.server_address}:{self.shared_root}", host.mount),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 5
        while not _mounted(host.mount):
            if host.sshfs.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshfs for {host.name} did not mount; see {host.local}/sshfs.log")
            time.sleep(0.02)

    # ----- processes on a host ------------------------------------------------------------

    def popen(self, host, argv, env, log_path, cwd=None):
        """argv inside host's network namespace (its files: the mount at host.mount)."""
        with open(log_path, "ab") as log:
            return subprocess.Popen(self.hosts[host].command(*argv), env=env, cwd=cwd, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def python(self, host, argv, env, log_path, cwd=None):
        return self.popen(host, [sys.executable, *argv], env, log_path, cwd)

    # ----- teardown -----------------------------------------------------------------------

    def close(self):
        """Undo everything start() did, as far as it got; never raises."""
        for host in self.hosts.values():
            if _mounted(host.mount) and not _quiet("fusermount3", "-u", host.mount):
                _quiet("umount", "-l", host.mount)
            if host.sshfs is not None:
                _stop(host.sshfs)
                _kill_group(host.sshfs.pid)  # its ssh client, if still there
        if self.sshd is not None:
            # sshd's per-connection children make sessions of their own (setsid) and are not
            # ended with it: a connection still in its handshake would linger for LoginGraceTime.
            children = _descendants(self.sshd.pid)
            _stop(self.sshd)
            for pid in children:
                _kill(pid)
        for host in self.hosts.values():
            _quiet("ip", "link", "del", host.veth)  # also removes its peer in the namespace
            _quiet("ip", "netns", "del", host.netns)
        _quiet("ip", "link", "del", self.bridge)
        if self.made_privsep:
            try:
                os.rmdir(PRIVSEP_DIR)
            except OSError:
                pass


def _descendants(pid):
    """Ids of the processes below pid (children, grandchildren ...), read from /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as stat:
                    parents.setdefault(int(stat.read().rsplit(")", 1)[1].split()[1]), []).append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def _kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def _stop(proc, timeout=5):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
