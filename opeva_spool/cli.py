"""The ``opeva-spool`` command: the server and agent (serve, agent, drain, settings), and client commands
for every verb of the HTTP API (submit, jobs, show, logs, progress, result, stop, delete, resubmit, sweep,
sweeps, queue, usage, hosts, configs, datasets, status). See docs/cli.md."""

import argparse
import datetime as dt
import email.message
import gc
import getpass
import json
import logging
import os
import re
import signal
import sys
import time
from dataclasses import asdict
from urllib.parse import quote, urlsplit, urlunsplit

import yaml
from rich import box
from rich.console import Console
from rich.json import JSON
from rich.live import Live
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from .client import (
    EXIT_ERROR_ANSWER,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    Client,
    ClientError,
    ServerRefused,
    Unreachable,
    default_config_path,
    resolve,
    write_config_file,
)
from .exceptions import BadRequest, SpoolError
from .jobs import EMBEDDED_HOST, parse_utc
from .settings import RUNTIMES, Settings, load_settings, settings_markdown
from .states import JobState
from .usage import BY_USER, USAGE_GROUPINGS

log = logging.getLogger("opeva_spool")

MASK = "***"
SIGNAL_POLL_SECONDS = 0.2  # how soon the agent command notices a stop signal
EXIT_BROKEN_PIPE = 141  # the reader of our output left (| head), as a shell reports SIGPIPE
WATCH_SECONDS = 2.0  # jobs --watch refresh
POLL_SECONDS = 0.5  # progress and datasets build --wait
PIPE_WIDTH = 250  # rich's width when stdout is no terminal: tables keep their natural width, unwrapped
TERMINAL_STATES = {state.value for state in JobState if state.terminal}
STATUS_STYLES = {"waiting": "dim cyan", "queued": "cyan", "dispatched": "blue", "running": "bold yellow",
                 "finished": "green", "failed": "bold red", "stopped": "magenta", "canceled": "dim"}
HOST_STYLES = {"online": "green", "suspect": "yellow", "offline": "red"}
# A number in exponent form without a dot, which YAML 1.1 leaves a string (1.2 reads it as a number).
EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
DATASET_STYLES = {"building": "yellow", "ready": "green", "failed": "bold red"}
# The order a sweep's counts by state are shown in: where its jobs are going, then how they ended.
STATE_ORDER = ("waiting", "queued", "dispatched", "running", "finished", "failed", "stopped", "canceled")
SWEEP_POLL_SECONDS = 2.0  # sweep submit --wait
# --since 7d: a span back from now, in these units.
SPAN_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
RELATIVE_SPAN = re.compile(r"(\d+(?:\.\d+)?)([mhdw])")


def _settings(args, **extra):
    return load_settings(
        config_file=args.config,
        shared_root=getattr(args, "root", None),
        **{k: v for k, v in extra.items() if v is not None},
    )


def _stop_on_signals(stop):
    """SIGTERM (systemctl stop) and SIGINT (Ctrl-C) call ``stop``, which must be signal-safe: it
    must take no lock, since the next signal can interrupt it and run it again in the same thread."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop())


def cmd_serve(args):
    from . import demo
    from .server import Server

    settings = _settings(args, bind=args.bind, port=args.port,
                         embedded_worker=False if args.no_worker else None)
    server = Server(settings)
    # What start-up built (the index of every job) lives as long as the process: frozen out of the cyclic
    # GC's sight, a full collection no longer walks it (~0.6 s with every thread stopped at 1M jobs).
    gc.freeze()
    server.listen()  # first: a port already taken starts nothing
    _stop_on_signals(server.shutdown)
    server.start()
    if args.demo:
        demo.start(server, EMBEDDED_HOST)
    server.serve_forever()  # returns once a signal asked it to, after a clean shutdown
    return 0


def cmd_agent(args):
    from .agent import Agent
    from .runtimes import make_runtime
    from .spool import Spool

    settings = _settings(args, host=args.host, runtime=args.runtime)
    stop_requested = []  # appended to by the handler: no lock taken (see _stop_on_signals)
    _stop_on_signals(lambda: stop_requested.append(True))
    agent = Agent(settings, Spool(settings.shared_root), make_runtime(settings)).start()
    signal.signal(signal.SIGUSR1, lambda *_: agent.drain())
    log.info("agent %s working for host %s with the %s runtime", agent.agent_id, agent.host, agent.runtime.name)
    while not stop_requested:
        time.sleep(SIGNAL_POLL_SECONDS)
    log.info("agent %s shutting down", agent.agent_id)
    agent.shutdown(timeout=settings.stop_grace + 5)
    return 0


def cmd_drain(args):
    from . import names
    from .spool import Spool

    settings = _settings(args)
    spool = Spool(settings.shared_root)
    host = names.host(args.host)
    # Checked before anything is written: a wrong root or a mistyped host must not leave folders behind.
    if not os.path.isdir(spool.queued_dir):
        raise BadRequest(f"{spool.root} is not an initialised shared root (it has no spool/queued/); "
                         f"give the root the server uses with --root or the shared_root setting")
    known = spool.known_hosts(settings.hosts)
    if host not in known and not (args.undo and os.path.exists(spool.drain_path(host))):
        raise BadRequest(f"unknown host {host!r}: not in the hosts setting and no agent ever ran for it on "
                         f"{spool.root} (known: {', '.join(known) or 'none'})")
    spool.request_drain(host, undo=args.undo)
    print(f"host {host}: drain {'lifted' if args.undo else 'requested'}")
    return 0


def mask_uri_password(uri):
    """``uri`` with the password of its user info replaced by ``***`` (the rest kept as it is)."""
    parts = urlsplit(uri)
    userinfo, at, hostinfo = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if not (at and colon and password):
        return uri
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{hostinfo}"))


def cmd_settings(args):
    if args.markdown:
        sys.stdout.write(settings_markdown())
        return 0
    settings = _settings(args)
    shown = asdict(settings)
    shown["api_token"] = MASK if settings.api_token else ""
    shown["mongo_uri"] = mask_uri_password(settings.mongo_uri)
    print(json.dumps(shown, indent=2, default=list))
    return 0


def _tokens_file(args) -> str:
    path = args.file or _settings(args).tokens_file
    if not path:
        raise BadRequest("no tokens file: give --file, or set tokens_file (docs/security.md)")
    return path


def cmd_token(args):
    from . import auth

    path = _tokens_file(args)
    if args.action == "add":
        entry, token = auth.add_token(path, args.user, auth.parse_roles(args.roles))
        print(f"token {entry.id} for {entry.user} ({', '.join(sorted(entry.roles))}) added to {path}; it is shown "
              "only now, the file keeps its hash:", file=sys.stderr)
        print(token)
    elif args.action == "ls":
        entries = auth.read_tokens(path)
        if args.json:
            print_json([{k: v for k, v in entry.to_dict().items() if k != "hash"} for entry in entries])
        else:
            rows = table("id", "user", "roles", "created", title=path)
            for entry in entries:
                rows.add_row(entry.id, entry.user, ",".join(sorted(entry.roles)), entry.created_at)
            console().print(rows)
    else:
        removed = auth.remove_tokens(path, args.which)
        if not removed:
            raise BadRequest(f"no token with id or user {args.which!r} in {path}")
        for entry in removed:
            print(f"removed token {entry.id} of {entry.user}")
    return 0


def _from_setting(text, name):
    """Help for an option that overrides a setting: its default is the setting's."""
    default = getattr(Settings(), name)
    default = ",".join(default) if isinstance(default, tuple) else default
    return f"{text} (default: the {name} setting, $OPEVA_{name.upper()}, else {default})"


