"""Sweeps: expansion, overrides, all-or-nothing publishing, crash recovery, stop, delete, sorting, the inbox."""

import json
import os
import signal
import threading
import time

import pytest
import yaml

from opeva_spool import fsio, sweeps
from opeva_spool.configs import WriteMode
from opeva_spool.exceptions import BadRequest
from opeva_spool.jobs import JobConfig
from opeva_spool.server import Server
from opeva_spool.spool import QUEUED, Entry

from .clients import WsgiClient
from .conftest import demo_config, make_settings, rejected, wait_for, wait_for_status
from .processes import start_server, stop

TERMINAL = {"finished", "failed", "stopped", "canceled"}


def sweep_body(**fields):
    body = {"config": demo_config(), "target_host": "gpu-a", "grid": {"demo.episodes": [1, 2], "demo.steps": [3, 4, 5]}}
    body.update(fields)
    return body


def entries_of(directory, prefix):
    return sorted(entry.job_id for entry in map(Entry.parse, fsio.listdir(directory))
                  if entry and entry.job_id.startswith(prefix))


def folders_of(spool, prefix):
    return sorted(name for name in fsio.listdir(spool.jobs_dir) if name.startswith(prefix))


# ----- expansion and overrides (pure) ---------------------------------------------------------

def test_grid_expands_to_every_combination_with_the_last_key_varying_fastest():
    assert sweeps.expand({"a.lr": [1, 2], "b.seed": [7, 8, 9]}) == [
        {"a.lr": 1, "b.seed": 7}, {"a.lr": 1, "b.seed": 8}, {"a.lr": 1, "b.seed": 9},
        {"a.lr": 2, "b.seed": 7}, {"a.lr": 2, "b.seed": 8}, {"a.lr": 2, "b.seed": 9}]
    runs = [{"a.lr": 1}, {}, {"a.lr": 3, "b.seed": 1}]
    assert sweeps.expand(runs=runs) == runs


@pytest.mark.parametrize(("grid", "runs", "words"), [
    (None, None, "either 'grid'"),
    ({"a": [1]}, [{"a": 1}], "either 'grid'"),
    ({}, None, "'grid' must be"),
    ({"a": []}, None, "non-empty list"),
    ({"a": 3}, None, "non-empty list"),
    ({"a..b": [1]}, None, "not a dotted key"),
    ({"a": list(range(101)), "b": list(range(100))}, None, "at most 10000 jobs; this one would have 10100"),
    (None, [], "'runs' must be"),
    (None, [{"a": 1}, 3], "runs[1] must be"),
    (None, [{"": 1}], "runs[0]: '' is not a dotted key"),
])
def test_malformed_grids_and_runs_are_refused_with_a_reason(grid, runs, words):
    with pytest.raises(BadRequest) as refused:
        sweeps.expand(grid, runs)
    assert words in refused.value.detail


def test_overrides_set_nested_keys_and_list_items_and_leave_the_base_unchanged():
    base = {"algo": {"hp": {"lr": 0.1, "layers": [{"units": 8}, {"units": 16}]}, "seed": 1}, "other": {"x": 1}}
    before = json.loads(json.dumps(base))
    result = sweeps.apply_overrides(base, {"algo.hp.lr": 0.01, "algo.hp.layers.1.units": 32, "algo.seed": {"a": 1}})
    assert result == {"algo": {"hp": {"lr": 0.01, "layers": [{"units": 8}, {"units": 32}]}, "seed": {"a": 1}},
                      "other": {"x": 1}}
    assert base == before
    assert result["other"] is base["other"]  # what no override touches is shared, not copied


