"""Where this machine's lock files live: one set per shared root and host name.

The locks are flocks on local disk (flock is not shared over NFS), so they only
exclude processes of this machine. Two deployments on one machine (two roots, each
with its embedded host ``local``) must not share them: the file names carry the
host name and a digest of the root's real path.
"""

import hashlib
import os
import tempfile


def root_digest(shared_root: str) -> str:
    """A short, stable name for a shared root (its real path, so two spellings of one root agree)."""
    return hashlib.sha256(os.path.realpath(shared_root).encode()).hexdigest()[:12]


def local_lock_path(lock_dir: str, shared_root: str, host: str, kind: str) -> str:
    """``<lock_dir>/opeva-spool-<host>-<root digest>.<kind>``; ``lock_dir`` empty means the system temp dir."""
    return os.path.join(lock_dir or tempfile.gettempdir(), f"opeva-spool-{host}-{root_digest(shared_root)}.{kind}")
