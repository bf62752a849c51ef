"""The ``opeva-spool`` command: serve, agent, submit, status, drain, settings."""

import argparse
import http.client
import json
import logging
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict
from urllib.parse import urlsplit, urlunsplit

from .exceptions import BadRequest, SpoolError
from .jobs import EMBEDDED_HOST
from .settings import Settings, load_settings, settings_markdown

log = logging.getLogger("opeva_spool")

DEFAULT_SERVER_URL = "http://127.0.0.1:8000"
CLIENT_TIMEOUT_SECONDS = 30
MASK = "***"
SIGNAL_POLL_SECONDS = 0.2  # how soon the agent command notices a stop signal
# Exit statuses besides 0.
EXIT_ERROR_ANSWER = 1  # the server answered with an error
EXIT_REFUSED = 2  # bad settings or arguments, or the command refused to act (argparse uses 2 as well)
EXIT_UNREACHABLE = 3  # the server could not be reached


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
    known = set(settings.hosts) | set(spool.worker_hosts())
    if host not in known and not (args.undo and os.path.exists(spool.drain_path(host))):
        raise BadRequest(f"unknown host {host!r}: not in the hosts setting and no agent ever ran for it on "
                         f"{spool.root} (known: {', '.join(sorted(known)) or 'none'})")
    spool.request_drain(host, undo=args.undo)
    print(f"host {host}: drain {'lifted' if args.undo else 'requested'}")
    return 0


def _http(args, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    url = args.server.rstrip("/") + path
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if args.token:
        request.add_header("Authorization", f"Bearer {args.token}")
    try:
        with urllib.request.urlopen(request, timeout=CLIENT_TIMEOUT_SECONDS) as response:
            print(response.read().decode())
            return 0
    except urllib.error.HTTPError as err:
        print(err.read().decode(), file=sys.stderr)
        return EXIT_ERROR_ANSWER
    except urllib.error.URLError as err:
        reason = err.reason
    except (OSError, http.client.HTTPException, ValueError) as err:  # timeouts, resets, a malformed URL
        reason = err
    print(f"opeva-spool: cannot reach the server at {args.server}: {reason}", file=sys.stderr)
    return EXIT_UNREACHABLE


def cmd_submit(args):
    body = {"config_path": args.config_path, "target_host": args.target_host, "priority": args.priority}
    if args.command_line:
        body["command"] = args.command_line
    if args.job_name:
        body["job_name"] = args.job_name
    return _http(args, "POST", "/run-simulation", body)


def cmd_status(args):
    return _http(args, "GET", f"/status/{args.job_id}")


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


def _from_setting(text, name):
    """Help for an option that overrides a setting: its default is the setting's."""
    default = getattr(Settings(), name)
    default = ",".join(default) if isinstance(default, tuple) else default
    return f"{text} (default: the {name} setting, $OPEVA_{name.upper()}, else {default})"


def parser():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="YAML settings file (default: $OPEVA_CONFIG, else none)")
    common.add_argument("--log-level", default="INFO", help="logging level (default: %(default)s)")
    top = argparse.ArgumentParser(
        prog="opeva-spool", description="Filesystem-native job spooler for OPEVA.",
        epilog=f"exit status: 0 done, {EXIT_ERROR_ANSWER} the server answered an error, {EXIT_REFUSED} bad "
               f"arguments or settings or refused, {EXIT_UNREACHABLE} the server could not be reached")
    sub = top.add_subparsers(dest="command", required=True)

    def command(name, func, text):
        command_parser = sub.add_parser(name, parents=[common], help=text, description=text)
        command_parser.set_defaults(func=func)
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
    agent.add_argument("--runtime", choices=("process", "docker"), help=_from_setting("how jobs run", "runtime"))

    drain = command("drain", cmd_drain, "make a host's agent finish its jobs and take no new ones")
    drain.add_argument("--root", help=_from_setting("shared root", "shared_root"))
    drain.add_argument("--host", required=True, help="the host to drain (required; a configured host or one "
                                                     "whose agent has run on this root)")
    drain.add_argument("--undo", action="store_true", help="lift the drain instead (default: off)")

    for name, func, text in (("submit", cmd_submit, "submit a job through the HTTP API"),
                             ("status", cmd_status, "print a job's status from the HTTP API")):
        client = command(name, func, text)
        client.add_argument("--server", default=DEFAULT_SERVER_URL, help="the server's URL (default: %(default)s)")
        client.add_argument("--token", default="", help="the API token, if the server has one (default: none)")
        if name == "submit":
            client.add_argument("config_path", help="the experiment config, a file under configs/ on the share")
            client.add_argument("--target-host", default=EMBEDDED_HOST,
                                help="host to run on, or 'any' (default: %(default)s)")
            client.add_argument("--priority", type=int, default=0,
                                help="-100..100, higher runs first (default: %(default)s)")
            client.add_argument("--job-name", help="the job's name (default: from the config's experiment name)")
            client.add_argument("--command", dest="command_line",
                                help="command to run instead of the image's default (default: the command template)")
        else:
            client.add_argument("job_id", help="the job's id, as submit printed it")

    settings = command("settings", cmd_settings, "print the effective settings (secrets masked)")
    settings.add_argument("--markdown", action="store_true", help="print the settings table for docs (default: off)")
    return top


def main(argv=None):
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except SpoolError as exc:
        print(f"opeva-spool: {exc.detail}", file=sys.stderr)
        return EXIT_REFUSED
    except OSError as exc:  # e.g. a settings file that is missing, a port already taken
        print(f"opeva-spool: {exc}", file=sys.stderr)
        return EXIT_REFUSED


if __name__ == "__main__":
    sys.exit(main())