@pytest.mark.parametrize(("key", "words"), [
    ("algo.hp.momentum", "'algo.hp.momentum' does not exist in the base config (algo.hp has no 'momentum')"),
    ("nope.lr", "'nope.lr' does not exist in the base config (the config has no 'nope')"),
    ("algo.hp.lr.x", "algo.hp.lr is a float, not a mapping or list"),
    ("algo.layers.2", "algo.layers is a list of 2; '2' is not an index of it"),
])
def test_an_override_that_cannot_be_applied_is_refused_naming_its_key(key, words):
    base = {"algo": {"hp": {"lr": 0.1}, "layers": [1, 2]}}
    with pytest.raises(BadRequest) as refused:
        sweeps.apply_overrides(base, {key: 1})
    assert words in refused.value.detail and refused.value.extra["key"] == key


def test_new_keys_are_added_only_when_allowed():
    base = {"algo": {"hp": {"lr": 0.1}}}
    assert sweeps.apply_overrides(base, {"algo.hp.momentum": 0.9, "extra.deep.key": 1}, allow_new_keys=True) == {
        "algo": {"hp": {"lr": 0.1, "momentum": 0.9}}, "extra": {"deep": {"key": 1}}}
    with pytest.raises(BadRequest):  # a value is not replaced by a mapping, new keys or not
        sweeps.apply_overrides(base, {"algo.hp.lr.x": 1}, allow_new_keys=True)


def test_snapshots_reuse_untouched_sections_and_read_back_as_the_overridden_config():
    values = {"experiment": {"name": "e", "tags": ["a", "b"]}, "algo": {"lr": 0.1, "layers": [64, 64]},
              "text": "a long string " * 20, "empty": {}, 3: "an int key"}
    snapshots = sweeps.Snapshots(JobConfig("base.yaml", values, "# the base as given\n" + sweeps.config_text(values)))
    for overrides in ({"algo.lr": 1e-05}, {"experiment.tags.1": "c", "algo.layers": [1]}, {"empty": {"x": None}}):
        config = sweeps.apply_overrides(values, overrides)
        text = snapshots.text(config, overrides)
        assert text == sweeps.config_text(config)
        assert yaml.safe_load(text) == config
    assert snapshots.text(values, {}).startswith("# the base as given")


def test_results_sort_by_number_then_text_then_missing():
    rows = [{"value": value} for value in (None, 2, "b", 10, 1.5, "a", True)]
    assert [row["value"] for row in sweeps.sort_jobs(rows, "asc")] == [1.5, 2, 10, True, "a", "b", None]
    assert [row["value"] for row in sweeps.sort_jobs(rows, "desc")] == [10, 2, 1.5, "b", "a", True, None]
    with_nan = sweeps.sort_jobs([{"value": float("nan")}, {"value": 1}], "asc")
    assert with_nan[0]["value"] == 1  # NaN is no number to sort by
    assert sweeps.lookup({"kpis": {"cost": [1, {"x": 5}]}}, "kpis.cost.1.x") == 5
    assert sweeps.lookup({"kpis": 1}, "kpis.cost") is None


# ----- publishing through the API -------------------------------------------------------------

def test_sweep_publishes_one_job_per_override_set_with_its_own_config_snapshot(client, server):
    answer = client.post("/sweeps", json=sweep_body(name="lr scan", submitted_by="alice", priority=5))
    assert answer.status == 200, answer.text
    sweep = answer.json()
    sweep_id = sweep["sweep_id"]
    assert sweep_id.startswith("lr-scan-") and sweep["status"] == "queued" and sweep["job_count"] == 6
    assert sweep["job_ids"] == [f"{sweep_id}-{index:04d}" for index in range(6)]
    assert entries_of(server.spool.queued_dir, sweep_id) == sweep["job_ids"]

    fourth = sweep["job_ids"][4]  # episodes 2 (second value), steps 4 (second value)
    snapshot = yaml.safe_load(client.get(f"/job-config/{fourth}").body)
    assert snapshot["demo"] == {"episodes": 2, "steps": 4, "step_seconds": 0.01}
    assert snapshot["experiment"] == demo_config()["experiment"]
    info = client.get(f"/job-info/{fourth}").json()
    assert (info["sweep"], info["sweep_index"], info["overrides"]) == (sweep_id, 4, {"demo.episodes": 2,
                                                                                      "demo.steps": 4})
    assert info["submitted_by"] == "alice" and info["priority"] == 5 and info["status"] == "queued"

    shown = client.get(f"/sweeps/{sweep_id}").json()
    assert shown["counts"] == {"queued": 6} and shown["status"] == "queued" and shown["name"] == "lr scan"
    assert [job["overrides"] for job in shown["jobs"][:2]] == [{"demo.episodes": 1, "demo.steps": 3},
                                                               {"demo.episodes": 1, "demo.steps": 4}]
    listed = client.get("/sweeps").json()
    assert [(item["sweep_id"], item["job_count"], item["counts"]) for item in listed] == [(sweep_id, 6, {"queued": 6})]
    # The fair-share ranks of one submitter's sweep follow each other: its jobs are dispatched in sweep order.
    ranks = [Entry.parse(name).rank for name in sorted(os.listdir(server.spool.queued_dir))]
    assert ranks == sorted(ranks) and len(set(ranks)) == 6


