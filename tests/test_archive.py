"""The archive (archive.py): ended jobs past archive_after_days leave spool/done/ for month files, and still
answer every read; delete_after_days; a crash between a month file and its entries' removal."""

import json
import os
import subprocess
import sys
import time

from opeva_spool import archive, fsio
from opeva_spool.server import Server
from opeva_spool.spool import Entry

from .clients import WsgiClient
from .conftest import PROJECT_ROOT, assert_one_line_error, demo_config, make_settings, wait_for, wait_for_status

FUTURE_NS = time.time_ns() + 40 * archive.NS_PER_DAY  # "now" for a pass that finds every job old enough


def done_entries(spool):
    return sorted(name for state in ("canceled", "failed", "finished", "stopped")
                  for name in fsio.listdir(spool.done_path(state)))


def run_cli(root, *argv, crash_at=""):
    env = {**os.environ, "PYTHONPATH": PROJECT_ROOT, "OPEVA_CRASH_AT": crash_at}
    return subprocess.run([sys.executable, "-m", "opeva_spool.cli", "archive", "--root", root, *argv], env=env,
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)


def usage_rows(client, by):
    answer = client.get(f"/usage?by={by}").json()
    return answer["rows"], answer["total"]


def submit_canceled(client, count, **fields):
    """Jobs that end at once: queued for gpu-a (no agent there), then canceled."""
    ids = []
    for number in range(count):
        job_id = client.post("/run-simulation", json={"command": "true", "target_host": "gpu-a",
                                                      "job_name": f"job-{number}", **fields}).json()["job_id"]
        assert client.post(f"/stop/{job_id}").status == 200
        ids.append(job_id)
    return ids


def test_an_archived_job_answers_every_read_endpoint_as_before(tmp_path):
    server = Server(make_settings(tmp_path)).start()
    try:
        client = WsgiClient(server.app)
        job_id = client.post("/run-simulation", json={"config": demo_config(), "job_name": "archived-demo",
                                                      "target_host": "local"}).json()["job_id"]
        wait_for_status(client, job_id, "finished", timeout=60)
        reads = ("/status/{}", "/job-info/{}", "/result/{}", "/progress/{}", "/logs/{}", "/job-config/{}",
                 "/progress/{}/history", "/job-metrics/{}")

        def settled():  # the agent's last writes (log, progress history) may follow the move into done/
            first = {path: client.get(path.format(job_id)).body for path in reads}
            return first if first == {path: client.get(path.format(job_id)).body for path in reads} else None

        wait_for(settled, message="the ended job's reads to settle")
        before = {path: client.get(path.format(job_id)) for path in reads}
        listed = client.get("/jobs").json()
        usage = [usage_rows(client, by) for by in ("user", "host")]

        outcome = server.jobs.archiver.run(7, now_ns=FUTURE_NS)

        assert outcome.archived == [job_id]
        assert done_entries(server.spool) == []
        assert archive.listed_months(server.spool) == [archive.month_of(time.time_ns())]
        for path, answer in before.items():
            again = client.get(path.format(job_id))
            assert (again.status, again.body) == (answer.status, answer.body), path
        assert client.get("/jobs").json() == listed
        assert [usage_rows(client, by) for by in ("user", "host")] == usage  # from the month file's run columns
        assert usage[1][0][0]["host"] == "local" and usage[1][0][0]["attempts"] == 1
        assert client.get("/jobs?status=finished").json()[0]["job_id"] == job_id
        assert [row["job_id"] for row in client.get("/jobs?q=ARCHIVED-demo").json()] == [job_id]
        assert client.get("/jobs?q=nothing-like-it").json() == []
    finally:
        server.close()


