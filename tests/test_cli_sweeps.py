"""The client commands for sweeps, the queue and usage, and submit's --after/--after-any/--retry and host
lists, run as real subprocesses against a real server on 127.0.0.1, as tests/test_cli_client.py does."""

import json
import uuid

import pytest
import yaml

from .conftest import PYTHON, assert_one_line_error, demo_config, wait_for
from .test_cli_client import api, cli_serving  # noqa: F401 - fixtures: a real server and its Cli

pytestmark = pytest.mark.slow


def sleeper(cli, submitted_by, seconds=1.1):
    """A command job on the embedded worker, followed to its end; its id."""
    out = cli.ok("submit", "--command", f"{PYTHON} -c 'import time; time.sleep({seconds})'",
                 "--submitted-by", submitted_by, "-q", "--follow")
    return out.splitlines()[0]


def rows_of(table_text):
    """A rich table printed to a pipe, as lists of cells (split on runs of spaces)."""
    return [line.split() for line in table_text.splitlines() if line.strip() and not line.startswith("─")]


# ----- usage ------------------------------------------------------------------------------------------

def test_usage_prints_a_row_per_user_and_per_host_with_a_total_and_takes_a_span_for_since(api):  # noqa: F811
    _, http, cli = api
    sleeper(cli, "alice")
    sleeper(cli, "alice")
    sleeper(cli, "bob")
    by_user = {row[0]: row for row in rows_of(cli.ok("usage"))}
    assert by_user["alice"][1:3] == ["2", "2"] and by_user["bob"][1:3] == ["1", "1"]  # jobs, attempts
    assert by_user["total"][1:3] == ["3", "3"]
    assert "usage by user, all time" in cli.ok("usage")
    by_host = rows_of(cli.ok("usage", "--by", "host"))
    assert next(row for row in by_host if row[0] == "local")[:3] == ["local", "3", "3"]
    answer = json.loads(cli.ok("usage", "--since", "1h", "--json"))
    assert answer["since"] and answer["total"]["jobs"] == 3
    assert answer == {**http.get(f"/usage?since={answer['since']}").json(), "until": answer["until"]}
    assert json.loads(cli.ok("usage", "--since", "2000-01-01", "--json"))["total"]["jobs"] == 3
    refused = cli("usage", "--since", "soon")
    assert refused.returncode == 2 and "7d" in refused.stderr and "Traceback" not in refused.stderr


# ----- submit's new options ---------------------------------------------------------------------------

def test_submit_after_after_any_retry_and_a_host_list_reach_the_job_and_show_prints_them(api):  # noqa: F811
    _, http, cli = api
    first = cli.ok("submit", "--command", "true", "--target-host", "gpu-a", "-q").strip()  # stays queued: no agent
    try:
        answer = json.loads(cli.ok("submit", "--command", "true", "--after", first, "--after-any", first,
                                   "--retry", "--max-retries", "2", "--target", "local,gpu-a", "--json"))
        assert answer["status"] == "waiting"
        dependant = answer["job_id"]
        info = http.get(f"/job-info/{dependant}").json()
        assert info["after"] == [first] and info["after_any"] == [first]
        assert info["retry_on_failure"] is True and info["max_retries"] == 2
        assert info["target_hosts"] == ["local", "gpu-a"]
        shown = cli.ok("show", dependant)
        assert "waiting" in shown and first in shown
        assert "up to 2 (also after a non-zero exit)" in shown and "local, gpu-a" in shown
        assert dependant in cli.ok("jobs", "--status", "waiting")
        unknown = str(uuid.uuid4())
        line = assert_one_line_error(cli("submit", "--command", "true", "--after", f"{first},{unknown}"), 1)
        assert unknown in line
    finally:
        cli("stop", first)


# ----- the queue ----------------------------------------------------------------------------------------

def test_queue_lists_queued_jobs_in_dispatch_order_with_why_each_waits(api):  # noqa: F811
    _, http, cli = api
    ids = [cli.ok("submit", "--command", "true", "--target-host", "gpu-a", "--priority", str(priority),
                  "--submitted-by", "queue-cli", "-q").strip() for priority in (0, 5)]
    try:
        order = [item for item in http.get("/queue").json() if item["job_id"] in ids]
        assert [item["job_id"] for item in order] == [ids[1], ids[0]]  # the higher priority first
        printed = cli.ok("queue")
        assert printed.index(ids[1]) < printed.index(ids[0])
        for item in order:
            assert item["waiting_reason"] in printed
        assert [item["job_id"] for item in json.loads(cli.ok("queue", "--json")) if item["job_id"] in ids] == \
            [ids[1], ids[0]]
    finally:
        for job_id in ids:
            cli("stop", job_id)


# ----- sweeps -------------------------------------------------------------------------------------------

def sweep_file(tmp_path, file_name, **fields):
    """A sweep file beside a local config file it names (sent inline by the CLI)."""
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(demo_config(episodes=1, steps=3)))
    path = tmp_path / file_name
    path.write_text(yaml.safe_dump({"config_path": "exp.yaml", "target_host": "local", **fields}))
    return str(path)


def test_sweep_submit_wait_list_show_sorted_stop_and_rm(api, tmp_path):  # noqa: F811
    _, http, cli = api
    path = sweep_file(tmp_path, "grid.yaml", name="cli-grid", grid={"demo.steps": [2, 3, 4]})
    out = cli.ok("sweep", "submit", path, "--wait")
    sweep_id = out.split()[1]
    assert "3 job(s)" in out and out.rstrip().endswith("3 finished")
    listed = cli.ok("sweeps")
    assert sweep_id in listed and "cli-grid" in listed and "3 finished" in listed
    assert sweep_id in cli.ok("sweep", "ls")
    shown = cli.ok("sweep", "show", sweep_id, "--sort", "kpis.average_reward", "--desc")
    assert "demo.steps" in shown and "kpis.average_reward" in shown
    expected = [job["job_id"] for job in
                http.get(f"/sweeps/{sweep_id}?sort=kpis.average_reward&order=desc").json()["jobs"]]
    assert sorted(expected, key=shown.index) == expected  # printed in the server's order
    assert json.loads(cli.ok("sweep", "show", sweep_id, "--json"))["counts"]["finished"] == 3
    info = http.get(f"/job-info/{expected[0]}").json()
    assert info["sweep"] == sweep_id and "demo.steps" in info["overrides"]

    slow = sweep_file(tmp_path, "slow.yaml", runs=[{"demo.step_seconds": 0.5}] * 4,
                      submitted_by="sweeper")
    slow_id = cli.ok("sweep", "submit", slow, "-q").strip()
    assert http.get(f"/sweeps/{slow_id}").json()["submitted_by"] == "sweeper"  # the file's, not the user's
    cli.ok("sweep", "stop", slow_id)
    wait_for(lambda: sum(http.get(f"/sweeps/{slow_id}").json()["counts"].get(state, 0)
                         for state in ("finished", "failed", "stopped", "canceled")) == 4,
             message="every job of the stopped sweep ended")
    cli.ok("sweep", "rm", slow_id, "--force")
    assert_one_line_error(cli("sweep", "show", slow_id), 1)
    assert http.get(f"/sweeps/{slow_id}").status == 404
    bad = sweep_file(tmp_path, "bad.yaml", grid={"demo.no_such_key": [1, 2]})
    assert "demo.no_such_key" in assert_one_line_error(cli("sweep", "submit", bad), 1)
