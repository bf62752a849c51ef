"""Dependencies: jobs submitted with ``after`` / ``after_any`` wait, then run or are canceled, also across crashes."""

import itertools
import os
import random
import signal
import time

import pytest

from opeva_spool.dependencies import CANCEL, RELEASE, WAIT, decide
from opeva_spool.server import Server
from opeva_spool.spool import WAITING, Location
from opeva_spool.states import EndReason, JobState

from .clients import WsgiClient
from .conftest import PYTHON, demo_config, make_settings, wait_for, wait_for_status
from .processes import start_agent, start_server, stop

FAIL = [PYTHON, "-c", "import sys; sys.exit(4)"]
# Runs until the file named by its environment's HOLD exists (then finishes): a dependency the test ends.
HELD = [PYTHON, "-c", "import os, time\nwhile not os.path.exists(os.environ['HOLD']): time.sleep(0.05)"]


def states(**known):
    """A state_of for decide(): the given states, ``not_found`` for the rest."""
    return lambda job_id: JobState(known.get(job_id, "not_found"))


# ----- the rule ---------------------------------------------------------------------------


def test_decide_releases_once_every_after_finished_and_every_after_any_ended_however():
    verdict = decide(["a", "b"], ["c", "d", "e"],
                     states(a="finished", b="finished", c="failed", d="canceled"))  # e was deleted
    assert verdict == (RELEASE, (), None)


def test_decide_waits_naming_the_dependencies_that_still_hold_the_job():
    verdict = decide(["a", "b"], ["c", "d"], states(a="finished", b="running", c="waiting", d="stopped"))
    assert verdict.action == WAIT
    assert verdict.waiting_for == (("b", JobState.RUNNING), ("c", JobState.WAITING))


@pytest.mark.parametrize("ending", ["failed", "stopped", "canceled", "not_found"])
def test_decide_cancels_on_an_after_dependency_that_ended_otherwise_even_while_others_run(ending):
    verdict = decide(["a", "b", "c"], ["d"], states(a="running", b=ending, c="failed", d="queued"))
    assert verdict.action == CANCEL and verdict.failed == ("b", JobState(ending))


def test_decide_with_no_dependencies_releases():
    assert decide([], [], states()).action == RELEASE


# ----- through the API, in one process -----------------------------------------------------


def submit(client, **body):
    response = client.post("/run-simulation", json=body)
    assert response.status == 200, response.text
    return response.json()


def test_chain_with_a_failure_cancels_the_rest_with_dependency_failed_and_after_any_runs_anyway(client):
    a = submit(client, command=FAIL)
    b = submit(client, config=demo_config(), after=[a["job_id"]])
    c = submit(client, config=demo_config(), after=[b["job_id"]])
    d = submit(client, config=demo_config(), after_any=[a["job_id"]])
    assert b["status"] == c["status"] == d["status"] == "waiting"

    wait_for_status(client, c["job_id"], "canceled")
    wait_for_status(client, d["job_id"], "finished")
    assert client.get(f"/status/{a['job_id']}").json()["status"] == "failed"
    for job, dependency, its_state in ((b, a, "failed"), (c, b, "canceled")):
        info = client.get(f"/job-info/{job['job_id']}").json()
        assert info["status"] == "canceled" and info["reason"] == EndReason.DEPENDENCY_FAILED
        assert info["dependency"] == {"job_id": dependency["job_id"], "status": its_state}
        assert info["attempts"][0]["reason"] == "dependency_failed" and info["attempts"][0]["log"] is None


def test_waiting_job_says_what_it_waits_for_then_runs_when_its_dependencies_finished(client, server, tmp_path):
    hold = tmp_path / "hold"
    a = submit(client, command=HELD, env={"HOLD": str(hold)})
    b = submit(client, command=HELD, env={"HOLD": str(hold)})
    c = submit(client, config=demo_config(), after=[a["job_id"]], after_any=[b["job_id"]])
    wait_for_status(client, a["job_id"], "running")
    status = client.get(f"/status/{c['job_id']}").json()
    assert status["status"] == "waiting"
    assert sorted(item["job_id"] for item in status["waiting_for"]) == sorted([a["job_id"], b["job_id"]])
    info = client.get(f"/job-info/{c['job_id']}").json()
    assert info["status"] == "waiting" and info["after"] == [a["job_id"]] and info["after_any"] == [b["job_id"]]
    assert {item["job_id"] for item in info["waiting_for"]} == {a["job_id"], b["job_id"]}
    assert [job["job_id"] for job in client.get("/jobs?status=waiting").json()] == [c["job_id"]]

    client.post(f"/stop/{b['job_id']}")  # after_any: however it ends, it ends
    wait_for_status(client, b["job_id"], ("stopped", "canceled"))  # canceled if it was still queued
    waiting_for = wait_for(lambda: [item["job_id"] for item in client.get(f"/status/{c['job_id']}").json()
                                    ["waiting_for"]] == [a["job_id"]], message="c to wait for a only")
    assert waiting_for
    hold.write_text("go")
    wait_for_status(client, c["job_id"], "finished")
    assert client.get(f"/status/{a['job_id']}").json()["status"] == "finished"


def test_dependency_already_finished_at_submit_releases_the_job_at_once(client):
    a = submit(client, config=demo_config())
    wait_for_status(client, a["job_id"], "finished")
    b = submit(client, config=demo_config(), after=[a["job_id"]])
    wait_for_status(client, b["job_id"], "finished", timeout=10)