def test_a_sweep_of_runs_over_a_stored_config_keeps_the_base_text_for_a_run_without_overrides(client, server):
    text = "# tuned by hand\n" + yaml.safe_dump(demo_config())
    server.jobs.configs.write("base.yaml", text, WriteMode.CREATE)
    sweep = client.post("/sweeps", json={"config_path": "configs/base.yaml", "target_host": "gpu-a",
                                         "runs": [{"demo.steps": 7, "experiment.run_name": "r7"}, {}]}).json()
    assert sweep["config_path"] == "configs/base.yaml" and sweep["job_count"] == 2
    first, second = (client.get(f"/job-config/{job_id}").body.decode() for job_id in sweep["job_ids"])
    assert yaml.safe_load(first)["demo"]["steps"] == 7 and yaml.safe_load(first)["experiment"]["run_name"] == "r7"
    assert second == text  # no overrides: the stored config as it is, comments and all
    info = client.get(f"/job-info/{sweep['job_ids'][0]}").json()
    assert info["run_name"] == "r7" and info["config_path"] == "configs/base.yaml"


def test_a_missing_override_key_is_a_400_naming_it_and_nothing_is_published(client, server):
    answer = client.post("/sweeps", json=sweep_body(grid={"demo.episodes": [1], "demo.learning_rate": [0.1, 0.2]},
                                                    sweep_id="bad-key"))
    assert answer.status == 400
    assert answer.json()["key"] == "demo.learning_rate" and "'demo.learning_rate' does not exist" in answer.json()[
        "detail"]
    assert client.get("/sweeps").json() == []
    assert folders_of(server.spool, "bad-key") == [] and fsio.listdir(server.spool.staging_dir) == []
    allowed = client.post("/sweeps", json=sweep_body(grid={"demo.learning_rate": [0.1, 0.2]}, allow_new_keys=True))
    assert allowed.status == 200 and allowed.json()["job_count"] == 2


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"grid": {"demo.steps": [1]}, "colour": "red"}, 400, "unknown fields ['colour']"),
    ({"grid": {"demo.steps": [1]}, "config": None, "command": "true"}, 400, "needs a base config"),
    ({"grid": {"demo.steps": [1]}, "sweep_id": "../up"}, 400, "invalid sweep_id"),
    ({"grid": {"demo.steps": [1]}, "sweep_id": "x" * 124}, 400, "invalid sweep_id"),
    ({"grid": {"demo.steps": [1]}, "allow_new_keys": "yes"}, 400, "true or false"),
    ({"grid": {"demo.steps": [1]}, "target_host": "nowhere"}, 400, "unknown target_host"),
    ({"grid": {"demo.steps": [1]}, "after": ["no-such-job"]}, 400, "unknown job ids"),
    ({"grid": {"demo.steps": [1]}, "priority": 1000}, 400, "'priority' must be"),
])
def test_bad_sweep_requests_are_refused_with_a_json_error(client, body, status, words):
    answer = client.post("/sweeps", json=sweep_body(**body))
    assert answer.status == status and words in answer.json()["detail"], answer.text


