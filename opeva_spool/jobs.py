"""What a job is: its spec (validated from a request or a dropped job.json), job_info.json,
and the layout of its data folder ``jobs/<job_id>/`` (which never moves)."""

import datetime as dt
import hashlib
import os
import re
import time
from dataclasses import dataclass, field
from typing import NamedTuple

from . import names
from .exceptions import BadRequest

MIN_PRIORITY, MAX_PRIORITY, DEFAULT_PRIORITY = -100, 100, 0
MAX_RETRIES_LIMIT = 20
MAX_ENV_VARS = 200
MAX_DEPENDENCIES = 1000
MAX_TARGET_HOSTS = 64
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
UNSAFE_IN_JOB_NAME = re.compile(r"[^A-Za-z0-9_.-]")
ANY_HOST = "any"
# The host name of the server's embedded worker, and where a job goes unless it says otherwise.
EMBEDDED_HOST = "local"
# Where a config names its run: the current training image's layout first, then the seed's.
RUN_NAME_KEYS = (("metadata", "experiment_name", "run_name"), ("experiment", "name", "run_name"))
# A Docker image reference, [registry[:port]/]path[:tag][@digest], path components lowercase.
_REGISTRY_PART = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_REFERENCE = re.compile(
    rf"(?:{_REGISTRY_PART}(?:\.{_REGISTRY_PART})*(?::[0-9]+)?/)?{_PATH_PART}(?:/{_PATH_PART})*"
    r"(?::\w[\w.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?",
    re.ASCII,
)
# An image file or folder on an HPC cluster (the slurm runtime: Charliecloud, Apptainer): an absolute path
# of plain names, none of them "." or "..".
IMAGE_PATH = re.compile(r"(?:/(?!\.\.?(?:/|$))[A-Za-z0-9._+-]+)+/?", re.ASCII)
# What a job may ask a batch scheduler for (the slurm runtime's sbatch options); other runtimes ignore it.
RESOURCE_KEYS = ("cpus", "mem", "time")
MAX_RESOURCE_CPUS = 100_000
MEMORY = re.compile(r"^[1-9][0-9]{0,8}[KMGT]?$")  # sbatch --mem: a number, in MB unless a unit follows
# Slurm's time formats: minutes, minutes:seconds, hours:minutes:seconds, days-hours[:minutes[:seconds]].
TIME_LIMIT = re.compile(r"^(?:(\d{1,5})-(\d{1,2})(?::(\d{1,2}))?(?::(\d{1,2}))?"
                        r"|(\d{1,7})(?::(\d{1,2}))?(?::(\d{1,2}))?)$")
# The snapshot of the job's config in its folder, taken at submit: what the job runs with.
CONFIG_SNAPSHOT = "config.yaml"

# Sub-folders the real image expects to find or creates itself.
DATA_SUBDIRS = ("logs", "progress", "results", "attempts")


def utc_now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def utc_now_precise(later: float = 0.0) -> str:
    """UTC now (plus ``later`` seconds) with microseconds, fixed width: events and progress points a moment
    apart never share a time."""
    return (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=later)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_utc(text: object) -> dt.datetime | None:
    """An ISO-8601 time as an aware datetime (a bare one counts as UTC), or None if ``text`` is none."""
    if not isinstance(text, str) or not text:
        return None
    try:  # Python 3.10 reads no "Z"
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