# ----- client commands: output --------------------------------------------------------------------

def console() -> Console:
    """stdout through rich: no escape codes unless it is a terminal (rich checks), no wrapping when piped,
    and text shown as given (no markup or highlighting read into job names and logs)."""
    return Console(markup=False, highlight=False, emoji=False,
                   width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else PIPE_WIDTH)


def print_json(doc) -> None:
    print(json.dumps(doc, indent=2))


def styled(value, styles) -> Text:
    return Text(str(value or "-"), style=styles.get(value, ""))


def span(seconds: float | None) -> str:
    """A duration the way a table shows it: 45s, 12m05s, 3h07m, 2d04h."""
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if seconds >= size:
            return f"{seconds // size}{unit}{seconds % size // sub_size:02d}{sub}"
    return f"{seconds}s"


def since(start, end=None) -> float | None:
    start, end = parse_utc(start), parse_utc(end) or dt.datetime.now(dt.timezone.utc)
    return (end - start).total_seconds() if start else None


def number(value) -> float | None:
    """``value`` if it is a number (a job writes what it likes into progress.json), else None."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def percent(value) -> str:
    return "-" if number(value) is None else f"{value:.0f}%"


def table(*columns: str, title: str | None = None) -> Table:
    grid = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left", show_edge=False, pad_edge=False)
    for name in columns:
        grid.add_column(name, no_wrap=name in ("id", "name"), overflow="fold")  # ids are copied whole
    return grid


def job_field(item: dict, key: str):
    """A /jobs item's field; an older server has it only inside ``job_info``."""
    value = item.get(key)
    return value if value is not None else (item.get("job_info") or {}).get(key)


def jobs_table(items: list, total: str | None = None) -> Table:
    title = f"{len(items)} job(s)" + (f" of {total}" if total and total != str(len(items)) else "")
    grid = table("id", "name", "status", "host", "submitter", "progress", "age", "waited", "ran", title=title)
    for item in items:
        started, ended = job_field(item, "started_at"), job_field(item, "ended_at")
        ran = item.get("run_seconds")  # every attempt's run time; an older server gives the last attempt's times
        grid.add_row(item["job_id"], job_field(item, "job_name") or "-", styled(item.get("status"), STATUS_STYLES),
                     item.get("host") or "-", job_field(item, "submitted_by") or "-",
                     percent(item.get("progress_pct")), span(since(job_field(item, "submitted_at"))),
                     span(item.get("queue_wait_seconds")),
                     span(ran) if ran else span(since(started, ended)) if started else "-")
    return grid


def key_values(rows) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for key, value in rows:
        if value is not None and value != "":
            grid.add_row(key, value if isinstance(value, Text) else str(value))
    return grid


def api_path(route: str, name: str) -> str:
    """``/route/<name>`` with the name quoted: a job id, config, host or dataset name is one path segment."""
    return f"/{route}/{quote(name, safe='')}"


# ----- client commands ------------------------------------------------------------------------------

def client_of(args) -> Client:
    return Client(resolve(args.server, args.token, args.client_config))


def read_yaml_file(path: str, what: str = "an experiment config") -> dict:
    """A local YAML (or JSON) mapping, e.g. a config to submit inline; refused locally (exit 2) when it is not one."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise BadRequest(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise BadRequest(f"{path} must hold a YAML mapping ({what})")
    return data


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    """``config`` with each ``key.path=value`` set; the value is read as YAML (3 is a number, true a bool)."""
    for override in overrides:
        path, equals, raw = override.partition("=")
        keys = path.split(".")
        if not equals or not all(keys):
            raise BadRequest(f"-s wants key.path=value, not {override!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw  # not YAML (e.g. "a: b: c"): the text as it is
        if isinstance(value, str) and EXPONENT_NUMBER.fullmatch(value.strip()):
            value = float(value)  # PyYAML reads YAML 1.1, where 1e-3 is a string; a learning rate is meant
        node = config
        for depth, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise BadRequest(f"-s {override}: {'.'.join(keys[:depth + 1])} is not a mapping")
            node = child
        node[keys[-1]] = value
    return config


def gpus(value: str):
    if value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'all', not {value!r}") from None


def targets(value: str) -> str | list[str]:
    """``--target-host``: a host, ``any``, or hosts separated by commas (a list: any one of them)."""
    hosts = [host.strip() for host in value.split(",") if host.strip()]
    if not hosts:
        raise argparse.ArgumentTypeError("expected a host, 'any' or hosts separated by commas")
    return hosts if len(hosts) > 1 else hosts[0]


def job_ids(value: str) -> list[str]:
    """``--after``: job ids separated by commas (the option can be repeated too)."""
    return [job_id.strip() for job_id in value.split(",") if job_id.strip()]


def env_pair(value: str) -> tuple[str, str]:
    name, equals, text = value.partition("=")
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, not {value!r}")
    return name, text


def cmd_submit(args):
    client = client_of(args)
    body = {"target_host": args.target_host, "priority": args.priority, "submitted_by": args.submitted_by}
    for key, value in (("command", args.command_line), ("job_name", args.job_name), ("image", args.image),
                       ("gpus", args.gpus), ("max_retries", args.max_retries)):
        if value is not None:
            body[key] = value
    if args.env:
        body["env"] = dict(args.env)
    for key, lists in (("after", args.after), ("after_any", args.after_any)):
        if lists:
            body[key] = [job_id for ids in lists for job_id in ids]
    if args.retry:
        body["retry_on_failure"] = True
    if args.config_path and os.path.isfile(args.config_path):  # a local file: sent inline
        body["config"] = apply_overrides(read_yaml_file(args.config_path), args.set)
    elif args.config_path and args.set:  # a config on the share, changed here: sent inline
        name = args.config_path.removeprefix("configs/")
        body["config"] = apply_overrides(client.get(api_path("experiment-configs", name))["config"], args.set)
    elif args.config_path:
        body["config_path"] = args.config_path
    elif args.set:
        raise BadRequest("-s changes a config: give the config to submit")
    answer = client.post("/run-simulation", body)
    if args.json:
        print_json(answer)
    elif args.quiet:
        print(answer["job_id"])
    else:
        target = args.target_host if isinstance(args.target_host, str) else ",".join(args.target_host)
        console().print(f"job {answer['job_id']} {answer.get('status', 'queued')} for {answer.get('host') or target}"
                        f" (name {answer.get('job_name') or '-'}, config {answer.get('config_path') or '-'})")
    if not args.follow:
        return EXIT_OK
    sys.stdout.flush()
    return follow_to_end(client, answer["job_id"], sys.stderr if args.json or args.quiet else sys.stdout)


def follow_to_end(client: Client, job_id: str, notes) -> int:
    """Stream the job's log until the job ends; 0 when it finished, 1 otherwise."""
    status = follow_log(client, job_id)
    print(f"job {job_id} {status}", file=notes)
    return EXIT_OK if status == "finished" else EXIT_ERROR_ANSWER