def test_a_taken_sweep_id_is_a_409_and_unknown_sweeps_are_404(client):
    assert client.post("/sweeps", json=sweep_body(sweep_id="mine")).status == 200
    again = client.post("/sweeps", json=sweep_body(sweep_id="mine"))
    assert again.status == 409 and "already exists" in again.json()["detail"]
    for method, path in (("GET", "/sweeps/nope"), ("POST", "/sweeps/nope/stop"), ("DELETE", "/sweeps/nope")):
        assert client.request(method, path).status == 404
    assert client.get("/sweeps/mine?order=sideways").status == 400
    assert client.get("/sweeps/mine?sort=a..b").status == 400


def test_a_sweep_after_a_job_waits_for_it(client, server):
    first = client.post("/run-simulation", json={"command": "true", "target_host": "gpu-b"}).json()["job_id"]
    answer = client.post("/sweeps", json=sweep_body(after=[first], grid={"demo.steps": [1, 2, 3]}))
    assert answer.status == 200 and answer.json()["status"] == "waiting"
    sweep = answer.json()
    assert entries_of(server.spool.waiting_dir, sweep["sweep_id"]) == sweep["job_ids"]
    assert client.get(f"/sweeps/{sweep['sweep_id']}").json()["counts"] == {"waiting": 3}
    assert client.get(f"/status/{sweep['job_ids'][0]}").json()["status"] == "waiting"


@pytest.mark.parametrize("pretraining", ["finished", "failed"])
def test_a_whole_sweep_runs_after_its_pretraining_job_or_is_canceled_when_that_fails(client, pretraining):
    crash = {"fail_at_step": 1} if pretraining == "failed" else {}
    first = client.post("/run-simulation", json={"config": demo_config(steps=2, step_seconds=0.001, **crash),
                                                 "target_host": "local"}).json()["job_id"]
    sweep = client.post("/sweeps", json={"config": demo_config(steps=2, step_seconds=0.001), "target_host": "local",
                                         "after": [first], "grid": {"demo.steps": [1, 2, 3]}}).json()
    wait_for_status(client, first, pretraining, timeout=30)
    ending = "finished" if pretraining == "finished" else "canceled"
    for job_id in sweep["job_ids"]:
        wait_for_status(client, job_id, ending, timeout=30)
    if ending == "canceled":
        assert client.get(f"/job-info/{sweep['job_ids'][0]}").json()["reason"] == "dependency_failed"
    assert client.get(f"/sweeps/{sweep['sweep_id']}").json()["counts"] == {ending: 3}


# ----- running, sorting, stopping, deleting ---------------------------------------------------

@pytest.mark.parametrize("settings", [{"capacity": 1}], indirect=True)
def test_stopping_a_sweep_in_the_middle_cancels_the_jobs_that_have_not_run(client):
    config = demo_config(episodes=1, steps=8, step_seconds=0.05)
    sweep = client.post("/sweeps", json={"config": config, "target_host": "local",
                                         "grid": {"demo.steps": [4, 5, 6, 7, 8]}}).json()
    sweep_id, first = sweep["sweep_id"], sweep["job_ids"][0]
    wait_for_status(client, first, "finished", timeout=30)
    stopped = client.post(f"/sweeps/{sweep_id}/stop")
    assert stopped.status == 200, stopped.text
    outcome = stopped.json()
    assert outcome["already_ended"] >= 1 and outcome["canceled"] >= 1
    assert outcome["already_ended"] + outcome["canceled"] + outcome["stop_requested"] == 5

    def ended():
        shown = client.get(f"/sweeps/{sweep_id}").json()
        return shown if set(shown["counts"]) <= TERMINAL else None

    shown = wait_for(ended, timeout=30, message="every job of the stopped sweep to end")
    assert shown["counts"].get("finished", 0) >= 1 and shown["counts"].get("canceled", 0) >= 1
    assert shown["status"] == "ended" and shown["stop_requested_at"]
    assert client.get(f"/status/{sweep['job_ids'][-1]}").json()["status"] == "canceled"


