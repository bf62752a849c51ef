"""What a job is: its spec (validated from a request or a dropped job.json), job_info.json,
and the layout of its data folder ``jobs/<job_id>/`` (which never moves)."""

import os
import re
import time
from dataclasses import dataclass, field

from . import names
from .exceptions import BadRequest

MIN_PRIORITY, MAX_PRIORITY, DEFAULT_PRIORITY = -100, 100, 0
MAX_RETRIES_LIMIT = 20
MAX_ENV_VARS = 200
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
UNSAFE_IN_JOB_NAME = re.compile(r"[^A-Za-z0-9_.-]")
ANY_HOST = "any"

# Sub-folders the real image expects to find or creates itself.
DATA_SUBDIRS = ("logs", "progress", "results", "attempts")


def utc_now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


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

    def to_dict(self):
        # Not dataclasses.asdict: its deep copy is a tenth of a submission's CPU time.
        data = dict(self.__dict__)
        data["env"] = dict(self.env)
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


def job_name_from(config, job_id):
    """``<experiment.name>-<experiment.run_name>`` with unsafe characters replaced, as the original did."""
    experiment = config.get("experiment") if isinstance(config, dict) else None
    if isinstance(experiment, dict) and experiment.get("name"):
        raw = f"{experiment.get('name')}-{experiment.get('run_name', 'run')}"
        return UNSAFE_IN_JOB_NAME.sub("_", raw)[:128]
    return f"job-{job_id[:8]}"


def experiment_fields(config):
    experiment = config.get("experiment") if isinstance(config, dict) else None
    if not isinstance(experiment, dict):
        return "", ""
    return str(experiment.get("name", ""))[:256], str(experiment.get("run_name", ""))[:256]


def build_spec(body, known_hosts, config_file, config, job_id, origin="api", inbox_folder=""):
    """A validated JobSpec from a submission body; ``config`` is the parsed YAML (or None)."""
    target = body.get("target_host") or "local"
    if target != ANY_HOST:
        names.host(target)
        if target not in known_hosts:
            raise BadRequest(
                f"unknown target_host {target!r}; known hosts: {sorted(known_hosts)} or 'any'",
                field="target_host",
            )
    job_name = _optional_str(body, "job_name", 128)
    experiment_name, run_name = experiment_fields(config)
    return JobSpec(
        job_id=job_id,
        job_name=UNSAFE_IN_JOB_NAME.sub("_", job_name) if job_name else job_name_from(config, job_id),
        target_host=target,
        config_file=config_file or "",
        command=_command(body.get("command")),
        image=_optional_str(body, "image"),
        env=_env(body.get("env")),
        priority=_int_in(body, "priority", DEFAULT_PRIORITY, MIN_PRIORITY, MAX_PRIORITY),
        max_retries=_int_in(body, "max_retries", 0, 0, MAX_RETRIES_LIMIT),
        gpus=_gpus(body.get("gpus")),
        submitted_by=_optional_str(body, "submitted_by"),
        submitted_at=utc_now(),
        origin=origin,
        inbox_folder=inbox_folder,
        experiment_name=experiment_name,
        run_name=run_name,
    )


class JobFolder:
    """Paths inside ``jobs/<job_id>/``; the layout the real image writes into."""

    def __init__(self, jobs_dir, job_id):
        self.job_id = job_id
        self.path = os.path.join(jobs_dir, job_id)

    @property
    def job_info(self):
        return os.path.join(self.path, "job_info.json")

    @property
    def log(self):
        return os.path.join(self.path, "logs", f"{self.job_id}.log")

    @property
    def progress(self):
        return os.path.join(self.path, "progress", "progress.json")

    @property
    def result(self):
        return os.path.join(self.path, "results", "result.json")

    def attempt_record(self, attempt):
        return os.path.join(self.path, "attempts", f"{attempt}.json")
