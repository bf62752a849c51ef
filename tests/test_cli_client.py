"""The client commands (``opeva-spool submit|jobs|logs|...``) run as real subprocesses against a real server on
127.0.0.1: what they print, their exit statuses, and that no error ever becomes a traceback."""

import http.server
import json
import os
import pty
import select
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import zipfile

import pytest
import yaml

from .clients import free_port
from .conftest import PYTHON, assert_one_line_error, demo_config, wait_for, wait_for_status
from .processes import PROJECT_ROOT

# Each command is a process of its own (~0.3 s): with the real-process tests, not in the core suite.
pytestmark = pytest.mark.slow

CLIENT_ENV_NAMES = ("OPEVA_SERVER", "OPEVA_TOKEN", "OPEVA_CLIENT_CONFIG", "COLUMNS", "FORCE_COLOR", "TTY_COMPATIBLE")


class Cli:
    """``opeva-spool`` as a subprocess, pointed at one server through $OPEVA_SERVER, with a config dir of its own."""

    def __init__(self, url, home):
        self.env = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV_NAMES}
        self.env.update(PYTHONPATH=PROJECT_ROOT, XDG_CONFIG_HOME=str(home), OPEVA_SERVER=url)

    def argv(self, *argv):
        return [sys.executable, "-m", "opeva_spool.cli", *argv]

    def __call__(self, *argv, timeout=60, **env):
        return subprocess.run(self.argv(*argv), env={**self.env, **env}, cwd=PROJECT_ROOT, capture_output=True,
                              text=True, timeout=timeout)

    def popen(self, *argv, **env):
        return subprocess.Popen(self.argv(*argv), env={**self.env, **env}, cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)

    def ok(self, *argv, **env):
        result = self(*argv, **env)
        assert result.returncode == 0, (argv, result.stdout, result.stderr)
        assert "\x1b[" not in result.stdout + result.stderr, "escape codes written to a pipe"
        return result.stdout


@pytest.fixture
def cli_serving(serving, tmp_path):
    """start(**settings) -> (server, HttpClient, Cli) for a Server with its real HTTP stack on 127.0.0.1."""
    def start(**overrides):
        server, port, http = serving(**overrides)
        return server, http, Cli(f"http://127.0.0.1:{port}", tmp_path / "xdg")

    return start


@pytest.fixture
def api(cli_serving):
    return cli_serving()


def config_file(tmp_path, name="exp.yaml", **demo):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(demo_config(**demo)))
    return str(path)


def submit_command(http, code, **body):
    job_id = http.post("/run-simulation", json={"command": [PYTHON, "-c", code], **body}).json()["job_id"]
    return job_id


# ----- submit, follow, jobs -----------------------------------------------------------------------

def test_submit_a_local_file_with_overrides_and_follow_prints_the_log_and_exits_0_once_finished(api, tmp_path):
    _, http, cli = api
    out = cli.ok("submit", config_file(tmp_path), "-s", "demo.episodes=3", "-s", "demo.step_seconds=0.01",
                 "-s", "experiment.run_name=tuned", "--follow")
    assert "[demo] episode 3/3" in out and "[demo] done" in out
    job_id = out.split()[1]
    assert out.rstrip().endswith(f"job {job_id} finished")
    info = http.get(f"/job-info/{job_id}").json()
    # The overrides were read as YAML scalars: numbers stayed numbers in the config the job ran with.
    snapshot = http.get(f"/experiment-configs/{info['config_path'].removeprefix('configs/')}").json()["config"]
    assert snapshot["demo"] == {"episodes": 3, "steps": 5, "step_seconds": 0.01}
    assert snapshot["experiment"]["run_name"] == "tuned"
    assert info["submitted_by"]  # the user name, by default