def test_a_sweep_lists_its_jobs_sorted_by_a_result_value(client):
    config = demo_config(episodes=1, steps=2, step_seconds=0.001)
    sweep = client.post("/sweeps", json={"config": config, "target_host": "local",
                                         "grid": {"demo.episodes": [1, 3, 2]}}).json()
    for job_id in sweep["job_ids"]:
        wait_for_status(client, job_id, "finished", timeout=30)
    path = f"/sweeps/{sweep['sweep_id']}"
    descending = client.get(f"{path}?sort=episodes&order=desc").json()
    assert [(job["sweep_index"], job["value"]) for job in descending["jobs"]] == [(1, 3), (2, 2), (0, 1)]
    ascending = client.get(f"{path}?sort=episodes").json()
    assert [job["value"] for job in ascending["jobs"]] == [1, 2, 3]
    assert descending["status"] == "finished" and descending["counts"] == {"finished": 3}
    kpi = client.get(f"{path}?sort=kpis.average_reward").json()
    assert all(isinstance(job["value"], float) for job in kpi["jobs"])
    assert client.get(path).json()["jobs"][0]["value"] is None  # no key asked for


@pytest.mark.parametrize("settings", [{"capacity": 1}], indirect=True)
def test_deleting_a_sweep_refuses_running_jobs_unless_forced_then_removes_all_of_it(client, server):
    config = demo_config(episodes=1, steps=400, step_seconds=0.05)
    sweep = client.post("/sweeps", json={"config": config, "target_host": "local",
                                         "grid": {"demo.steps": [400, 401]}}).json()
    sweep_id = sweep["sweep_id"]
    wait_for_status(client, sweep["job_ids"][0], "running", timeout=30)
    refused = client.delete(f"/sweeps/{sweep_id}")
    assert refused.status == 409 and refused.json()["job_ids"] == [sweep["job_ids"][0]]
    deleted = client.delete(f"/sweeps/{sweep_id}?force=1")
    assert deleted.status == 200 and deleted.json()["deleted_jobs"] == 2
    assert client.get(f"/sweeps/{sweep_id}").status == 404 and client.get("/sweeps").json() == []
    for job_id in sweep["job_ids"]:
        assert client.get(f"/status/{job_id}").status == 404
    assert folders_of(server.spool, sweep_id) == []


# ----- all or nothing: crashes at each step ---------------------------------------------------

def test_a_sweep_staged_but_never_committed_is_never_visible_and_is_removed(tmp_path):
    settings = make_settings(tmp_path)
    server = Server(settings)  # not started: nothing rolls anything forward behind the test's back
    plan = server.sweeps.plan(sweep_body(sweep_id="crashed"))
    server.sweeps.stage(plan)  # ... and the server dies before the commit rename
    assert os.path.isdir(plan.stage)
    client = WsgiClient(server.app)
    assert client.get("/sweeps").json() == [] and client.get("/sweeps/crashed").status == 404
    assert client.get("/status/crashed-0000").status == 404
    assert folders_of(server.spool, "crashed") == [] and entries_of(server.spool.queued_dir, "crashed") == []
    server.sweeps.maintain()
    assert os.path.isdir(plan.stage)  # young: it might be a request in flight
    old = time.time() - 2 * 60
    os.utime(plan.stage, (old, old))
    server.sweeps.maintain()
    assert not os.path.exists(plan.stage)
    server.close()


def test_a_failure_while_staging_leaves_nothing_behind(tmp_path, monkeypatch):
    server = Server(make_settings(tmp_path))

    def disk_fails(path):
        raise OSError(5, "Input/output error", path)

    monkeypatch.setattr(fsio, "sync_filesystem", disk_fails)
    with pytest.raises(OSError):
        server.sweeps.submit(sweep_body(sweep_id="failing"))
    assert fsio.listdir(server.spool.staging_dir) == [] and fsio.listdir(server.sweeps.root) == []
    assert folders_of(server.spool, "failing") == []
    server.close()


