"""One Settings object, read from environment variables and an optional YAML file.

Precedence: explicit keyword arguments > environment (``OPEVA_<NAME>``) > the YAML
file named by ``OPEVA_CONFIG`` (or ``config_file=``) > the defaults below.
Every setting is listed in ``FIELDS`` with its default and a one-line description;
``docs/configuration.md`` is generated from the same table
(``opeva-spool settings --markdown``).
"""

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

import yaml

from .exceptions import SettingsError
from .jobs import EMBEDDED_HOST
from .spool import COMMIT_FLUSHES, FLUSH_FSYNC

DEFAULT_SHARED_ROOT = "/opt/opeva_shared_data"
DEFAULT_BIND = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_HOSTS = (EMBEDDED_HOST,)
DEFAULT_IMAGE = "opeva-simulator:latest"  # set default_image to your training image
# Formatted with job_id, config_path (the job's config snapshot, absolute as the runtime sees it) and config_file.
DEFAULT_DOCKER_COMMAND = "--config {config_path} --job_id {job_id}"
DEFAULT_PROCESS_COMMAND = "{python} -m opeva_spool.demo --config {config_path} --job_id {job_id}"
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_SCAN_INTERVAL = 5.0
DEFAULT_STOP_GRACE = 10.0
DEFAULT_HEARTBEAT_INTERVAL = 2.0
DEFAULT_OFFLINE_AFTER = 30.0
DEFAULT_MONGO_TIMEOUT_MS = 2000
JOB_USER = re.compile(r"^\d+:\d+$")  # numeric: the ids must mean the same on the share as in the container
DEFAULT_MAX_STREAMS = 256
DEFAULT_MAX_STREAMS_PER_CLIENT = 32
DEFAULT_GPU_RESERVE_AFTER = 60.0
DEFAULT_SLURM_POLL_INTERVAL = 2.0  # one squeue per agent this often, whatever the number of jobs
DEFAULT_SLURM_SYNC_INTERVAL = 10.0  # seconds between two copies of a running Slurm job's folder back (SSH mode)
DEFAULT_RETRY_BACKOFF = 10.0
DEFAULT_RETRY_BACKOFF_MAX = 600.0
RUNTIMES = ("process", "docker", "slurm")
# Archiving hides nothing from readers (docs/spool.md, "Archive"): the window only bounds what done/ holds and the
# server lists. A week keeps the current week's jobs in done/ for `ls`, and done/ at ~7,000 entries at 1,000 jobs a day.
DEFAULT_ARCHIVE_AFTER_DAYS = 7.0
# open_reads: "auto" keeps reads open with only api_token set (as before roles) and closes them with a tokens file.
OPEN_READS_AUTO = "auto"
OPEN_READS_VALUES = {OPEN_READS_AUTO: None, "true": True, "yes": True, "on": True, "1": True,
                     "false": False, "no": False, "off": False, "0": False}


@dataclass
class Settings:
    shared_root: str = DEFAULT_SHARED_ROOT
    bind: str = DEFAULT_BIND
    port: int = DEFAULT_PORT
    hosts: tuple = DEFAULT_HOSTS
    default_image: str = DEFAULT_IMAGE
    docker_command: str = DEFAULT_DOCKER_COMMAND
    process_command: str = DEFAULT_PROCESS_COMMAND
    observer: str = "native"
    scan_interval: float = DEFAULT_SCAN_INTERVAL
    commit_flush: str = FLUSH_FSYNC
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    api_token: str = ""
    tokens_file: str = ""
    open_reads: str = OPEN_READS_AUTO
    max_streams: int = DEFAULT_MAX_STREAMS
    max_streams_per_client: int = DEFAULT_MAX_STREAMS_PER_CLIENT
    embedded_worker: bool = True
    # --- agent (one worker host) ---
    host: str = EMBEDDED_HOST
    runtime: str = "process"
    capacity: int = 2
    gpu_ids: tuple = ()
    stop_grace: float = DEFAULT_STOP_GRACE
    lock_dir: str = ""
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    offline_after: float = DEFAULT_OFFLINE_AFTER
    gpu_reserve_after: float = DEFAULT_GPU_RESERVE_AFTER
    # --- retries ---
    retry_backoff: float = DEFAULT_RETRY_BACKOFF
    retry_backoff_max: float = DEFAULT_RETRY_BACKOFF_MAX
    # --- docker runtime ---
    docker_host: str = ""
    docker_data_mount: str = ""
    docker_network_mode: str = ""
    docker_allow_pull: bool = False
    docker_env: dict = field(default_factory=dict)
    job_user: str = ""
    # --- slurm runtime (docs/deploy.md, HPC) ---
    slurm_conf: str = ""
    slurm_command: str = DEFAULT_PROCESS_COMMAND
    slurm_partition: str = ""
    slurm_account: str = ""
    slurm_qos: str = ""
    slurm_time_limit: str = ""
    slurm_cpus: int = 0
    slurm_mem: str = ""
    slurm_poll_interval: float = DEFAULT_SLURM_POLL_INTERVAL
    slurm_ssh: str = ""
    slurm_ssh_config: str = ""
    slurm_remote_root: str = ""
    slurm_sync_interval: float = DEFAULT_SLURM_SYNC_INTERVAL
    # --- site data ---
    mongo_uri: str = ""
    mongo_timeout_ms: int = DEFAULT_MONGO_TIMEOUT_MS
    # --- events ---
    webhook_url: str = ""
    # --- archive and retention ---
    archive_after_days: float = DEFAULT_ARCHIVE_AFTER_DAYS
    delete_after_days: float = 0.0


