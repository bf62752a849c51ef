"""Validation of every name that reaches a path, and joins that cannot leave the root.

Each validator returns the name unchanged or raises InvalidName (400). Patterns are
strict on purpose: no path separators, no leading dot, no ``..``, bounded length.
"""

import os
import re

from .exceptions import InvalidName

JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# Host names end up inside spool entry names, which use "_" as their field separator.
HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$")
CONFIG_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\.ya?ml$")
DATASET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# MongoDB database names: no /\. "$*<>:|? and space; we are stricter still.
SITE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")

RESERVED_HOSTS = {"any", "queued", "waiting", "done", "staging", "requests", "trash", "inbox", "rejected", "hosts",
                  "events", "sweeps", "archive"}


def _check(kind, pattern, value):
    if not isinstance(value, str) or not pattern.match(value) or ".." in value:
        raise InvalidName(f"invalid {kind}: {value!r}", field=kind)
    return value


def job_id(value):
    return _check("job_id", JOB_ID, value)


def host(value):
    name = _check("host", HOST, value)
    if name in RESERVED_HOSTS:
        raise InvalidName(f"{name!r} is reserved and cannot be a host name", field="host")
    return name


def config_file(value):
    """Accept ``x.yaml`` or ``configs/x.yaml`` (what clients send) and return ``x.yaml``."""
    if isinstance(value, str) and value.startswith("configs/"):
        value = value[len("configs/"):]
    return _check("config file", CONFIG_FILE, value)


def dataset(value):
    return _check("dataset", DATASET, value)


def site(value):
    return _check("site", SITE, value)


def safe_join(root, *parts):
    """Join validated parts under root and refuse anything that resolves outside it.

    Names are validated before they get here; this is the second wall against a
    symlink planted inside the share that points elsewhere.
    """
    root_real = os.path.realpath(root)
    path = os.path.join(root_real, *parts)
    real = os.path.realpath(path)
    if real != root_real and not real.startswith(root_real + os.sep):
        raise InvalidName(f"{os.path.join(*parts)!r} resolves outside the shared root", field="path")
    return path