def follow_log(client: Client, job_id: str, **query) -> str:
    """Print the job's log as it grows until the job ends; its final status. A stream the server ends
    before the job did (the server is restarting) is an error, not a quiet success."""
    write_chunks(client.stream(api_path("logs", job_id), follow=True, **query))
    status = client.get(api_path("status", job_id))["status"]
    if status not in TERMINAL_STATES:
        raise Unreachable(f"the server ended the log stream before job {job_id} ended (it is {status}); "
                          f"'opeva-spool logs -f {job_id}' follows it again")
    return status


def write_chunks(chunks) -> None:
    """Bytes to stdout as they come: each chunk flushed, so a follower sees a line as soon as it is served."""
    out = sys.stdout.buffer
    for chunk in chunks:
        out.write(chunk)
        out.flush()


def cmd_status(args):
    print_json(client_of(args).get(api_path("status", args.job_id)))
    return EXIT_OK


def cmd_jobs(args):
    client = client_of(args)

    def fetch():
        answer = client.call("GET", "/jobs", {"status": args.status, "host": args.host, "submitter": args.submitter,
                                              "q": args.search, "limit": args.limit})
        return answer.json(), answer.headers.get("x-total-count")

    if args.json:
        print_json(fetch()[0])
        return EXIT_OK
    out = console()
    if not args.watch or not out.is_terminal:  # piped, --watch prints one table per refresh
        out.print(jobs_table(*fetch()))
        while args.watch:  # until Ctrl-C
            time.sleep(args.interval)
            out.print(jobs_table(*fetch()))
            out.file.flush()
        return EXIT_OK
    with Live(jobs_table(*fetch()), console=out, auto_refresh=False) as live:
        while True:  # until Ctrl-C
            time.sleep(args.interval)
            live.update(jobs_table(*fetch()), refresh=True)


def cmd_show(args):
    client = client_of(args)
    if args.config:
        write_chunks([client.call("GET", api_path("job-config", args.job_id)).body])
        return EXIT_OK
    info = client.get(api_path("job-info", args.job_id))
    if args.json:
        print_json(info)
        return EXIT_OK
    progress = client.get(api_path("progress", args.job_id))
    if info.get("status") == "queued":  # its place in the queue and why it waits: /status tells them
        info = {**client.get(api_path("status", args.job_id)), **info}
    dependency = info.get("dependency") or {}
    command = info.get("command")
    out = console()
    out.print(key_values([
        ("job", info.get("job_id")), ("name", info.get("job_name")),
        ("status", styled(info.get("status"), STATUS_STYLES)),
        ("waiting for", waiting_for_text(info.get("waiting_for"))), ("waiting reason", info.get("waiting_reason")),
        ("queue position", info.get("queue_position")), ("host", info.get("host")),
        ("target", ", ".join(info.get("target_hosts") or []) or info.get("target_host")),
        ("priority", info.get("priority")), ("attempt", info.get("attempt")),
        ("progress", percent(progress.get("progress_pct"))), ("submitter", info.get("submitted_by")),
        ("submitted", info.get("submitted_at")), ("started", info.get("started_at")),
        ("ended", info.get("ended_at")), ("queue wait", seconds_text(info.get("queue_wait_seconds"))),
        ("run time", seconds_text(info.get("run_seconds"))),
        ("exit code", info.get("exit_code")), ("reason", info.get("reason")),
        ("dependency", f"{dependency.get('job_id')} {dependency.get('status')}" if dependency else None),
        ("sweep", f"{info['sweep']} #{info.get('sweep_index')}" if info.get("sweep") else None),
        ("overrides", overrides_text(info.get("overrides"))),
        ("after", ", ".join(info.get("after") or [])), ("after any", ", ".join(info.get("after_any") or [])),
        ("retries", retries_text(info)),
        ("config", info.get("config_path")), ("image", info.get("image")),
        ("command", " ".join(command) if isinstance(command, list) else command),
        ("gpus", info.get("gpus") or None), ("container", info.get("container_name")),
    ]))
    attempts = info.get("attempts") or []
    if attempts:
        keys = ["attempt", "host", "state", "started_at", "ended_at", "exit_code", "reason"]
        keys += [key for key in ("retry_at", "log") if any(attempt.get(key) for attempt in attempts)]
        grid = table(*(key.replace("_at", "").replace("_", " ") for key in keys), title="attempts")
        for attempt in attempts:
            grid.add_row(*(str(attempt.get(key) if attempt.get(key) is not None else "-") for key in keys))
        out.print(grid)
    return EXIT_OK


def seconds_text(seconds) -> str | None:
    return span(seconds) if number(seconds) is not None else None


def waiting_for_text(waiting_for) -> str | None:
    """job-info's ``waiting_for`` [{job_id, status}] as "ID (running), ID (queued)"."""
    if not waiting_for:
        return None
    return ", ".join(f"{item.get('job_id')} ({item.get('status')})" if isinstance(item, dict) else str(item)
                     for item in waiting_for)


def overrides_text(overrides) -> str | None:
    """A sweep job's overrides as "a.b=1 c=x" (values as JSON: strings quoted only where JSON quotes them)."""
    if not isinstance(overrides, dict) or not overrides:
        return None
    return " ".join(f"{key}={value_text(value)}" for key, value in overrides.items())


def value_text(value) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else json.dumps(value)


def retries_text(info: dict) -> str | None:
    retries = info.get("max_retries") or 0
    if not retries:
        return None
    on_failure = " (also after a non-zero exit)" if info.get("retry_on_failure") else ""
    return f"up to {retries}{on_failure}"


def cmd_logs(args):
    client = client_of(args)
    if args.follow:
        follow_log(client, args.job_id, tail=args.tail, attempt=args.attempt)
    else:
        write_chunks(client.stream(api_path("logs", args.job_id), tail=args.tail, attempt=args.attempt))
    return EXIT_OK


def progress_line(status: str, progress: dict) -> str:
    """What the job says about where it is: its status and episode/step counters when it writes them."""
    # A dataset build names its stage while it builds ("done" and "failed" once ended say nothing more).
    parts = [status, progress.get("stage") if status == "building" else ""]
    for key in ("episode", "step"):
        if progress.get(key) is not None and progress.get(f"{key}_total") is not None:
            parts.append(f"{key} {progress[key]}/{progress[f'{key}_total']}")
    return " ".join(part for part in parts if part)


def cmd_progress(args):
    client = client_of(args)
    if args.json:
        print_json(client.get(api_path("progress", args.job_id)))
        return EXIT_OK

    def look():
        status = client.get(api_path("status", args.job_id))["status"]
        progress = client.get(api_path("progress", args.job_id))
        return status, progress, number(progress.get("progress_pct"))

    status = watch_progress(look, f"job {args.job_id}", lambda status: status in TERMINAL_STATES)
    return EXIT_OK if status == "finished" else EXIT_ERROR_ANSWER


def watch_progress(look, name: str, ended, describe=progress_line, interval: float = POLL_SECONDS) -> str:
    """Poll ``look()`` -> (state, document, percent or None) every ``interval`` until ``ended(state)``; show it
    (``describe(state, document)``) as a rich bar on a terminal, else as one line per change. The last state."""
    out = console()
    if out.is_terminal:
        columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
        with Progress(*columns, console=out) as bar:
            task = bar.add_task(name, total=100)
            return poll_until(look, ended, lambda state, doc, pct: bar.update(
                task, completed=pct or 0, description=f"{name} {describe(state, doc)}"), interval)
    shown = [None]

    def print_change(state, doc, pct):
        line = f"{name}: {percent(pct)} {describe(state, doc)}"
        if line != shown[0]:
            print(line, flush=True)
            shown[0] = line

    return poll_until(look, ended, print_change, interval)