def test_jobs_pages_across_live_and_archived_jobs_with_filters_and_cursor(tmp_path):
    server = Server(make_settings(tmp_path, embedded_worker=False))
    client = WsgiClient(server.app)
    old = submit_canceled(client, 5, submitted_by="ann")
    server.jobs.archiver.run(7, now_ns=FUTURE_NS)
    assert done_entries(server.spool) == []
    new = submit_canceled(client, 3, submitted_by="bob")
    queued = client.post("/run-simulation", json={"command": "true", "target_host": "gpu-a"}).json()["job_id"]
    newest_first = [queued, *reversed(new), *reversed(old)]

    assert [row["job_id"] for row in client.get("/jobs").json()] == newest_first
    seen, cursor = [], None
    while True:
        answer = client.get("/jobs?limit=2" + (f"&cursor={cursor}" if cursor else ""))
        seen += [row["job_id"] for row in answer.json()]
        cursor = answer.headers.get("X-Next-Cursor")
        if not cursor:
            break
    assert seen == newest_first
    assert [row["job_id"] for row in client.get("/jobs?status=canceled").json()] == newest_first[1:]
    assert [row["job_id"] for row in client.get("/jobs?status=queued").json()] == [queued]
    assert [row["job_id"] for row in client.get("/jobs?submitter=ann").json()] == list(reversed(old))
    assert [row["job_id"] for row in client.get("/jobs?host=gpu-a&limit=3").json()] == newest_first[:3]
    assert client.get("/jobs?offset=4&limit=2").json()[0]["job_id"] == newest_first[4]
    counts = client.get("/health").json()["jobs"]
    assert counts["canceled"] == 8 and counts["queued"] == 1


def test_a_restart_loads_the_archive_and_lists_no_archived_entry(tmp_path):
    settings = make_settings(tmp_path, embedded_worker=False)
    server = Server(settings)
    ids = submit_canceled(WsgiClient(server.app), 3)
    server.jobs.archiver.run(7, now_ns=FUTURE_NS)

    restarted = Server(settings)
    client = WsgiClient(restarted.app)
    assert len(restarted.index.jobs()) == 0 and len(restarted.index) == 3
    assert {row["job_id"] for row in client.get("/jobs").json()} == set(ids)
    assert all(client.get(f"/status/{job_id}").json()["status"] == "canceled" for job_id in ids)
    assert all(os.path.isdir(restarted.spool.folder(job_id).path) for job_id in ids)  # not taken for orphans


def test_a_crash_between_the_month_file_and_the_entries_removal_leaves_one_job_each(tmp_path):
    settings = make_settings(tmp_path, embedded_worker=False)
    server = Server(settings)
    ids = submit_canceled(WsgiClient(server.app), 3)
    time.sleep(1.0)

    crashed = run_cli(settings.shared_root, "--after-days", "0.00001", crash_at="archive.month_written")

    assert crashed.returncode == -9, crashed.stderr
    assert len(done_entries(server.spool)) == 3  # both in the month file and in done/
    assert len(archive.archived_ids(server.spool)) == 3
    restarted = Server(settings)
    client = WsgiClient(restarted.app)
    assert sorted(row["job_id"] for row in client.get("/jobs").json()) == sorted(ids)
    assert client.get("/health").json()["jobs"]["canceled"] == 3
    assert len(restarted.index.jobs()) == 0  # the entries were not taken for live jobs
    finished = run_cli(settings.shared_root, "--after-days", "0.00001", "--json")
    assert json.loads(finished.stdout)["leftovers_removed"] == 3
    assert done_entries(server.spool) == []
    restarted.index.sync(include_done=True)
    assert sorted(row["job_id"] for row in client.get("/jobs").json()) == sorted(ids)


def test_the_servers_maintenance_archives_and_a_running_server_sees_the_clis_archive(tmp_path):
    settings = make_settings(tmp_path, embedded_worker=False, archive_after_days=0.00001)
    server = Server(settings)
    client = WsgiClient(server.app)
    first = submit_canceled(client, 2)
    time.sleep(1.0)
    server.maintain_once()
    assert done_entries(server.spool) == [] and len(server.index.jobs()) == 0
    told = [event["to"] for event in server.events.journal.read() if event.get("job_id") in first]
    assert told and "deleted" not in told  # moving into the archive is no change of state

    second = submit_canceled(client, 2)
    time.sleep(1.0)
    assert run_cli(settings.shared_root, "--after-days", "0.00001").returncode == 0
    server.index.sync()
    assert len(server.index.jobs()) == 0
    assert {row["job_id"] for row in client.get("/jobs").json()} == set(first + second)