def test_deleted_dependency_cancels_an_after_dependant_and_releases_an_after_any_one(client, tmp_path):
    a = submit(client, command=HELD, env={"HOLD": str(tmp_path / "never")}, target_host="gpu-a")  # no agent: queued
    b = submit(client, config=demo_config(), after=[a["job_id"]])
    c = submit(client, config=demo_config(), after_any=[a["job_id"]])
    assert client.delete(f"/job/{a['job_id']}").status == 200
    wait_for_status(client, b["job_id"], "canceled")
    assert client.get(f"/job-info/{b['job_id']}").json()["dependency"] == {"job_id": a["job_id"],
                                                                          "status": "not_found"}
    wait_for_status(client, c["job_id"], "finished")


def test_unknown_dependency_is_a_400_naming_it(client):
    for key in ("after", "after_any"):
        response = client.post("/run-simulation", json={"command": "true", key: ["no-such-job"]})
        assert response.status == 400 and "no-such-job" in response.json()["detail"], response.text
        assert client.get("/jobs?status=waiting").json() == []


def test_stop_of_a_waiting_job_cancels_it_and_its_dependants(client, tmp_path):
    a = submit(client, command=HELD, env={"HOLD": str(tmp_path / "never")}, target_host="gpu-a")
    b = submit(client, config=demo_config(), after=[a["job_id"]])
    c = submit(client, config=demo_config(), after=[b["job_id"]])
    assert client.post(f"/stop/{b['job_id']}").json()["status"] == "canceled"
    wait_for_status(client, c["job_id"], "canceled")
    assert client.get(f"/job-info/{c['job_id']}").json()["dependency"] == {"job_id": b["job_id"],
                                                                          "status": "canceled"}


def test_a_cancel_cut_between_its_record_and_its_rename_is_completed_by_the_next_server(tmp_path):
    settings = make_settings(tmp_path, embedded_worker=False)
    server = Server(settings).start()
    client = WsgiClient(server.app)
    a = submit(client, command=FAIL, target_host="gpu-a")
    b = submit(client, command="true", target_host="gpu-a", after=[a["job_id"]])
    server.close()
    # As if the server died inside cancel_waiting: the canceled record is written, the entry is still waiting.
    spool = server.spool
    entry = server.index.get(b["job_id"]).entry
    a_entry = server.index.get(a["job_id"]).entry
    assert spool.cancel_queued(a_entry)  # a ended (canceled) while the server was down
    spool.write_attempt(entry, "", "", JobState.CANCELED, reason=EndReason.DEPENDENCY_FAILED)
    assert os.path.exists(spool.entry_path(Location(WAITING), entry))

    server = Server(settings).start()
    try:
        client = WsgiClient(server.app)
        wait_for_status(client, b["job_id"], "canceled")
        info = client.get(f"/job-info/{b['job_id']}").json()
        assert info["dependency"] == {"job_id": a["job_id"], "status": "canceled"}
        assert not os.path.exists(spool.entry_path(Location(WAITING), entry))
    finally:
        server.close()


# ----- kill -9 of a real server ------------------------------------------------------------


@pytest.mark.slow
def test_chains_complete_correctly_through_repeated_kill_9_of_the_server(tmp_path):
    """Two chains, one with a failure, while the server is killed -9 again and again at random moments."""
    root = tmp_path / "share"
    settings = dict(embedded_worker="false", hosts="local,gpu-a")
    agent = start_agent(root, tmp_path, "gpu-a", capacity=4)
    server, client = start_server(root, tmp_path, **settings)
    try:
        wait_for(lambda: os.path.isdir(root / "spool" / "gpu-a" / "running"), message="the agent to start")
        demo = {"config": demo_config(episodes=2, steps=5, step_seconds=0.05), "target_host": "gpu-a"}
        good = [submit(client, **demo)["job_id"]]
        for _ in range(4):
            good.append(submit(client, **demo, after=[good[-1]])["job_id"])
        bad = [submit(client, command=FAIL, target_host="gpu-a")["job_id"]]
        for _ in range(3):
            bad.append(submit(client, **demo, after=[bad[-1]])["job_id"])
        anyway = submit(client, **demo, after_any=[bad[1]])["job_id"]

        randomness = random.Random(9)
        deadline = time.monotonic() + 60
        kills_mid_chain = 0
        while time.monotonic() < deadline:
            time.sleep(randomness.uniform(0.1, 1.2))
            server.send_signal(signal.SIGKILL)
            server.wait()
            server, client = start_server(root, tmp_path, **settings)
            done = {job_id: client.get(f"/status/{job_id}").json()["status"] for job_id in (*good, *bad, anyway)}
            if all(JobState(state).terminal for state in done.values()):
                break
            kills_mid_chain += "waiting" in done.values()
        assert kills_mid_chain >= 2  # the chains were cut while jobs waited, not only once they were over
        for job_id in good:
            wait_for_status(client, job_id, "finished", timeout=30)
        assert client.get(f"/status/{bad[0]}").json()["status"] == "failed"
        for dependency, job_id in itertools.pairwise(bad):
            wait_for_status(client, job_id, "canceled", timeout=30)
            assert client.get(f"/job-info/{job_id}").json()["dependency"]["job_id"] == dependency
        wait_for_status(client, anyway, "finished", timeout=30)
        # Each job of the good chain started only after its dependency had ended.
        for before, after in itertools.pairwise(good):
            ended = client.get(f"/job-info/{before}").json()["ended_at"]
            started = client.get(f"/job-info/{after}").json()["attempts"][0]["claimed_at"]
            assert started >= ended, (before, after)
    finally:
        stop(server, signal.SIGKILL)
        stop(agent)