DESCRIPTIONS = {
    "shared_root": "The shared directory (NFS) holding spool/, jobs/, configs/, datasets/.",
    "bind": "Address the HTTP server listens on.",
    "port": "Port the HTTP server listens on.",
    "hosts": "Known worker hosts (comma-separated in env); `local` is the embedded worker.",
    "default_image": "Docker image for jobs that name none.",
    "docker_command": "Command template for Docker jobs ({job_id}, {config_path}: the job's config snapshot, "
                      "{config_file}).",
    "process_command": "Command template for process-runtime jobs (the same fields, and {python}: this interpreter).",
    "observer": "`native` (inotify) or `polling` (sees other hosts' writes on NFS).",
    "scan_interval": "Seconds between scans of the spool (events are only hints); an ended entries' folder is "
                     "listed again only when its mtime moved.",
    "commit_flush": "How a submission's files are made durable before its commit: `fsync` (each by its writer; "
                    "the filesystem's journal merges concurrent ones) or `syncfs` (one syncfs of the share per "
                    "batch of concurrent submissions: group commit, for a share where each fsync is a round "
                    "trip). The commit renames are always group-committed (docs/spool.md).",
    "max_body_bytes": "Largest accepted request body; larger gets 413.",
    "api_token": "When set, an admin token: mutating endpoints need `Authorization: Bearer <token>` "
                 "(docs/security.md).",
    "tokens_file": "YAML file of tokens with user names and roles, hashed (`opeva-spool token add`); re-read "
                   "when it changes. Set: every request needs a token with the route's role (docs/security.md).",
    "open_reads": "Whether reading (GET) needs no token: `auto` = open with only `api_token`, closed with a "
                  "`tokens_file`; `true`; `false`.",
    "max_streams": "Most long-lived responses (`/logs/{id}?follow=1`) open at once; beyond it 503.",
    "max_streams_per_client": "Most of them one client address holds (behind a proxy: all clients); beyond it 429.",
    "embedded_worker": "`serve` also runs the worker for host `local`.",
    "host": "Name of the host an agent works for.",
    "runtime": "`process` (subprocess), `docker`, or `slurm` (each attempt an sbatch job; docs/deploy.md).",
    "capacity": "Most jobs an agent runs at once.",
    "gpu_ids": "GPU ids this host may hand out (comma-separated in env).",
    "stop_grace": "Seconds between SIGTERM and SIGKILL when stopping a job.",
    "lock_dir": "Local (not NFS) directory for same-host lock files; default: the system temp dir.",
    "heartbeat_interval": "Seconds between an agent's heartbeat rewrites.",
    "offline_after": "Seconds without a heartbeat change before a host counts as offline.",
    "gpu_reserve_after": "Seconds a job that fits this host's GPUs but finds too few free may wait before the "
                         "agent stops starting GPU jobs behind it, so that its GPUs drain to it.",
    "retry_backoff": "Seconds before the first retry of a failed `retry_on_failure` job; doubles each attempt.",
    "retry_backoff_max": "Longest wait before a retry, in seconds.",
    "docker_host": "Docker engine URL (else the DOCKER_HOST environment variable).",
    "docker_data_mount": "Host path mounted at /data in containers (default: shared_root).",
    "docker_network_mode": "Network mode for job containers (empty: engine default).",
    "docker_allow_pull": "Pull a missing image instead of failing the job.",
    "docker_env": "Extra environment for every container (YAML mapping).",
    "job_user": "`uid:gid` that job containers run as, so the service can read what they write on the share; "
                "empty: the agent's own uid:gid.",
    "slurm_conf": "The cluster's slurm.conf for the `slurm` runtime's commands (SLURM_CONF; over SSH a path on the "
                  "login node); empty: the clients' default.",
    "slurm_command": "Command template for `slurm` jobs that name no command (the fields of `process_command`).",
    "slurm_partition": "`sbatch --partition` of every `slurm` job; empty: the cluster's default partition.",
    "slurm_account": "`sbatch --account`; empty: the user's default account.",
    "slurm_qos": "`sbatch --qos`; empty: the default QOS.",
    "slurm_time_limit": "`sbatch --time` (Slurm's format: `90`, `2:00:00`, `1-00:00:00`) unless the job's "
                        "`resources.time` says; empty: the partition's default.",
    "slurm_cpus": "`sbatch --cpus-per-task` unless the job's `resources.cpus` says; 0: Slurm's default (1).",
    "slurm_mem": "`sbatch --mem` (`4G`, `500M`) unless the job's `resources.mem` says; empty: the cluster's default.",
    "slurm_poll_interval": "Seconds between the `slurm` agent's squeue calls (one call for all its jobs).",
    "slurm_ssh": "`user@login-node`: drive the cluster over SSH (one shared connection, BatchMode); empty: "
                 "Slurm's clients on this machine.",
    "slurm_ssh_config": "An ssh_config file for that connection (port, identity, jump host) instead of "
                        "~/.ssh/config.",
    "slurm_remote_root": "The share's path on the cluster when it does not mount the share: job folders are "
                         "copied there (rsync over the SSH connection) and back; empty: the cluster sees "
                         "`shared_root`.",
    "slurm_sync_interval": "Seconds between two copies of a running job's folder back from the cluster "
                           "(with `slurm_remote_root`).",
    "mongo_uri": "MongoDB URI for site data; empty disables the site endpoints (503).",
    "mongo_timeout_ms": "Server-selection and socket timeout for MongoDB, in milliseconds.",
    "archive_after_days": "Ended jobs submitted more than this many days ago move from spool/done/ into the "
                          "month files of spool/archive/ (still answering every read); 0: never.",
    "delete_after_days": "Jobs ended and submitted more than this many days ago are deleted, folder and all "
                         "(`opeva-spool archive --dry-run` lists them); 0: never (the default).",
    "webhook_url": "When set, a JSON POST to this http(s) URL each time a job ends (docs/events.md); empty: off.",
}


