"""A login node reached over SSH, for the Slurm SSH mode: a throwaway sshd on a bridge of its own.

The sshd and its bridge come from tests/sshfs_support.py (no sshfs mount, no host namespace):
it listens on the bridge's address in this namespace and runs commands here, where the test's
Slurm cluster is, so "the login node" is this machine seen through SSH. ``ssh_config`` names it
``login`` with the throwaway key, the port and no host-key checking.
"""

import contextlib
import os
import shutil

from .sshfs_support import SSH_PORT, SSHD, SshfsHosts, unavailable

LOGIN = "login"  # the login node's name in the ssh_config file
TOOLS = ("ip", "ssh", "ssh-keygen", "rsync")


def missing_prerequisites():
    if os.geteuid() != 0:
        return "the SSH login node needs root (a bridge and an sshd of its own)"
    missing = [tool for tool in TOOLS if not shutil.which(tool)]
    if not os.access(SSHD, os.X_OK):
        missing.append(SSHD)
    return f"the SSH login node needs {', '.join(missing)} (openssh-server openssh-client iproute2 rsync)" \
        if missing else None


class LoginNode:
    def __init__(self, work):
        self.work = str(work)
        self.sshd = SshfsHosts(os.path.join(self.work, "sshd"), self.work, [])
        self.ssh_config = os.path.join(self.work, "ssh_config")

    def start(self):
        self.sshd.start()
        with open(self.ssh_config, "w", encoding="utf-8") as config:
            config.write(f"""Host {LOGIN}
    HostName {self.sshd.server_address}
    Port {SSH_PORT}
    User root
    IdentityFile {self.sshd.ssh_dir}/client_key
    IdentitiesOnly yes
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
    LogLevel ERROR
""")
        return self

    def close(self):
        self.sshd.close()


@contextlib.contextmanager
def running_login_node(tmp_path_factory):
    """A started LoginNode, closed on exit; skips (fails under CI) without the prerequisites."""
    why = missing_prerequisites()
    if why:
        unavailable(why)
    node = LoginNode(tmp_path_factory.mktemp("login"))
    try:
        yield node.start()
    finally:
        node.close()