def poll_until(look, ended, show, interval: float = POLL_SECONDS) -> str:
    while True:
        state, doc, pct = look()
        show(state, doc, pct)
        if ended(state):
            return state
        time.sleep(interval)


def cmd_result(args):
    result = client_of(args).get(api_path("result", args.job_id))
    if args.json:
        print_json(result)
        return EXIT_OK
    out = console()
    kpis = result.get("kpis")
    if isinstance(kpis, dict) and kpis:  # what researchers compare runs by: a table first, the rest below
        grid = table("kpi", "value")
        for name, value in kpis.items():
            grid.add_row(str(name), json.dumps(value) if isinstance(value, (dict, list)) else str(value))
        out.print(grid)
        result = {key: value for key, value in result.items() if key != "kpis"}
    out.print(JSON.from_data(result))
    return EXIT_OK


def print_message(args, answer: dict, text: str | None = None) -> int:
    if args.json:
        print_json(answer)
    else:
        console().print(answer.get("message") or text or json.dumps(answer))
    return EXIT_OK


def cmd_stop(args):
    return print_message(args, client_of(args).post(api_path("stop", args.job_id)))


def cmd_delete(args):
    return print_message(args, client_of(args).delete(api_path("job", args.job_id), force=args.force))


def cmd_resubmit(args):
    body = {key: value for key, value in (("target_host", args.target_host), ("priority", args.priority))
            if value is not None}
    answer = client_of(args).post(api_path("resubmit", args.job_id), body or None)
    if args.quiet and not args.json:
        print(answer["job_id"])
        return EXIT_OK
    return print_message(args, answer, f"job {answer.get('job_id')} {answer.get('status', 'queued')} for "
                                       f"{answer.get('host')} (resubmitted from {args.job_id})")


def cmd_hosts(args):
    client = client_of(args)
    if args.host:  # hosts drain HOST [--undo]
        route = api_path("hosts", args.host) + "/drain"
        answer = client.delete(route) if args.undo else client.post(route)
        return print_message(args, answer, f"host {answer.get('host', args.host)}: "
                                           f"{'draining' if answer.get('draining') else 'not draining'}")
    answer = client.get("/hosts")
    if args.json:
        print_json(answer)
        return EXIT_OK
    grid = table("host", "state", "seen", "capacity", "gpus used", "gpus free", "running", "draining")
    for host in answer.get("hosts", []):
        all_gpus, free = host.get("gpu_ids") or [], host.get("free_gpus") or []
        seen = host.get("seconds_since_seen")
        grid.add_row(host["host"], styled(host.get("state"), HOST_STYLES), f"{span(seen)} ago" if seen is not None
                     else "never", str(host.get("capacity") if host.get("capacity") is not None else "-"),
                     str(len(all_gpus) - len(free)) if all_gpus else "-", str(len(free)) if all_gpus else "-",
                     str(len(host.get("running") or [])), Text("yes", style="yellow") if host.get("draining") else "no")
    console().print(grid)
    return EXIT_OK


# ----- sweeps, the queue, usage ---------------------------------------------------------------------

def counts_text(counts: dict) -> Text:
    """"3 running  5 queued  2 finished", each in its state's colour, states in lifecycle order."""
    text = Text()
    for state in sorted(counts, key=lambda name: (STATE_ORDER.index(name) if name in STATE_ORDER else 99, name)):
        if counts[state]:
            text.append(f"{'  ' if text else ''}{counts[state]} {state}", style=STATUS_STYLES.get(state, ""))
    return text if text else Text("-")


def read_sweep_file(path: str) -> dict:
    """A sweep's request from a local YAML or JSON file (YAML reads both). A ``config_path`` naming a local
    file (relative to the sweep file) is read and sent inline, as ``submit`` does with a local config."""
    body = read_yaml_file(path, "a sweep: config_path or config, and grid or runs")
    local = body.get("config_path")
    if isinstance(local, str) and "config" not in body:
        candidate = os.path.join(os.path.dirname(os.path.abspath(path)), local)
        if os.path.isfile(candidate):
            body["config"] = read_yaml_file(candidate)
            del body["config_path"]
    return body


def cmd_sweep_submit(args):
    client = client_of(args)
    body = read_sweep_file(args.file)
    if args.submitted_by and not body.get("submitted_by"):
        body["submitted_by"] = args.submitted_by
    answer = client.post("/sweeps", body)
    sweep_id = answer["sweep_id"]
    if args.json:
        print_json(answer)
    elif args.quiet:
        print(sweep_id)
    else:
        name = f" ({answer['name']})" if answer.get("name") else ""
        console().print(f"sweep {sweep_id}{name}: {answer.get('job_count')} job(s) {answer.get('status')}")
    if not args.wait:
        return EXIT_OK
    sys.stdout.flush()
    return wait_for_sweep(client, sweep_id, sys.stderr if args.json or args.quiet else sys.stdout)


def wait_for_sweep(client: Client, sweep_id: str, notes) -> int:
    """Show the sweep's jobs ending until all have; 0 when every one finished, 1 otherwise."""
    def look():
        doc = client.get(api_path("sweeps", sweep_id))
        counts, total = doc["counts"], doc.get("job_count")
        # A job deleted meanwhile (not_found) will not end any more than it has.
        ended = sum(counts.get(state, 0) for state in (*TERMINAL_STATES, JobState.NOT_FOUND.value))
        state = "ended" if total and ended >= total else "running"
        return state, doc, 100.0 * ended / total if total else None

    watch_progress(look, f"sweep {sweep_id}", lambda state: state == "ended", sweep_line, SWEEP_POLL_SECONDS)
    final = client.get(api_path("sweeps", sweep_id))
    counts = final["counts"]
    print(f"sweep {sweep_id} ended: {counts_text(counts).plain}", file=notes)
    return EXIT_OK if counts.get("finished", 0) == final.get("job_count") else EXIT_ERROR_ANSWER


def sweep_line(state: str, doc: dict) -> str:
    return counts_text(doc["counts"]).plain


def cmd_sweeps(args):
    items = client_of(args).get("/sweeps")
    if args.json:
        print_json(items)
        return EXIT_OK
    grid = table("id", "name", "submitter", "jobs", "states", "submitted", title=f"{len(items)} sweep(s)")
    for item in items:
        grid.add_row(item["sweep_id"], item.get("name") or "-", item.get("submitted_by") or "-",
                     str(item.get("job_count")), counts_text(item["counts"]), item.get("submitted_at") or "-")
    console().print(grid)
    return EXIT_OK


