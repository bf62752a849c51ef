"""The ``opeva-spool`` command: serve, agent, submit, status, drain, settings."""

import argparse
import json
import logging
import signal
import sys
import threading
import time
import urllib.error
import urllib.request

from .exceptions import SpoolError
from .settings import load_settings, settings_markdown
from .states import JobState

log = logging.getLogger("opeva_spool")


def _settings(args, **extra):
    return load_settings(
        config_file=args.config,
        shared_root=getattr(args, "root", None),
        **{k: v for k, v in extra.items() if v is not None},
    )


def cmd_serve(args):
    from .server import Server

    settings = _settings(args, bind=args.bind, port=args.port,
                         embedded_worker=False if args.no_worker else None)
    server = Server(settings).start()
    if args.demo:
        job = server.submit_demo()
        log.info("demo job %s queued; follow it at http://%s:%s/status/%s", job["job_id"], settings.bind,
                 settings.port, job["job_id"])
        threading.Thread(target=_narrate, args=(server, job["job_id"]), daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: server.close())
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.close()
    return 0


def _narrate(server, job_id):
    """Log the demo job's state and progress as they change, then its result."""
    last = None
    while not server.stopping.is_set():
        status = server.jobs.status(job_id)["status"]
        progress = server.jobs.progress(job_id)
        shown = (status, int(progress.get("progress_pct", 0) // 10))
        if shown != last:
            log.info("demo job: %s, progress %s%%", status, progress.get("progress_pct", 0))
            last = shown
        if JobState(status).terminal:
            log.info("demo job result: %s", json.dumps(server.jobs.result(job_id)))
            return
        time.sleep(0.2)


def cmd_agent(args):
    from .agent import Agent
    from .runtimes import make_runtime
    from .spool import Spool

    settings = _settings(args, host=args.host, runtime=args.runtime)
    agent = Agent(settings, Spool(settings.shared_root), make_runtime(settings)).start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    signal.signal(signal.SIGUSR1, lambda *_: agent.drain())
    log.info("agent %s working for host %s with the %s runtime", agent.agent_id, agent.host, agent.runtime.name)
    done.wait()
    agent.shutdown(timeout=settings.stop_grace + 5)
    return 0


def cmd_drain(args):
    from .spool import Spool

    settings = _settings(args)
    Spool(settings.shared_root).request_drain(args.host, undo=args.undo)
    print(f"host {args.host}: drain {'lifted' if args.undo else 'requested'}")
    return 0


def _http(args, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(args.server.rstrip("/") + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if args.token:
        request.add_header("Authorization", f"Bearer {args.token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            print(response.read().decode())
            return 0
    except urllib.error.HTTPError as err:
        print(err.read().decode(), file=sys.stderr)
        return 1


def cmd_submit(args):
    body = {"config_path": args.config_path, "target_host": args.target_host, "priority": args.priority}
    if args.command_line:
        body["command"] = args.command_line
    if args.job_name:
        body["job_name"] = args.job_name
    return _http(args, "POST", "/run-simulation", body)


def cmd_status(args):
    return _http(args, "GET", f"/status/{args.job_id}")


def cmd_settings(args):
    if args.markdown:
        sys.stdout.write(settings_markdown())
        return 0
    from dataclasses import asdict

    settings = _settings(args)
    shown = asdict(settings)
    shown["api_token"] = "***" if settings.api_token else ""
    print(json.dumps(shown, indent=2, default=list))
    return 0


def parser():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="YAML settings file (also $OPEVA_CONFIG)")
    common.add_argument("--log-level", default="INFO")
    top = argparse.ArgumentParser(prog="opeva-spool", description="Filesystem-native job spooler for OPEVA.")
    sub = top.add_subparsers(dest="command", required=True)
    sub_parser = sub.add_parser

    def add_parser(name, **kw):
        return sub_parser(name, parents=[common], **kw)

    sub.add_parser = add_parser

    serve = sub.add_parser("serve", help="run the HTTP API (and the embedded worker for host 'local')")
    serve.add_argument("--root", help="shared root (default /opt/opeva_shared_data)")
    serve.add_argument("--bind")
    serve.add_argument("--port", type=int)
    serve.add_argument("--demo", action="store_true", help="submit the demo training job at start-up")
    serve.add_argument("--no-worker", action="store_true", help="do not run the embedded 'local' worker")
    serve.set_defaults(func=cmd_serve)

    agent = sub.add_parser("agent", help="run the worker for one host")
    agent.add_argument("--root")
    agent.add_argument("--host", help="the host name this agent works for")
    agent.add_argument("--runtime", choices=("process", "docker"))
    agent.set_defaults(func=cmd_agent)

    drain = sub.add_parser("drain", help="make a host's agent finish its jobs and take no new ones")
    drain.add_argument("--root")
    drain.add_argument("--host", required=True)
    drain.add_argument("--undo", action="store_true", help="lift the drain")
    drain.set_defaults(func=cmd_drain)

    for name, func in (("submit", cmd_submit), ("status", cmd_status)):
        client = sub.add_parser(name, help=f"{name} a job through the HTTP API")
        client.add_argument("--server", default="http://127.0.0.1:8000")
        client.add_argument("--token", default="")
        client.set_defaults(func=func)
        if name == "submit":
            client.add_argument("config_path")
            client.add_argument("--target-host", default="local")
            client.add_argument("--priority", type=int, default=0)
            client.add_argument("--job-name")
            client.add_argument("--command", dest="command_line")
        else:
            client.add_argument("job_id")

    settings = sub.add_parser("settings", help="print the effective settings")
    settings.add_argument("--markdown", action="store_true", help="the settings table for docs")
    settings.set_defaults(func=cmd_settings)
    return top


def main(argv=None):
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except SpoolError as exc:
        print(f"opeva-spool: {exc.detail}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