def test_delete_after_days_dry_run_lists_and_then_deletes_folder_and_row(tmp_path):
    settings = make_settings(tmp_path, embedded_worker=False)
    server = Server(settings)
    ids = submit_canceled(WsgiClient(server.app), 2)
    time.sleep(1.0)

    dry = run_cli(settings.shared_root, "--after-days", "30", "--delete-after-days", "0.00001", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert sorted(line.split("/")[1] for line in dry.stdout.splitlines() if line.startswith("would delete")) == \
        sorted(ids)
    assert len(done_entries(server.spool)) == 2 and all(os.path.isdir(server.spool.folder(i).path) for i in ids)

    done = run_cli(settings.shared_root, "--after-days", "30", "--delete-after-days", "0.00001")
    assert done.returncode == 0, done.stderr
    assert done_entries(server.spool) == [] and archive.archived_ids(server.spool) == set()
    assert not any(os.path.exists(server.spool.folder(i).path) for i in ids)
    client = WsgiClient(Server(settings).app)
    assert client.get(f"/status/{ids[0]}").status == 404 and client.get("/jobs").json() == []


def test_an_archived_job_can_be_deleted_and_resubmitted_through_the_api(tmp_path):
    settings = make_settings(tmp_path, embedded_worker=False)
    server = Server(settings)
    client = WsgiClient(server.app)
    kept, gone = submit_canceled(client, 2)
    server.jobs.archiver.run(7, now_ns=FUTURE_NS)

    again = client.post(f"/resubmit/{kept}", json={})
    assert again.status in (200, 201), again.body
    assert client.delete(f"/job/{gone}").status == 200
    assert client.get(f"/status/{gone}").status == 404
    assert client.delete(f"/job/{gone}").status == 404
    assert not os.path.exists(server.spool.folder(gone).path)
    assert gone not in archive.archived_ids(server.spool) and kept in archive.archived_ids(server.spool)
    assert gone not in {row["job_id"] for row in WsgiClient(Server(settings).app).get("/jobs").json()}


def test_a_month_file_holds_each_row_once_in_list_order(tmp_path):
    settings = make_settings(tmp_path, embedded_worker=False)
    server = Server(settings)
    ids = submit_canceled(WsgiClient(server.app), 3)
    server.jobs.archiver.run(7, now_ns=FUTURE_NS)
    [month] = archive.listed_months(server.spool)
    rows = archive.rows_of(archive.read_month_doc(archive.month_path(server.spool, month)))
    assert [row.entry.job_id for row in rows] == list(reversed(ids))
    assert all(isinstance(row.entry, Entry) and row.state == "canceled" and row.host == "gpu-a" for row in rows)
    assert server.index.archive.find(ids[1])[1] == 1


def test_a_sweep_whose_jobs_are_archived_still_counts_them(tmp_path):
    server = Server(make_settings(tmp_path, embedded_worker=False))
    client = WsgiClient(server.app)
    sweep = client.post("/sweeps", json={"config": demo_config(), "target_host": "gpu-a",
                                         "grid": {"demo.episodes": [1, 2, 3]}}).json()
    assert client.post(f"/sweeps/{sweep['sweep_id']}/stop").status == 200
    server.jobs.archiver.run(7, now_ns=FUTURE_NS)

    assert len(server.index.jobs()) == 0
    [listed] = client.get("/sweeps").json()
    assert listed["counts"] == {"canceled": 3}
    assert client.get(f"/sweeps/{sweep['sweep_id']}").json()["counts"] == {"canceled": 3}


def test_a_restart_keeps_the_fair_share_clock_that_archived_jobs_left(tmp_path):
    settings = make_settings(tmp_path, embedded_worker=False)
    server = Server(settings)
    submit_canceled(WsgiClient(server.app), 3)
    clock = server.fairshare.clock(0)
    server.jobs.archiver.run(7, now_ns=FUTURE_NS)

    assert clock == 3 and Server(settings).fairshare.clock(0) == clock


def test_archive_of_a_directory_that_is_no_shared_root_is_a_one_line_refusal(tmp_path):
    assert_one_line_error(run_cli(str(tmp_path / "nothing")), exit_code=2)