def cmd_sweep_show(args):
    client = client_of(args)
    doc = client.get(api_path("sweeps", args.sweep_id), sort=args.sort, order="desc" if args.desc else None)
    if args.json:
        print_json(doc)
        return EXIT_OK
    out = console()
    out.print(key_values([
        ("sweep", doc["sweep_id"]), ("name", doc.get("name")), ("submitter", doc.get("submitted_by")),
        ("submitted", doc.get("submitted_at")),
        ("config", doc.get("config_path")), ("status", doc.get("status")), ("jobs", doc.get("job_count")),
        ("states", counts_text(doc["counts"])), ("stop requested", doc.get("stop_requested_at")),
        ("after", ", ".join((doc.get("job_fields") or {}).get("after") or [])),
    ]))
    jobs = doc.get("jobs") if isinstance(doc.get("jobs"), list) else []
    keys = []  # the override keys, in the order the jobs give them
    for job in jobs:
        keys += [key for key in job.get("overrides") or {} if key not in keys]
    grid = table("#", "id", "status", *keys, *([args.sort] if args.sort else []), title=f"{len(jobs)} job(s)")
    for job in jobs:
        overrides = job.get("overrides") or {}
        values = [value_text(overrides.get(key)) for key in keys]
        grid.add_row(str(job.get("sweep_index", "-")), job.get("job_id") or "-",
                     styled(job.get("status"), STATUS_STYLES), *values,
                     *([value_text(job.get("value"))] if args.sort else []))
    out.print(grid)
    return EXIT_OK


def cmd_sweep_stop(args):
    answer = client_of(args).post(api_path("sweeps", args.sweep_id) + "/stop")
    return print_message(args, answer, f"sweep {args.sweep_id}: stop requested")


def cmd_sweep_rm(args):
    answer = client_of(args).delete(api_path("sweeps", args.sweep_id), force=args.force)
    return print_message(args, answer, f"sweep {args.sweep_id} deleted")


def cmd_queue(args):
    items = client_of(args).get("/queue", limit=args.limit)
    if args.json:
        print_json(items)
        return EXIT_OK
    grid = table("#", "id", "target", "priority", "gpus", "submitter", "attempt", "waiting because",
                 title=f"{len(items)} queued job(s)")
    for item in items:
        grid.add_row(str(item.get("position", "-")), item.get("job_id") or "-",
                     ",".join(item.get("target_hosts") or []) or item.get("target_host") or "-",
                     str(item.get("priority", "-")), str(item.get("gpus") or "-"), item.get("submitted_by") or "-",
                     str(item.get("attempt", "-")), item.get("waiting_reason") or "-")
    console().print(grid)
    return EXIT_OK


def since_value(value: str) -> str:
    """``--since``: an ISO 8601 time or date as given, or a span back from now (30m, 12h, 7d, 2w) as UTC ISO."""
    relative = RELATIVE_SPAN.fullmatch(value.strip())
    if relative:
        back = float(relative.group(1)) * SPAN_UNITS[relative.group(2)]
        return (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=back)).strftime("%Y-%m-%dT%H:%M:%SZ")
    if parse_utc(value) is None:
        raise argparse.ArgumentTypeError(f"expected an ISO 8601 time (2026-12-01, 2026-12-01T08:00Z) or a span "
                                         f"such as 7d, 12h, 30m, 2w; not {value!r}")
    return value


def cmd_usage(args):
    answer = client_of(args).get("/usage", by=args.by, since=args.since)
    if args.json:
        print_json(answer)
        return EXIT_OK
    by = answer.get("by") or args.by
    window = f"since {answer['since']}" if answer.get("since") else "all time"
    grid = table(by, "jobs", "attempts", "run hours", "GPU hours", title=f"usage by {by}, {window}")
    for column in grid.columns[1:]:
        column.justify = "right"
    rows = answer.get("rows") or []
    for row in rows:
        grid.add_row(*usage_cells(row.get(by) or "-", row))
    total = answer.get("total")
    if total and len(rows) > 1:
        grid.show_footer = True
        for column, value in zip(grid.columns, usage_cells("total", total), strict=True):
            column.footer = value
    console().print(grid)
    return EXIT_OK


def usage_cells(name: str, row: dict) -> list[str]:
    return [name, str(row.get("jobs", 0)), str(row.get("attempts", 0)), hours(row.get("run_hours")),
            hours(row.get("gpu_hours"))]


def hours(value) -> str:
    return f"{value:,.2f}" if number(value) is not None else "-"


def cmd_configs(args):
    client = client_of(args)
    action = args.action
    if action == "ls":
        names = client.get("/experiment-configs")
        if args.json:
            print_json(names)
        else:
            for name in names:
                print(name)
        return EXIT_OK
    route = api_path("experiment-configs", args.name.removeprefix("configs/")) if args.name else ""
    if action == "show":
        if args.json:
            print_json(client.get(route))
            return EXIT_OK
        text = client.call("GET", route, {"format": "yaml"}).body.decode("utf-8", "replace")
        out = console()
        if out.is_terminal:
            out.print(Syntax(text, "yaml"))
        else:
            sys.stdout.write(text)
        return EXIT_OK
    if action == "push":
        try:
            with open(args.file, encoding="utf-8") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise BadRequest(f"cannot read {args.file}: {exc}") from None
        body = {"file_name": args.name or os.path.basename(args.file), "config": text,
                "overwrite": not args.no_overwrite}
        return print_message(args, client.post("/experiment-configs/create", body))
    return print_message(args, client.delete(route))  # rm


def cmd_datasets(args):
    client = client_of(args)
    action = args.action
    if action == "ls":
        items = client.get("/datasets")
        if args.json:
            print_json(items)
            return EXIT_OK
        grid = table("name", "site", "period", "from", "until", "size", "created")
        for item in items:
            size = item.get("size")
            grid.add_row(item.get("name"), item.get("site") or "-", f"{item['period']} min" if item.get("period")
                         else "-", item.get("from_ts") or "-", item.get("until_ts") or "-",
                         f"{size / 1e6:.1f} MB" if isinstance(size, (int, float)) else "-",
                         item.get("created_at") or "-")
        console().print(grid)
        return EXIT_OK
    route = api_path("dataset", args.name)
    if action == "status":
        return show_dataset_status(args, client.get(api_path("dataset/status", args.name)))
    if action == "rm":
        return print_message(args, client.delete(route))
    if action == "download":
        return download_dataset(client, args.name, args.output)
    body = {"name": args.name, "site_id": args.site, "from_ts": args.from_ts, "until_ts": args.until_ts,
            "period": args.period, "description": args.description}
    if args.set:
        body["citylearn_configs"] = apply_overrides({}, args.set)
    answer = client.post("/dataset", {key: value for key, value in body.items() if value is not None})
    if not args.wait:
        return print_message(args, answer, f"dataset {answer.get('name')} {answer.get('status', 'building')}")

    def look():
        status = client.get(api_path("dataset/status", args.name))
        return status.get("state"), status, number(status.get("progress_pct"))

    state = watch_progress(look, f"dataset {args.name}", lambda state: state != "building")
    final = client.get(api_path("dataset/status", args.name))
    show_dataset_status(args, final)
    return EXIT_OK if state == "ready" else EXIT_ERROR_ANSWER


def show_dataset_status(args, status: dict) -> int:
    if args.json:
        print_json(status)
        return EXIT_OK
    warnings = status.get("warnings") or []
    console().print(key_values([
        ("dataset", status.get("name")), ("state", styled(status.get("state"), DATASET_STYLES)),
        ("progress", percent(status.get("progress_pct"))), ("stage", status.get("stage")),
        ("site", status.get("site")), ("error", status.get("error")),
        ("gaps", len(status.get("gaps") or []) + (status.get("gaps_left_off") or 0) or None),
        ("warnings", "\n".join(warnings) or None), ("updated", status.get("updated_at")),
    ]))
    return EXIT_OK