def test_submit_follow_of_a_failing_job_exits_1(api, tmp_path):
    _, _, cli = api
    result = cli("submit", config_file(tmp_path), "-s", "demo.fail_at_step=3", "--follow", "--json")
    assert result.returncode == 1, result.stderr
    assert json.loads(result.stdout.split("\n}\n")[0] + "}")["status"] == "queued"
    assert "simulated failure" in result.stdout and "failed" in result.stderr


def test_submit_a_config_name_on_the_share_with_an_override_sends_the_changed_config(api, tmp_path):
    _, http, cli = api
    cli.ok("configs", "push", config_file(tmp_path, steps=50), "--name", "base.yaml")
    job_id = cli.ok("submit", "base.yaml", "-s", "demo.steps=2", "-q").strip()
    wait_for_status(http, job_id, "finished")
    assert http.get(f"/progress/{job_id}").json()["step_total"] == 2
    plain = cli.ok("submit", "configs/base.yaml", "--job-name", "plain", "--priority", "5", "--json")
    answer = json.loads(plain)
    assert answer["config_path"] == "configs/base.yaml" and answer["job_name"] == "plain" and answer["priority"] == 5


def test_jobs_table_filters_by_status_submitter_and_text_and_json_parses(api, tmp_path):
    _, http, cli = api
    path = config_file(tmp_path)
    alice = cli.ok("submit", path, "-q", "--submitted-by", "alice", "--job-name", "alice-sweep").strip()
    bob = cli.ok("submit", path, "-q", "--submitted-by", "bob", "--job-name", "bob-run").strip()
    for job_id in (alice, bob):
        wait_for_status(http, job_id, "finished")
    table = cli.ok("jobs")
    assert alice in table and bob in table and "finished" in table and "alice-sweep" in table
    header = next(line for line in table.splitlines() if "status" in line).split()
    assert header == ["id", "name", "status", "host", "submitter", "progress", "age", "waited", "ran"]
    assert [item["job_id"] for item in json.loads(cli.ok("jobs", "--json", "--submitter", "alice"))] == [alice]
    assert [item["job_id"] for item in json.loads(cli.ok("jobs", "--json", "--search", "BOB-R"))] == [bob]
    assert json.loads(cli.ok("jobs", "--json", "--status", "queued")) == []
    assert len(json.loads(cli.ok("jobs", "--json", "--limit", "1"))) == 1
    bad = assert_one_line_error(cli("jobs", "--status", "bogus"), 1)
    assert "unknown status 'bogus'" in bad


def test_show_result_and_status_of_a_finished_job(api, tmp_path):
    _, _, cli = api
    job_id = cli.ok("submit", config_file(tmp_path), "-q", "--follow").splitlines()[0]
    shown = cli.ok("show", job_id)
    assert job_id in shown and "finished" in shown and "100%" in shown
    assert json.loads(cli.ok("show", job_id, "--json"))["status"] == "finished"
    assert json.loads(cli.ok("result", job_id, "--json"))["status"] == "completed"
    result = cli.ok("result", job_id)
    kpi_row = next(line for line in result.splitlines() if line.startswith("average_reward")).split()
    assert float(kpi_row[1]) == json.loads(cli.ok("result", job_id, "--json"))["kpis"]["average_reward"]
    assert '"final_reward"' in result
    assert json.loads(cli.ok("status", job_id))["status"] == "finished"
    assert "no job 'nope'" in assert_one_line_error(cli("show", "nope"), 1)


# ----- logs, progress -----------------------------------------------------------------------------

def test_logs_follow_prints_each_line_as_the_job_writes_it_and_ends_with_the_job(api, tmp_path):
    _, http, cli = api
    gate = tmp_path / "gate"
    job_id = submit_command(http, f"import os, time\nprint('first line', flush=True)\n"
                                  f"while not os.path.exists({str(gate)!r}): time.sleep(0.02)\n"
                                  f"print('second line', flush=True)")
    follower = cli.popen("logs", job_id, "-f")
    try:
        # The first line comes while the job still waits at the gate: nothing is buffered up to the end.
        assert follower.stdout.readline() == b"first line\n"
        assert http.get(f"/status/{job_id}").json()["status"] == "running"
        gate.touch()
        assert follower.stdout.readline() == b"second line\n"
        assert follower.wait(15) == 0
    finally:
        follower.kill()
    assert cli.ok("logs", job_id, "--tail", "1") == "second line\n"
    assert cli.ok("logs", job_id) == "first line\nsecond line\n"
    assert cli.ok("logs", job_id, "--attempt", "1") == "first line\nsecond line\n"
    assert "no attempt 2" in assert_one_line_error(cli("logs", job_id, "--attempt", "2"), 1)