@dataclass
class JobSpec:
    job_id: str
    job_name: str
    target_host: str
    config_file: str = ""  # a file name under configs/, or "" for a job without a config
    command: object = None  # None: the host's command template; else a string or list, run as given
    image: str = ""
    env: dict = field(default_factory=dict)
    priority: int = DEFAULT_PRIORITY
    max_retries: int = 0
    gpus: object = 0  # 0, a count, or "all"
    submitted_by: str = ""
    submitted_at: str = ""
    origin: str = "api"
    inbox_folder: str = ""  # for origin inbox: "<folder>.<ingest token>" (see inbox.py)
    experiment_name: str = ""
    run_name: str = ""
    config_sha256: str = ""  # of the snapshot jobs/<id>/config.yaml; "" for a job without a config
    target_hosts: list = field(default_factory=list)  # a request's list of hosts (target_host is then "any")
    after: list = field(default_factory=list)  # job ids that must end finished before this one is queued
    after_any: list = field(default_factory=list)  # job ids that must end, however, before it is queued
    retry_on_failure: bool = False  # a non-zero exit is retried (up to max_retries, with a backoff)
    sweep: str | None = None  # the id of the sweep this job belongs to
    sweep_index: int | None = None
    overrides: dict = field(default_factory=dict)  # the sweep's dotted-key overrides applied to its config
    resources: dict = field(default_factory=dict)  # {cpus, mem, time} for a batch scheduler (slurm runtime)

    def to_dict(self):
        # Not dataclasses.asdict: its deep copy is a tenth of a submission's CPU time.
        data = dict(self.__dict__)
        data["env"] = dict(self.env)
        data["overrides"] = dict(self.overrides)
        data["resources"] = dict(self.resources)
        for key in ("target_hosts", "after", "after_any"):
            data[key] = list(data[key])
        if isinstance(self.command, list):
            data["command"] = list(self.command)
        return data

    @classmethod
    def from_dict(cls, data):
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def job_info(self):
        """job_info.json as the original API shaped it, plus our fields."""
        info = self.to_dict()
        info["config_path"] = f"configs/{self.config_file}" if self.config_file else None
        info["config_sha256"] = self.config_sha256 or None
        info["container_id"] = None
        info["container_name"] = None
        return info


def _optional_str(body, key, limit=256):
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > limit:
        raise BadRequest(f"{key!r} must be a string of at most {limit} characters", field=key)
    return value


def _int_in(body, key, default, low, high):
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"{key!r} must be an integer from {low} to {high}", field=key)
    return value


def _command(value):
    if value is None:
        return None
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list) and value and all(isinstance(part, str) for part in value):
        return value
    raise BadRequest("'command' must be a non-empty string or a list of strings", field="command")


def _env(value):
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_ENV_VARS:
        raise BadRequest(f"'env' must be an object of at most {MAX_ENV_VARS} variables", field="env")
    for key, item in value.items():
        if not ENV_NAME.match(key) or not isinstance(item, (str, int, float, bool)):
            raise BadRequest(f"'env' entry {key!r} must be NAME: string", field="env")
    return {key: str(item) for key, item in value.items()}


def _gpus(value):
    if value in (None, 0):
        return 0
    if value == "all" or (isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 64):
        return value
    raise BadRequest("'gpus' must be 0, a count up to 64, or \"all\"", field="gpus")


def _image(value):
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or len(value) > 256 or not (IMAGE_REFERENCE.fullmatch(value)
                                                              or IMAGE_PATH.fullmatch(value)):
        raise BadRequest("'image' must be a Docker image reference such as 'python:3.11-slim' or "
                         "'registry:5000/org/name:tag' (lowercase name, at most 256 characters), or on a Slurm "
                         "host an image's absolute path on the cluster", field="image")
    return value


def time_limit_seconds(text: str) -> int | None:
    """Seconds of a Slurm time limit ("90" minutes, "1:30:00", "2-12"); None for none ("", UNLIMITED) or a
    text that is not one."""
    match = TIME_LIMIT.match(text.strip())
    if match is None:
        return None
    days, day_hours, day_minutes, day_seconds, first, second, third = (int(part or 0) for part in match.groups())
    if match.group(1) is not None:
        return ((days * 24 + day_hours) * 60 + day_minutes) * 60 + day_seconds
    if match.group(7) is not None:  # hours:minutes:seconds
        return (first * 60 + second) * 60 + third
    return first * 60 + second  # minutes[:seconds]