def download_dataset(client: Client, name: str, output: str | None) -> int:
    """Into ``output``, else the file name the server gives (``<name>.zip`` for a folder) here; written
    to a temp file first, so that no half file is left behind."""
    temp = f"{output or name}.part"
    try:
        with open(temp, "wb") as out:
            headers = client.download(api_path("dataset/download", name), out)
        disposition = email.message.Message()
        disposition["Content-Disposition"] = headers.get("content-disposition", "")
        # Only the name: a server's file name never chooses the directory.
        target = output or os.path.basename(disposition.get_filename() or "") or f"{name}.zip"
        os.replace(temp, target)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    print(f"dataset {name} saved to {target} ({os.path.getsize(target)} bytes)", file=sys.stderr)
    return EXIT_OK


def cmd_client_config(args):
    if args.server is not None or args.token is not None:
        write_config_file(args.client_config or default_config_path(), args.server, args.token)
    target = resolve(None, None, args.client_config)
    console().print(key_values([
        ("config file", target.config_path),
        ("server", f"{target.url}  (from {target.sources['server']})"),
        ("token", f"{MASK if target.token else 'none'}  (from {target.sources['token']})"),
    ]))
    return EXIT_OK


def cmd_fsck(args):
    from . import fsck

    settings = _settings(args)
    report = fsck.check(settings.shared_root, repair=args.repair, min_age=args.min_age,
                        offline_after=settings.offline_after)
    if args.json:
        print_json(report.to_dict())
    else:
        print_fsck(report, args.repair)
    return EXIT_OK if report.clean else EXIT_ERROR_ANSWER


def cmd_archive(args):
    from .archive import Archiver
    from .spool import Spool

    settings = _settings(args, archive_after_days=args.after_days, delete_after_days=args.delete_after_days)
    spool = Spool(settings.shared_root)
    if not os.path.isdir(spool.queued_dir):
        raise FileNotFoundError(f"{spool.root} is not an initialised shared root (it has no spool/queued/)")
    outcome = Archiver(spool, lock_dir=settings.lock_dir).run(settings.archive_after_days, settings.delete_after_days,
                                                              dry_run=args.dry_run)
    if args.json:
        print_json({"dry_run": args.dry_run, **outcome.to_dict()})
        return EXIT_OK
    would = "would " if args.dry_run else ""
    for job_id in outcome.deleted:
        print(f"{would}delete jobs/{job_id}")
    deleting = (f", {would}delete {len(outcome.deleted)} (older than {settings.delete_after_days:g} days)"
                if settings.delete_after_days > 0 else "; delete_after_days is off")
    print(f"{spool.root}: {would}archive {len(outcome.archived)} ended jobs (older than "
          f"{settings.archive_after_days:g} days){deleting}")
    return EXIT_OK


def print_fsck(report, repairing: bool) -> None:
    """One block per finding (kind and path, what is wrong, what repair did or would do), then the verdict."""
    out = console()
    for finding in report.findings:
        if finding.repaired:
            done = Text(f"repaired: {finding.repair}", style="green")
        elif finding.pending:
            done = Text("left alone: changed recently, may be in flight", style="dim")
        elif finding.repair:
            done = Text(f"repair: {finding.repair}" + ("" if repairing else " (with --repair)"), style="yellow")
        else:
            done = Text("repair: none, decide by hand", style="bold red")
        out.print(Text.assemble((finding.kind, "bold"), "  ", finding.path), soft_wrap=True)
        out.print(Text(f"  {finding.detail}"), soft_wrap=True)
        out.print(Text.assemble("  ", done), soft_wrap=True)
    problems = len(report.problems)
    verdict = "clean" if not problems else f"{problems} problem{'s' if problems != 1 else ''} remain"
    repaired = sum(finding.repaired for finding in report.findings)
    out.print(f"{report.root}: {report.jobs} job folders, {report.entries} entries: {verdict}"
              + (f"; {repaired} repaired" if repaired else ""), soft_wrap=True)


def _who():
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (a bare container)
        return ""


EXIT_HELP = (f"exit status: {EXIT_OK} done, {EXIT_ERROR_ANSWER} the server answered an error (or the job, a job of "
             f"the sweep, or the build did not finish), {EXIT_REFUSED} bad arguments or settings or refused, "
             f"{EXIT_UNREACHABLE} the server could not be reached, {EXIT_INTERRUPTED} interrupted (Ctrl-C)")