def test_ctrl_c_ends_a_log_follow_with_130_and_no_traceback(api):
    _, http, cli = api
    job_id = submit_command(http, "import time\nprint('started', flush=True)\ntime.sleep(60)")
    follower = cli.popen("logs", job_id, "-f")
    try:
        assert follower.stdout.readline() == b"started\n"
        follower.send_signal(signal.SIGINT)
        assert follower.wait(10) == 130
        assert b"Traceback" not in follower.stderr.read()
    finally:
        follower.kill()


def test_output_cut_short_by_its_reader_ends_quietly(api):
    _, http, cli = api
    job_id = submit_command(http, "for i in range(200000): print('line', i)")
    wait_for_status(http, job_id, "finished")
    reader = cli.popen("logs", job_id)
    try:
        assert reader.stdout.readline() == b"line 0\n"
        reader.stdout.close()  # as `| head -1` does
        assert reader.wait(10) == 141
        assert reader.stderr.read() == b""
    finally:
        reader.kill()


def test_progress_ends_with_0_for_a_finished_job_and_1_for_a_failed_one(api, tmp_path):
    _, _, cli = api
    job_id = cli.ok("submit", config_file(tmp_path, steps=10, step_seconds=0.05), "-q").strip()
    out = cli.ok("progress", job_id)
    assert f"job {job_id}: 100% finished" in out.splitlines()[-1]
    failing = cli.ok("submit", config_file(tmp_path, fail_at_step=4), "-q").strip()
    result = cli("progress", failing)
    assert result.returncode == 1 and "failed" in result.stdout.splitlines()[-1]
    assert json.loads(cli.ok("progress", failing, "--json"))["status"] == "failed"


# ----- stop, delete, resubmit ---------------------------------------------------------------------

def test_stop_delete_and_resubmit(api, tmp_path):
    _, http, cli = api
    running = submit_command(http, "import time\nprint('up', flush=True)\ntime.sleep(60)")
    wait_for_status(http, running, "running")
    refused = assert_one_line_error(cli("delete", running), 1)
    assert "force" in refused
    assert "stop requested" in cli.ok("stop", running)
    wait_for_status(http, running, "stopped")
    assert "deleted" in cli.ok("delete", running)
    assert http.get(f"/status/{running}").status == 404

    busy = submit_command(http, "import time\ntime.sleep(60)")
    wait_for_status(http, busy, "running")
    assert json.loads(cli.ok("delete", busy, "--force", "--json"))["job_id"] == busy

    done = cli.ok("submit", config_file(tmp_path), "-q", "--follow").splitlines()[0]
    again = cli.ok("resubmit", done, "-q").strip()
    assert again != done
    wait_for_status(http, again, "finished")
    assert http.get(f"/job-info/{again}").json()["config_sha256"] == http.get(f"/job-info/{done}").json()[
        "config_sha256"]


# ----- hosts, configs, datasets -------------------------------------------------------------------

def test_hosts_table_and_json(api):
    _, _, cli = api
    table = cli.ok("hosts")
    local = next(line for line in table.splitlines() if line.split()[:1] == ["local"])
    assert "online" in local
    hosts = json.loads(cli.ok("hosts", "--json"))
    assert "local" in hosts["available_hosts"]