def _resources(value):
    if value is None:
        return {}
    if not isinstance(value, dict) or set(value) - set(RESOURCE_KEYS):
        raise BadRequest(f"'resources' must be an object with some of {', '.join(RESOURCE_KEYS)}", field="resources")
    resources = {}
    cpus = value.get("cpus")
    if cpus is not None:
        if isinstance(cpus, bool) or not isinstance(cpus, int) or not 1 <= cpus <= MAX_RESOURCE_CPUS:
            raise BadRequest(f"'resources.cpus' must be an integer from 1 to {MAX_RESOURCE_CPUS}", field="resources")
        resources["cpus"] = cpus
    mem = value.get("mem")
    if mem is not None:
        if isinstance(mem, bool) or not MEMORY.match(str(mem)):
            raise BadRequest("'resources.mem' must be megabytes or a size such as '500M', '4G'", field="resources")
        resources["mem"] = str(mem)
    limit = value.get("time")
    if limit is not None:
        if isinstance(limit, bool) or not time_limit_seconds(str(limit)):
            raise BadRequest("'resources.time' must be minutes or a Slurm time such as '2:00:00', '1-00:00:00'",
                             field="resources")
        resources["time"] = str(limit)
    return resources


def experiment_fields(config):
    """(experiment name, run name) from the first layout of RUN_NAME_KEYS the config uses; "" for what it lacks."""
    if isinstance(config, dict):
        for section, name_key, run_key in RUN_NAME_KEYS:
            block = config.get(section)
            if isinstance(block, dict) and (block.get(name_key) or block.get(run_key)):
                return str(block.get(name_key) or "")[:256], str(block.get(run_key) or "")[:256]
    return "", ""


def job_name_from(config, job_id):
    """``<experiment name>-<run name>`` with unsafe characters replaced, as the original did."""
    experiment, run = experiment_fields(config)
    if experiment:
        return UNSAFE_IN_JOB_NAME.sub("_", f"{experiment}-{run or 'run'}")[:128]
    return f"job-{job_id[:8]}"


class JobConfig(NamedTuple):
    """The experiment config a job runs with: its name under configs/, its parsed values, and
    the exact text that is snapshotted into the job's folder."""

    file_name: str
    values: dict
    text: str

    @property
    def data(self) -> bytes:
        return self.text.encode("utf-8")


def _targets(value, known_hosts):
    """(target_host, target_hosts) from a request's target_host: a host, "any", or a list of hosts."""
    if isinstance(value, list):
        # A host named twice counts once; strings are checked first: an object or a list in it is unhashable.
        hosts = list(dict.fromkeys(value)) if all(isinstance(host, str) for host in value) else []
        if not hosts or len(hosts) > MAX_TARGET_HOSTS:
            raise BadRequest(f"'target_host' must be a host, 'any', or a list of 1 to {MAX_TARGET_HOSTS} hosts",
                             field="target_host")
        if len(hosts) == 1:
            value = hosts[0]
        else:
            for host in hosts:
                _known_host(host, known_hosts)
            return ANY_HOST, hosts
    target = value or EMBEDDED_HOST
    if not isinstance(target, str):
        raise BadRequest("'target_host' must be a host, 'any', or a list of hosts", field="target_host")
    if target != ANY_HOST:
        _known_host(target, known_hosts)
    return target, []


def _known_host(host, known_hosts):
    names.host(host)
    if host not in known_hosts:
        raise BadRequest(f"unknown target_host {host!r}; known hosts: {sorted(known_hosts)} or 'any'",
                         field="target_host")


def _job_ids(body, key):
    value = body.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_DEPENDENCIES or not all(isinstance(i, str) for i in value):
        raise BadRequest(f"{key!r} must be a list of at most {MAX_DEPENDENCIES} job ids", field=key)
    for job_id in value:
        names.job_id(job_id)
    return list(dict.fromkeys(value))


def gpus_needed(wanted: int | str, gpu_total: int) -> int | None:
    """GPUs a job asking ``wanted`` (0, N or "all") takes on a host with ``gpu_total``; None if it never fits there."""
    if wanted == "all":
        return gpu_total or None
    return wanted if wanted <= gpu_total else None