def test_a_committed_sweep_interrupted_while_moving_its_jobs_out_is_completed_at_start_up(tmp_path):
    settings = make_settings(tmp_path)
    server = Server(settings)
    plan = server.sweeps.plan(sweep_body(sweep_id="half"))
    server.sweeps.stage(plan)
    server.sweeps.commit(plan)
    # The server died while moving the jobs out: job 0 was moved whole, job 1's folder only.
    directory = os.path.join(server.sweeps.root, "half")
    staged = sorted(fsio.listdir(os.path.join(directory, QUEUED)))
    for name, whole in zip(staged[:2], (True, False), strict=True):
        job_id = Entry.parse(name).job_id
        os.rename(os.path.join(directory, "jobs", job_id), server.spool.folder(job_id).path)
        if whole:
            os.rename(os.path.join(directory, QUEUED, name), os.path.join(server.spool.queued_dir, name))
    old = time.time() - 10 * 60  # old enough for recover_orphans to take a folder it thinks has no entry
    os.utime(server.spool.folder("half-0001").path, (old, old))
    server.close()

    restarted = Server(settings)
    client = WsgiClient(restarted.app)
    shown = client.get("/sweeps/half").json()
    assert shown["counts"] == {"queued": 6}
    assert entries_of(restarted.spool.queued_dir, "half") == [f"half-{index:04d}" for index in range(6)]
    assert yaml.safe_load(client.get("/job-config/half-0001").body)["demo"]["steps"] == 4
    assert not sweeps.has_leftovers(directory)
    restarted.close()


@pytest.mark.slow
def test_kill_9_of_the_server_in_the_middle_of_a_sweep_leaves_all_of_it_or_none(tmp_path):
    """A real ``opeva-spool serve`` is killed at several moments of a 3,000-job POST /sweeps; after a restart the
    sweep has all its jobs (queued, each with its folder) or none, whether or not the client saw an answer."""
    root = tmp_path / "share"
    size = 3000
    body = sweep_body(grid={"demo.episodes": list(range(30)), "demo.steps": list(range(100))})
    server, client = start_server(root, tmp_path, embedded_worker="false", hosts="local,gpu-a")
    started = time.monotonic()
    assert client.post("/sweeps", json=dict(body, sweep_id="timing")).status == 200
    duration = time.monotonic() - started
    outcomes = []
    try:
        for number, fraction in enumerate((0.15, 0.4, 0.65, 0.9, 1.2)):
            sweep_id = f"killed-{number}"
            answers = []
            poster = threading.Thread(target=_post_quietly, args=(client, dict(body, sweep_id=sweep_id), answers),
                                      daemon=True)
            poster.start()
            time.sleep(duration * fraction)
            server.send_signal(signal.SIGKILL)
            server.wait()
            poster.join(30)
            server, client = start_server(root, tmp_path, embedded_worker="false", hosts="local,gpu-a")
            shown = client.get(f"/sweeps/{sweep_id}")
            spool_dir = root / "spool"
            queued = entries_of(str(spool_dir / QUEUED), f"{sweep_id}-")
            folders = sorted(name for name in os.listdir(root / "jobs") if name.startswith(f"{sweep_id}-"))
            if shown.status == 404:
                assert queued == [] and folders == [], (fraction, len(queued), len(folders))
                assert answers in ([], [None]), "a sweep that was answered 200 must survive"
            else:
                assert shown.json()["counts"] == {"queued": size}, (fraction, shown.json()["counts"])
                assert len(queued) == len(folders) == size
            outcomes.append(shown.status)
    finally:
        stop(server)
    assert set(outcomes) <= {200, 404}  # (a run of it killed 2 before the commit, 1 while moving jobs out)


def _post_quietly(client, body, answers):
    try:
        answers.append(client.post("/sweeps", json=body, timeout=60).status)
    except OSError:  # the server died under the request: it was never acknowledged
        answers.append(None)