def test_hosts_drain_through_the_api(api):
    _, _, cli = api
    def local():
        return next(host for host in json.loads(cli.ok("hosts", "--json"))["hosts"] if host["host"] == "local")

    assert "drain requested" in cli.ok("hosts", "drain", "local")
    wait_for(lambda: local()["draining"], message="local draining")
    assert "yes" in next(line for line in cli.ok("hosts").splitlines() if line.startswith("local"))
    assert json.loads(cli.ok("hosts", "drain", "local", "--undo", "--json"))["draining"] is False
    wait_for(lambda: not local()["draining"], message="the drain of local lifted")
    assert "unknown host 'nohost'" in assert_one_line_error(cli("hosts", "drain", "nohost"), 1)


def test_configs_push_show_rm_round_trip(api, tmp_path):
    _, _, cli = api
    path = config_file(tmp_path, episodes=7)
    assert "saved" in cli.ok("configs", "push", path)
    assert "exp.yaml" in cli.ok("configs", "ls").split()
    assert yaml.safe_load(cli.ok("configs", "show", "exp.yaml")) == demo_config(episodes=7)
    assert json.loads(cli.ok("configs", "show", "exp.yaml", "--json"))["config"] == demo_config(episodes=7)
    assert "exists" in assert_one_line_error(cli("configs", "push", path, "--no-overwrite"), 1)
    assert "replaced" in cli.ok("configs", "push", path)
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: 1\nb: [1, 2\n")
    line = assert_one_line_error(cli("configs", "push", str(broken)), 1)
    assert "line" in line
    assert "deleted" in cli.ok("configs", "rm", "exp.yaml")
    assert "exp.yaml" not in cli.ok("configs", "ls").split()
    assert "no config 'exp.yaml'" in assert_one_line_error(cli("configs", "show", "exp.yaml"), 1)
    assert "cannot read" in assert_one_line_error(cli("configs", "push", str(tmp_path / "missing.yaml")), 2)


def test_datasets_ls_and_a_missing_dataset(api, tmp_path):
    _, _, cli = api
    assert json.loads(cli.ok("datasets", "ls", "--json")) == []
    assert "name" in cli.ok("datasets", "ls")
    assert_one_line_error(cli("datasets", "download", "nothing", "-o", str(tmp_path / "x.zip")), 1)
    assert not (tmp_path / "x.zip").exists() and not (tmp_path / "x.zip.part").exists()


def test_datasets_build_wait_download_and_rm(cli_serving, tmp_path, mongo_uri, lab_site):
    _, _, cli = cli_serving(mongo_uri=mongo_uri)
    out = cli.ok("datasets", "build", "lab-day", "--site", lab_site, "--from", "2024-03-30T00:00:00",
                 "--until", "2024-03-31T00:00:00", "--period", "60", "-s", "central_agent=true", "--wait")
    assert "dataset lab-day: 100% ready" in out.splitlines()
    assert "lab-day" in cli.ok("datasets", "ls")
    target = tmp_path / "lab.zip"
    cli.ok("datasets", "download", "lab-day", "-o", str(target))
    here = tmp_path / "here"
    here.mkdir()
    subprocess.run(cli.argv("datasets", "download", "lab-day"), env=cli.env, cwd=here, check=True, timeout=60)
    assert os.listdir(here) == ["lab-day.zip"]
    with zipfile.ZipFile(target) as archive:
        schema = json.loads(archive.read("lab-day/schema.json"))
    assert schema["central_agent"] is True
    assert "lab-day" in cli.ok("datasets", "rm", "lab-day")
    assert json.loads(cli.ok("datasets", "ls", "--json")) == []
    assert_one_line_error(cli("datasets", "build", "x", "--site", "nosuch", "--from", "2024-03-30",
                       "--until", "2024-03-31"), 1)


# ----- where the server is, tokens, errors --------------------------------------------------------

def test_token_from_the_environment_and_from_the_client_config_file(cli_serving, tmp_path):
    _, _, cli = cli_serving(api_token="s3cret")
    path = config_file(tmp_path)
    refused = assert_one_line_error(cli("submit", path), 1)
    assert "Authorization: Bearer" in refused
    assert cli.ok("jobs", "--json") == "[]\n"  # reads need no token
    assert cli.ok("submit", path, "-q", OPEVA_TOKEN="s3cret").strip()
    # Saved in the client config file, which only its owner can read.
    shown = cli.ok("client-config", "--token", "s3cret")
    config_path = tmp_path / "xdg" / "opeva-spool" / "client.yaml"
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o600
    assert "s3cret" not in shown and str(config_path) in shown
    assert yaml.safe_load(config_path.read_text()) == {"token": "s3cret"}
    assert cli.ok("submit", path, "-q").strip()
    # A flag beats the environment, which beats the file.
    assert "Authorization" in assert_one_line_error(cli("submit", path, "--token", "wrong", OPEVA_TOKEN="s3cret"), 1)
    assert "Authorization" in assert_one_line_error(cli("submit", path, OPEVA_TOKEN="wrong"), 1)


def test_server_url_from_the_client_config_file_and_a_bad_file(api, tmp_path):
    _, _, cli = api
    url = cli.env.pop("OPEVA_SERVER")
    other = tmp_path / "other.yaml"
    cli.ok("client-config", "--server", url, "--client-config", str(other))
    assert cli.ok("jobs", "--json", "--client-config", str(other)) == "[]\n"
    assert "cannot reach" in assert_one_line_error(cli("jobs"), 3)  # the default file does not exist: 127.0.0.1:8000
    other.write_text("server: [unclosed\n")
    assert "client config" in assert_one_line_error(cli("jobs", "--client-config", str(other)), 2)
    other.write_text("server: ftp://x\n")
    assert "http://host:port" in assert_one_line_error(cli("jobs", "--client-config", str(other)), 2)


@pytest.mark.parametrize("argv", [["jobs"], ["logs", "x", "-f"], ["hosts", "--json"], ["configs", "ls"],
                                  ["datasets", "ls"], ["progress", "x"]])
def test_an_unreachable_server_is_exit_3_in_one_line(argv, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cli = Cli(url, tmp_path)
    assert f"cannot reach the server at {url}" in assert_one_line_error(cli(*argv), 3)


@pytest.mark.parametrize("argv", [["jobs", "--limit", "many"], ["logs"], ["submit", "x.yaml", "--gpus", "some"],
                                  ["configs"], ["frobnicate"]])
def test_usage_errors_exit_2(argv, tmp_path):
    result = Cli("http://127.0.0.1:1", tmp_path)(*argv)
    assert result.returncode == 2 and "usage:" in result.stderr and "Traceback" not in result.stderr


def test_a_bad_override_is_refused_before_asking_the_server(tmp_path):
    cli = Cli("http://127.0.0.1:1", tmp_path)
    path = config_file(tmp_path)
    assert "key.path=value" in assert_one_line_error(cli("submit", path, "-s", "demo.steps"), 2)
    assert "not a mapping" in assert_one_line_error(cli("submit", path, "-s", "demo.steps.x=1"), 2)


@pytest.fixture
def not_the_api():
    """An HTTP server answering every request with an HTML page (a proxy's error page, say)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            status = 502 if "/status/" in self.path else 200
            body = b"<html><body><h1>Bad Gateway</h1>\n<p>nginx</p></body></html>"
            self.send_response(status)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()


def test_an_answer_that_is_not_the_api_is_one_line(not_the_api, tmp_path):
    cli = Cli(not_the_api, tmp_path)
    line = assert_one_line_error(cli("status", "x"), 1)
    assert "502" in line and "Bad Gateway" in line
    assert "not JSON (text/html)" in assert_one_line_error(cli("jobs"), 1)


# ----- the tour for the README --------------------------------------------------------------------

def test_a_short_cli_tour_is_saved_for_the_readme(api, tmp_path):
    _, http, cli = api
    path = config_file(tmp_path, "sweep.yaml", episodes=3, steps=4)
    shown = []

    def run(*argv):
        out = cli.ok(*argv)
        shown.append(f"$ opeva-spool {' '.join(argv)}\n{out}")
        return out

    cli.ok("configs", "push", path)
    run("configs", "ls")
    first = run("submit", "sweep.yaml", "-s", "demo.step_seconds=0.01", "--job-name", "sweep-lr-0.01",
                "--follow").split()[1]
    second = cli.ok("submit", "sweep.yaml", "-s", "demo.step_seconds=0.01", "-s", "demo.fail_at_step=6",
                    "--job-name", "sweep-lr-0.1", "-q").strip()
    wait_for_status(http, second, "failed")
    run("jobs")
    run("show", first)
    run("logs", second, "--tail", "2")
    run("result", first)
    run("hosts")
    # rich pads table cells to the column's width: the README gets the lines without the trailing blanks.
    tour = "\n".join(line.rstrip() for line in "\n".join(shown).splitlines()) + "\n"
    log_dir = os.environ.get("OPEVA_CI_LOG_DIR") or tempfile.gettempdir()
    os.makedirs(log_dir, exist_ok=True)
    with open(os.path.join(log_dir, "cli-tour.txt"), "w", encoding="utf-8") as handle:
        handle.write(tour)
    assert first in tour and second in tour


def test_jobs_watch_refreshes_until_ctrl_c(api, tmp_path):
    _, _, cli = api
    job_id = cli.ok("submit", config_file(tmp_path), "-q").strip()
    watcher = cli.popen("jobs", "--watch", "--interval", "0.2")
    try:
        # Three refreshes read as they come (a loaded machine may take a second to start the CLI at all).
        shown, deadline = b"", time.monotonic() + 30
        while shown.count(job_id.encode()) < 3 and time.monotonic() < deadline:
            if select.select([watcher.stdout], [], [], 0.5)[0]:
                shown += os.read(watcher.stdout.fileno(), 65536)
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(10) == 130
        out = (shown + watcher.stdout.read()).decode()
        assert "Traceback" not in watcher.stderr.read().decode()
        assert out.count(job_id) >= 3 and "\x1b[" not in out
    finally:
        watcher.kill()


def test_in_a_terminal_the_table_is_coloured(api, tmp_path):
    _, http, cli = api
    job_id = cli.ok("submit", config_file(tmp_path), "-q").strip()
    wait_for_status(http, job_id, "finished")
    main, child = pty.openpty()
    try:
        proc = subprocess.Popen(cli.argv("jobs"), env={**cli.env, "COLUMNS": "200", "TERM": "xterm-256color"},
                                cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL, stdout=child, stderr=subprocess.PIPE)
        os.close(child)
        child = None
        out = b""
        while True:
            try:
                data = os.read(main, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            out += data
        assert proc.wait(30) == 0
    finally:
        os.close(main)
        if child is not None:
            os.close(child)
    assert job_id.encode() in out and b"\x1b[32mfinished" in out  # green


def test_show_config_prints_the_snapshot_the_job_runs_with(api, tmp_path):
    _, _, cli = api
    job_id = cli.ok("submit", config_file(tmp_path), "-s", "demo.steps=3", "-q", "--follow").splitlines()[0]
    assert yaml.safe_load(cli.ok("show", job_id, "--config"))["demo"]["steps"] == 3


def test_a_follow_the_server_ends_before_the_job_ended_is_an_error(cli_serving):
    server, http, cli = cli_serving()
    job_id = submit_command(http, "import time\nprint('up', flush=True)\ntime.sleep(60)")
    follower = cli.popen("logs", job_id, "-f")
    try:
        assert follower.stdout.readline() == b"up\n"
        server.shutdown()  # ends every stream, then stops answering
        assert follower.wait(30) == 3
        error = follower.stderr.read().decode()
        assert "Traceback" not in error and len(error.strip().splitlines()) == 1
    finally:
        follower.kill()