def check_gpus_fit(gpus, eligible, gpu_counts):
    """400 when no host the job may run on has ``gpus`` GPUs. ``gpu_counts``: {host: GPUs it reported};
    a host that never reported may have any number, so it is given the benefit of the doubt."""
    if not gpus or any(host not in gpu_counts for host in eligible):
        return
    if not any(gpus_needed(gpus, gpu_counts[host]) is not None for host in eligible):
        wanted = 1 if gpus == "all" else gpus
        have = ", ".join(f"{host} has {gpu_counts[host]}" for host in sorted(eligible)) or "none is known"
        raise BadRequest(f"no host this job may run on has {wanted} GPU{'s' * (wanted != 1)}: {have}",
                         field="gpus")


def build_spec(body: dict, known_hosts, *, job_id: str, config: JobConfig | None = None,
               origin: str = "api", inbox_folder: str = "", gpu_counts: dict | None = None) -> JobSpec:
    """A validated JobSpec from a submission body and the job's config (None for a job without one).

    ``gpu_counts`` ({host: GPUs}, from heartbeats) lets a job that no eligible host could ever
    run be refused now rather than wait forever.
    """
    target, target_hosts = _targets(body.get("target_host"), known_hosts)
    gpus = _gpus(body.get("gpus"))
    eligible = target_hosts or (known_hosts if target == ANY_HOST else [target])
    check_gpus_fit(gpus, eligible, gpu_counts or {})
    retry_on_failure = body.get("retry_on_failure", False)
    if not isinstance(retry_on_failure, bool):
        raise BadRequest("'retry_on_failure' must be true or false", field="retry_on_failure")
    after, after_any = _job_ids(body, "after"), _job_ids(body, "after_any")
    if job_id in after or job_id in after_any:
        raise BadRequest(f"job {job_id!r} cannot wait for itself", field="after")
    values = config.values if config is not None else None
    job_name = _optional_str(body, "job_name", 128)
    experiment_name, run_name = experiment_fields(values)
    return JobSpec(
        job_id=job_id,
        job_name=UNSAFE_IN_JOB_NAME.sub("_", job_name) if job_name else job_name_from(values, job_id),
        target_host=target,
        config_file=config.file_name if config is not None else "",
        command=_command(body.get("command")),
        image=_image(body.get("image")),
        env=_env(body.get("env")),
        priority=_int_in(body, "priority", DEFAULT_PRIORITY, MIN_PRIORITY, MAX_PRIORITY),
        max_retries=_int_in(body, "max_retries", 0, 0, MAX_RETRIES_LIMIT),
        gpus=gpus,
        submitted_by=_optional_str(body, "submitted_by"),
        submitted_at=utc_now(),
        origin=origin,
        inbox_folder=inbox_folder,
        experiment_name=experiment_name,
        run_name=run_name,
        config_sha256=hashlib.sha256(config.data).hexdigest() if config is not None else "",
        target_hosts=target_hosts,
        after=after,
        after_any=after_any,
        retry_on_failure=retry_on_failure,
        resources=_resources(body.get("resources")),
    )


class JobFolder:
    """Paths inside ``jobs/<job_id>/``; the layout the real image writes into."""

    def __init__(self, jobs_dir, job_id):
        self.job_id = job_id
        self.path = os.path.join(jobs_dir, job_id)

    @classmethod
    def of_log(cls, log_path):
        """The folder whose ``log`` is ``log_path`` (runtimes and streams get the log's path alone)."""
        folder = os.path.dirname(os.path.dirname(log_path))
        return cls(os.path.dirname(folder), os.path.basename(folder))

    @property
    def job_info(self):
        return os.path.join(self.path, "job_info.json")

    @property
    def config(self):
        """The config snapshot taken at submit; the job runs with this, not with configs/."""
        return os.path.join(self.path, CONFIG_SNAPSHOT)

    @property
    def log(self):
        return os.path.join(self.path, "logs", f"{self.job_id}.log")

    def attempt_log(self, attempt):
        """Where an earlier attempt's log is kept once the next attempt starts (the current one is ``log``)."""
        return os.path.join(self.path, "logs", f"{self.job_id}.attempt-{attempt}.log")

    @property
    def progress(self):
        return os.path.join(self.path, "progress", "progress.json")

    @property
    def result(self):
        return os.path.join(self.path, "results", "result.json")

    def attempt_record(self, attempt):
        return os.path.join(self.path, "attempts", f"{attempt}.json")