# ----- the inbox ------------------------------------------------------------------------------

def drop_sweep(server, folder, body, config=None):
    path = os.path.join(server.spool.inbox_dir, folder)
    os.makedirs(path)
    with open(os.path.join(path, "sweep.json"), "w", encoding="utf-8") as handle:
        json.dump(body, handle)
    if config is not None:
        with open(os.path.join(path, "config.yaml"), "w", encoding="utf-8") as handle:
            yaml.safe_dump(config, handle)
    return path


def test_a_folder_with_sweep_json_dropped_in_the_inbox_becomes_a_sweep_once(tmp_path):
    server = Server(make_settings(tmp_path))
    client = WsgiClient(server.app)
    body = {"grid": {"demo.steps": [1, 2]}, "target_host": "gpu-a", "submitted_by": "bob"}
    drop_sweep(server, "lr-scan", body, demo_config())
    assert server.inbox.scan() == {"lr-scan": "lr-scan"}
    shown = client.get("/sweeps/lr-scan").json()
    assert shown["counts"] == {"queued": 2} and shown["origin"] == "inbox" and shown["submitted_by"] == "bob"
    assert shown["config_path"] == "configs/lr-scan.yaml"
    assert yaml.safe_load(client.get("/job-config/lr-scan-0001").body)["demo"]["steps"] == 2
    assert fsio.listdir(server.spool.inbox_dir) == []

    # The server died after publishing and before removing the folder: the folder (with its token) is back.
    token = shown["inbox_folder"].rsplit(".", 1)[1]
    again = drop_sweep(server, "lr-scan", body, demo_config())
    with open(os.path.join(again, ".ingest-token"), "w", encoding="utf-8") as handle:
        handle.write(token)
    assert server.inbox.scan() == {"lr-scan": "lr-scan"}
    assert client.get("/sweeps/lr-scan").json()["job_count"] == 2 and len(client.get("/sweeps").json()) == 1
    # Another folder of the same name is not this one.
    drop_sweep(server, "lr-scan", body, demo_config())
    assert server.inbox.scan() == {"lr-scan": "rejected: sweep id taken: sweep 'lr-scan' already exists"}
    server.close()


def test_an_invalid_sweep_folder_is_set_aside_with_the_reason(tmp_path):
    server = Server(make_settings(tmp_path))
    drop_sweep(server, "typo", {"grid": {"demo.stepz": [1, 2]}, "target_host": "gpu-a"}, demo_config())
    outcome = server.inbox.scan()
    assert outcome["typo"].startswith("rejected: override key 'demo.stepz' does not exist")
    assert [reason["folder"] for reason in rejected(server)] == ["typo"]
    assert WsgiClient(server.app).get("/sweeps").json() == []
    server.close()


def test_a_job_taking_a_sweep_job_id_before_it_is_moved_in_is_set_aside_not_mixed_up(tmp_path):
    server = Server(make_settings(tmp_path))
    client = WsgiClient(server.app)
    plan = server.sweeps.plan(sweep_body(sweep_id="race", grid={"demo.steps": [1, 2]}))
    server.sweeps.stage(plan)
    server.sweeps.commit(plan)
    # Between the commit and the move, a dropped job folder named like the sweep's second job was published.
    os.makedirs(os.path.join(server.spool.folder("race-0001").path, "logs"))
    server.sweeps.maintain()
    assert entries_of(server.spool.queued_dir, "race") == ["race-0000"]
    assert sorted(reason["job_id"] for reason in rejected(server)) == ["race-0001", "race-0001"]  # entry, folder
    assert os.listdir(os.path.join(server.spool.folder("race-0001").path)) == ["logs"]  # the other's, untouched
    assert not sweeps.has_leftovers(os.path.join(server.sweeps.root, "race"))
    assert client.get("/sweeps/race").json()["counts"] == {"queued": 1, "not_found": 1}
    server.close()