def _coerce(name, value, default):
    """Turn an env/YAML value into the type of the field's default."""
    try:
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            return str(value).strip().lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, tuple):
            if isinstance(value, str):
                return tuple(part.strip() for part in value.split(",") if part.strip())
            return tuple(str(part) for part in value)
        if isinstance(default, dict):
            parsed = yaml.safe_load(value) if isinstance(value, str) else value
            if not isinstance(parsed, dict):
                raise ValueError("expected a mapping")
            return {str(k): str(v) for k, v in parsed.items()}
        return str(value)
    except (TypeError, ValueError, yaml.YAMLError) as exc:
        raise SettingsError(f"setting {name!r} has an invalid value {value!r}: {_one_line(exc)}") from None


def load_settings(config_file: str | None = None, environ: Mapping[str, str] | None = None,
                  **overrides: object) -> Settings:
    environ = os.environ if environ is None else environ
    defaults = Settings()
    values = {}
    config_file = config_file or environ.get("OPEVA_CONFIG")
    if config_file:
        values.update(_read_settings_file(config_file))
    for f in fields(Settings):
        env_name = "OPEVA_" + f.name.upper()
        if env_name in environ:
            values[f.name] = environ[env_name]
    values.update({k: v for k, v in overrides.items() if v is not None})
    coerced = {name: _coerce(name, value, getattr(defaults, name)) for name, value in values.items()}
    settings = Settings(**coerced)
    if settings.observer not in ("native", "polling"):
        raise SettingsError(f"setting 'observer' must be 'native' or 'polling', not {settings.observer!r}")
    if settings.commit_flush not in COMMIT_FLUSHES:
        raise SettingsError(f"setting 'commit_flush' must be one of {', '.join(COMMIT_FLUSHES)}, "
                            f"not {settings.commit_flush!r}")
    if settings.runtime not in RUNTIMES:
        raise SettingsError(f"setting 'runtime' must be one of {', '.join(RUNTIMES)}, not {settings.runtime!r}")
    if settings.open_reads.lower() not in OPEN_READS_VALUES:
        raise SettingsError(f"setting 'open_reads' must be auto, true or false, not {settings.open_reads!r}")
    if settings.job_user and not JOB_USER.match(settings.job_user):
        raise SettingsError(f"setting 'job_user' must be a numeric uid:gid, not {settings.job_user!r}")
    return settings


def open_reads(value: str) -> bool | None:
    """The ``open_reads`` setting as True, False or None (auto: auth.Authenticator decides)."""
    return OPEN_READS_VALUES[value.lower()]


def _read_settings_file(path: str) -> dict:
    """The settings a YAML file names; a missing, unreadable or malformed file is a SettingsError."""
    try:
        with open(path, encoding="utf-8") as handle:
            loaded = yaml.safe_load(handle)
    except OSError as exc:
        raise SettingsError(f"cannot read the settings file {path}: {exc.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SettingsError(f"the settings file {path} is not valid YAML: {_one_line(exc)}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise SettingsError(f"{path} must hold a mapping of settings")
    unknown = set(loaded) - {f.name for f in fields(Settings)}
    if unknown:
        raise SettingsError(f"unknown settings in {path}: {sorted(unknown)}")
    return loaded


def _one_line(exc: Exception) -> str:
    # YAML errors span several lines; the command line prints a settings error as one.
    return " ".join(str(exc).split())


def settings_markdown():
    defaults = Settings()
    rows = ["| setting | environment | default | meaning |", "|---|---|---|---|"]
    for f in fields(Settings):
        default = getattr(defaults, f.name)
        if isinstance(default, tuple):
            default = ",".join(default)
        rows.append(f"| `{f.name}` | `OPEVA_{f.name.upper()}` | `{default!s}` | {DESCRIPTIONS[f.name]} |")
    return "\n".join(rows) + "\n"