def parser():
    logging_options = argparse.ArgumentParser(add_help=False)
    logging_options.add_argument("--log-level", default="INFO", help="logging level (default: %(default)s)")
    common = argparse.ArgumentParser(add_help=False, parents=[logging_options])
    common.add_argument("--config", help="YAML settings file (default: $OPEVA_CONFIG, else none)")
    remote = argparse.ArgumentParser(add_help=False, parents=[logging_options])
    remote.add_argument("--server", help="the server's URL (default: $OPEVA_SERVER, else the client config file's "
                                         "'server', else http://127.0.0.1:8000)")
    remote.add_argument("--token", help="the API token (default: $OPEVA_TOKEN, else the client config file's "
                                        "'token', else none)")
    remote.add_argument("--client-config", help="the client config file (default: $OPEVA_CLIENT_CONFIG, else "
                                                "$XDG_CONFIG_HOME/opeva-spool/client.yaml, ~/.config if unset)")
    json_option = argparse.ArgumentParser(add_help=False)
    json_option.add_argument("--json", action="store_true", help="print the server's JSON answer (default: a "
                                                                 "human view)")
    top = argparse.ArgumentParser(prog="opeva-spool", description="Filesystem-native job spooler for OPEVA.",
                                  epilog=EXIT_HELP)
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, func, text, parents=(common,), under=sub):
        command_parser = under.add_parser(name, parents=list(parents), help=text, description=text, epilog=EXIT_HELP)
        command_parser.set_defaults(func=func)
        return command_parser

    def client_command(name, func, text, reads=True, under=sub):
        return command(name, func, text, (remote, json_option) if reads else (remote,), under)

    def job_id(command_parser):
        command_parser.add_argument("job_id", help="the job's id, as submit printed it")
        return command_parser

    serve = command("serve", cmd_serve, "run the HTTP API (and the embedded worker for host 'local')")
    serve.add_argument("--root", help=_from_setting("shared root", "shared_root"))
    serve.add_argument("--bind", help=_from_setting("address to listen on", "bind"))
    serve.add_argument("--port", type=int, help=_from_setting("port to listen on", "port"))
    serve.add_argument("--demo", action="store_true", help="submit the demo training job at start-up (default: off)")
    serve.add_argument("--no-worker", action="store_true",
                       help="do not run the embedded 'local' worker (default: the embedded_worker setting, on)")

    agent = command("agent", cmd_agent, "run the worker for one host")
    agent.add_argument("--root", help=_from_setting("shared root", "shared_root"))
    agent.add_argument("--host", help=_from_setting("the host name this agent works for", "host"))
    agent.add_argument("--runtime", choices=RUNTIMES, help=_from_setting("how jobs run", "runtime"))

    drain = command("drain", cmd_drain, "make a host's agent finish its jobs and take no new ones (written on the "
                                        "share directly; 'hosts drain HOST' asks the server instead)")
    drain.add_argument("--root", help=_from_setting("shared root", "shared_root"))
    drain.add_argument("--host", required=True, help="the host to drain (required; a configured host or one "
                                                     "whose agent has run on this root)")
    drain.add_argument("--undo", action="store_true", help="lift the drain instead (default: off)")

    submit = client_command("submit", cmd_submit, "submit a job (and follow its log with --follow)")
    submit.add_argument("config_path", nargs="?", metavar="CONFIG",
                        help="a config name under configs/ on the share, or a local YAML file (sent inline)")
    submit.add_argument("-s", "--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="change the config (repeatable; VALUE is read as YAML: 3, 0.5, true; default: none)")
    submit.add_argument("--target-host", "--target", type=targets, default=EMBEDDED_HOST,
                        help="host to run on, 'any', or hosts separated by commas, any one of which "
                             "(default: %(default)s)")
    submit.add_argument("--priority", type=int, default=0, help="-100..100, higher runs first (default: %(default)s)")
    submit.add_argument("--gpus", type=gpus, help="GPUs: a number or 'all' (default: the server's, 0)")
    submit.add_argument("--image", help="Docker image (default: the host's image setting)")
    submit.add_argument("--command", dest="command_line",
                        help="command to run instead of the image's default (default: the command template)")
    submit.add_argument("--job-name", help="the job's name (default: from the config's experiment name)")
    submit.add_argument("-e", "--env", action="append", type=env_pair, metavar="NAME=VALUE",
                        help="environment variable for the job (repeatable; default: none)")
    submit.add_argument("--max-retries", type=int, help="requeues after a lost host, and re-runs with --retry "
                                                        "(default: the server's, 0)")
    submit.add_argument("--retry", action="store_true", help="re-run the job when it exits non-zero, up to "
                                                             "--max-retries times, with a backoff (default: off)")
    submit.add_argument("--after", action="append", type=job_ids, metavar="ID[,ID...]",
                        help="wait until these jobs finished; if one fails or is stopped, this one is canceled "
                             "(repeatable; default: none)")
    submit.add_argument("--after-any", action="append", type=job_ids, metavar="ID[,ID...]",
                        help="wait until these jobs ended, however they ended (repeatable; default: none)")
    submit.add_argument("--submitted-by", default=_who(), help="who submits (default: your user name, %(default)s)")
    submit.add_argument("-f", "--follow", action="store_true",
                        help="print the job's log until it ends; exit 0 if it finished, 1 if not (default: off)")
    submit.add_argument("-q", "--quiet", action="store_true", help="print only the job's id (default: off)")

    job_id(client_command("status", cmd_status, "print a job's status (JSON)"))

    jobs = client_command("jobs", cmd_jobs, "list jobs, newest first")
    jobs.add_argument("--status", help="only jobs in this state (default: all)")
    jobs.add_argument("--host", help="only jobs of this host (default: all)")
    jobs.add_argument("--submitter", help="only jobs submitted by this user (default: all)")
    jobs.add_argument("--search", help="only jobs whose id, name or config contains this text (default: all)")
    jobs.add_argument("--limit", type=int, default=50, help="at most this many, 1-1000 (default: %(default)s)")
    jobs.add_argument("-w", "--watch", action="store_true", help="refresh the table until Ctrl-C (default: off)")
    jobs.add_argument("--interval", type=float, default=WATCH_SECONDS,
                      help="seconds between refreshes with --watch (default: %(default)s)")

    show = job_id(client_command("show", cmd_show, "a job's status, details and attempts"))
    show.add_argument("--config", action="store_true", help="print the config snapshot the job runs with, as YAML "
                                                            "(default: off)")

    logs = job_id(client_command("logs", cmd_logs, "print a job's log", reads=False))
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends (default: off)")
    logs.add_argument("--tail", type=int, help="start with the last N lines (default: the whole log)")
    logs.add_argument("--attempt", type=int, help="the log of that attempt (default: the current one)")

    job_id(client_command("progress", cmd_progress, "a progress bar until the job ends; exit 0 if it finished"))
    job_id(client_command("result", cmd_result, "a job's result"))
    job_id(client_command("stop", cmd_stop, "stop a job (a queued one is canceled)"))
    delete = job_id(client_command("delete", cmd_delete, "delete a job and its folder"))
    delete.add_argument("--force", action="store_true", help="stop a running job first (default: off)")
    resubmit = job_id(client_command("resubmit", cmd_resubmit, "submit a job again, same config and settings"))
    resubmit.add_argument("--target-host", help="host to run on (default: the job's)")
    resubmit.add_argument("--priority", type=int, help="-100..100 (default: the job's)")
    resubmit.add_argument("-q", "--quiet", action="store_true", help="print only the new job's id (default: off)")

    hosts = client_command("hosts", cmd_hosts, "list hosts; 'hosts drain HOST [--undo]' drains one")
    hosts_sub = hosts.add_subparsers(dest="action", metavar="ACTION", help="what to do (default: list the hosts)")
    hosts.set_defaults(host=None)
    hosts_drain = client_command("drain", cmd_hosts, "make the host's agent take no new jobs", under=hosts_sub)
    hosts_drain.add_argument("host", help="the host")
    hosts_drain.add_argument("--undo", action="store_true", help="lift the drain instead (default: off)")

    sweep = command("sweep", None, "sweeps: one job per set of overrides of a config (docs/sweeps.md)",
                    (logging_options,))
    sweep_sub = sweep.add_subparsers(dest="action", required=True, metavar="ACTION", help="what to do")
    sweep_submit = client_command("submit", cmd_sweep_submit, "submit a sweep described in a YAML or JSON file",
                                  under=sweep_sub)
    sweep_submit.add_argument("file", help="the sweep: the body of POST /sweeps (config_path or config, grid or "
                                           "runs, job fields); a config_path naming a local file is sent inline")
    sweep_submit.add_argument("--submitted-by", default=_who(),
                              help="who submits, unless the file says (default: your user name, %(default)s)")
    sweep_submit.add_argument("--wait", action="store_true", help="show the sweep's jobs ending until all have; "
                                                                  "exit 0 if every one finished (default: off)")
    sweep_submit.add_argument("-q", "--quiet", action="store_true", help="print only the sweep's id (default: off)")
    client_command("ls", cmd_sweeps, "list the sweeps (as 'sweeps')", under=sweep_sub)
    sweep_show = client_command("show", cmd_sweep_show, "a sweep's counts by state and its jobs with their "
                                                        "overrides and status", under=sweep_sub)
    sweep_show.add_argument("sweep_id", help="the sweep's id")
    sweep_show.add_argument("--sort", metavar="KEY", help="show and sort by this value of each job's result.json, a "
                                                          "dotted path such as kpis.average_reward (default: by index)")
    sweep_show.add_argument("--desc", action="store_true", help="largest value first (default: smallest first)")
    client_command("stop", cmd_sweep_stop, "stop every job of a sweep (queued ones are canceled)",
                   under=sweep_sub).add_argument("sweep_id", help="the sweep's id")
    sweep_rm = client_command("rm", cmd_sweep_rm, "delete a sweep and its jobs", under=sweep_sub)
    sweep_rm.add_argument("sweep_id", help="the sweep's id")
    sweep_rm.add_argument("--force", action="store_true", help="also while jobs of it run (default: off)")
    client_command("sweeps", cmd_sweeps, "list the sweeps: jobs and counts by state")

    queue = client_command("queue", cmd_queue, "queued jobs in dispatch order, and why each is waiting")
    queue.add_argument("--limit", type=int, default=100, help="at most this many, 1-1000 (default: %(default)s)")

    usage = client_command("usage", cmd_usage, "jobs, run hours and GPU hours per user or per host")
    usage.add_argument("--by", choices=USAGE_GROUPINGS, default=BY_USER, help="one row per (default: %(default)s)")
    usage.add_argument("--since", type=since_value, help="only what ran after this: an ISO 8601 time or date, or a "
                                                         "span back from now such as 7d, 12h (default: all time)")

    # The groups take no options of their own: a sub-command's defaults would overwrite them.
    configs = command("configs", None, "experiment configs on the share", (logging_options,))
    configs_sub = configs.add_subparsers(dest="action", required=True, metavar="ACTION", help="what to do")
    client_command("ls", cmd_configs, "list the configs", under=configs_sub).set_defaults(name=None)
    client_command("show", cmd_configs, "print a config (YAML)", under=configs_sub).add_argument(
        "name", help="the config's name, e.g. demo.yaml")
    push = client_command("push", cmd_configs, "save a local YAML file as a config", under=configs_sub)
    push.add_argument("file", help="the local YAML file")
    push.add_argument("--name", help="the config's name (default: the file's name)")
    push.add_argument("--no-overwrite", action="store_true", help="refuse to replace a config of that name "
                                                                  "(default: replace it, keeping the old one)")
    client_command("rm", cmd_configs, "delete a config (its content is kept in the history)",
                   under=configs_sub).add_argument("name", help="the config's name")

    datasets = command("datasets", None, "CityLearn datasets built from site data", (logging_options,))
    datasets_sub = datasets.add_subparsers(dest="action", required=True, metavar="ACTION", help="what to do")
    client_command("ls", cmd_datasets, "list the datasets", under=datasets_sub)
    build = client_command("build", cmd_datasets, "build a dataset from a site's data (docs/datasets.md)",
                           under=datasets_sub)
    build.add_argument("name", help="the dataset's name")
    build.add_argument("--site", required=True, help="the site (required)")
    build.add_argument("--from", dest="from_ts", required=True,
                       help="start, ISO 8601; no offset: the site's time zone (required)")
    build.add_argument("--until", dest="until_ts", required=True, help="end (excluded), ISO 8601 (required)")
    build.add_argument("--period", type=int, help="minutes per time step, dividing a day (default: the server's, 60)")
    build.add_argument("--description", help="free text (default: none)")
    build.add_argument("-s", "--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="citylearn_configs: schema.json overrides (repeatable; default: none)")
    build.add_argument("--wait", action="store_true", help="show the build's progress until it ends; exit 0 if "
                                                           "ready, 1 if failed (default: off)")
    client_command("status", cmd_datasets, "a dataset build's state", under=datasets_sub).add_argument(
        "name", help="the dataset's name")
    download = client_command("download", cmd_datasets, "download a dataset (a zip of its folder)",
                              under=datasets_sub, reads=False)
    download.add_argument("name", help="the dataset's name")
    download.add_argument("-o", "--output", help="the file to write (default: the server's file name, NAME.zip for "
                                                 "a folder, here)")
    client_command("rm", cmd_datasets, "delete a dataset", under=datasets_sub).add_argument(
        "name", help="the dataset's name")

    client_config = command("client-config", cmd_client_config,
                            "show where the client commands go; with --server/--token, save them in the client "
                            "config file (mode 0600)", (logging_options,))
    client_config.add_argument("--server", help="the server's URL to save (default: keep the file's)")
    client_config.add_argument("--token", help="the API token to save, '' to remove it (default: keep the file's)")
    client_config.add_argument("--client-config", help="the client config file (default: $OPEVA_CLIENT_CONFIG, "
                                                       "else $XDG_CONFIG_HOME/opeva-spool/client.yaml)")

    token = command("token", None, "API tokens in the tokens file: user names and roles (docs/security.md)",
                    (logging_options,))
    token_sub = token.add_subparsers(dest="action", required=True, metavar="ACTION", help="what to do")
    token_file = argparse.ArgumentParser(add_help=False, parents=[common])
    token_file.add_argument("--file", help="the tokens file (default: the tokens_file setting, $OPEVA_TOKENS_FILE)")
    token_add = command("add", cmd_token, "make a token for a user; prints it once, the file keeps only its hash",
                        (token_file,), token_sub)
    token_add.add_argument("user", help="the user name (a worker's: the host name it works as)")
    token_add.add_argument("--roles", default="read,submit",
                           help="comma-separated, of read, submit, admin, worker (default: %(default)s)")
    command("ls", cmd_token, "list the tokens (never the tokens or their hashes)", (token_file, json_option),
            token_sub)
    command("rm", cmd_token, "revoke a token by its id, or every token of a user", (token_file,),
            token_sub).add_argument("which", help="a token's id or a user name")
    fsck = command("fsck", cmd_fsck, "check the shared root against the spool format (docs/spool.md) and, with "
                                      "--repair, fix what is safe; exit 1 while problems remain", (common, json_option))
    fsck.add_argument("--root", help=_from_setting("shared root", "shared_root"))
    fsck.add_argument("--repair", action="store_true", help="fix what is safe to fix and say what was done "
                                                            "(default: only report)")
    fsck.add_argument("--min-age", type=float, metavar="SECONDS",
                      help="leave alone what changed more recently than this: it may be in flight (default: the "
                           "server's own thresholds, 60 s, and 600 s for a dataset build; 0 only while no server "
                           "or agent runs)")

    archive = command("archive", cmd_archive, "move ended jobs past archive_after_days into the month files of "
                                              "spool/archive/ and delete those past delete_after_days, as the "
                                              "server's maintenance does (run it on the server's machine)",
                      (common, json_option))
    archive.add_argument("--root", help=_from_setting("shared root", "shared_root"))
    archive.add_argument("--after-days", type=float, metavar="DAYS",
                         help=_from_setting("archive ended jobs submitted more than DAYS ago", "archive_after_days"))
    archive.add_argument("--delete-after-days", type=float, metavar="DAYS",
                         help=_from_setting("delete ended jobs submitted more than DAYS ago, folders and all; 0: "
                                            "never", "delete_after_days"))
    archive.add_argument("--dry-run", action="store_true", help="only list what would be archived and deleted "
                                                                "(default: do it)")

    settings = command("settings", cmd_settings, "print the effective settings (secrets masked)")
    settings.add_argument("--markdown", action="store_true", help="print the settings table for docs (default: off)")
    return top


def one_line(exc: ClientError) -> str:
    """The error's one line: the server's detail, with where in the YAML when the server says so."""
    detail = " ".join(exc.detail.split())  # a YAML parser's message spans lines, with a caret under the spot
    extra = exc.extra if isinstance(exc, ServerRefused) else {}
    if "line" in extra and f"line {extra['line']}" not in detail:
        return f"{detail} (line {extra['line']}" + (f", column {extra['column']})" if "column" in extra else ")")
    return detail


def main(argv=None):
    try:
        args = parser().parse_args(argv)
        logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return args.func(args)
    except ClientError as exc:
        print(f"opeva-spool: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except SpoolError as exc:
        print(f"opeva-spool: {exc.detail}", file=sys.stderr)
        return EXIT_REFUSED
    except OSError as exc:  # e.g. a settings file that is missing, a port already taken
        if isinstance(exc, BrokenPipeError):
            # The reader left (| head): nothing to say. stdout now goes nowhere, so that the
            # interpreter's last flush of it does not fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_BROKEN_PIPE
        print(f"opeva-spool: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        print(file=sys.stderr)  # the ^C the terminal echoed ends its line
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
