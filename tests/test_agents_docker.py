"""A Docker agent as a real process: live logs, endings, stop, missing image, /data, GPUs,
re-attachment after kill -9, and its host guard when the agent is frozen."""

import os
import shutil
import signal
import time
import uuid

import pytest

from opeva_spool import fsio
from opeva_spool.agent import GpuPool
from opeva_spool.runtimes.docker import container_name, gpu_request
from opeva_spool.spool import Spool

from .conftest import wait_for
from .processes import start_agent, start_server, stop

pytestmark = pytest.mark.docker

OFFLINE_AFTER = 4.0  # docker kill and inspect take longer than signals: a wider margin than the process tests
FAST = dict(observer="polling", scan_interval=0.2, heartbeat_interval=0.3, offline_after=OFFLINE_AFTER,
            stop_grace=1.0)


@pytest.fixture(scope="module")
def share(tmp_path_factory):
    # Under /tmp, which the engine can bind-mount at /data.
    return tmp_path_factory.mktemp("dockershare")


@pytest.fixture(scope="module")
def server(share, docker_engine):
    proc, client = start_server(share / "root", share, embedded_worker="false", **FAST)
    yield client
    stop(proc)


@pytest.fixture
def docker_agents(share, docker_engine, busybox_image):
    """Starts Docker agents for fresh host names; stops them and removes their containers."""
    started = []

    def start(host=None, **settings):
        host = host or f"d{uuid.uuid4().hex[:8]}"
        proc = start_agent(share / "root", share, host, runtime="docker", docker_host=docker_engine[0],
                           default_image=busybox_image, **{**FAST, **settings})
        started.append((host, proc))
        heartbeat = Spool(str(share / "root")).heartbeat_path(host)
        wait_for(lambda: (fsio.read_json_object(heartbeat) or {}).get("pid") == proc.pid, timeout=10,
                 message=f"agent {host} to beat")
        return host, proc

    yield start
    client = docker_engine[1]
    for host, proc in started:
        proc.send_signal(signal.SIGCONT)
        stop(proc)
        for container in client.containers.list(all=True, filters={"label": f"opeva.host={host}"}):
            container.remove(force=True)


def submit(server, host, command, **body):
    response = server.post("/run-simulation", json={"command": command, "target_host": host, **body})
    assert response.status == 200, response.text
    return response.json()["job_id"]


def wait_status(server, job_id, wanted, timeout=15, **fields):
    def check():
        status = server.get(f"/status/{job_id}").json()
        return status if status["status"] == wanted and all(status[k] == v for k, v in fields.items()) else None
    return wait_for(check, timeout=timeout, message=f"{job_id} to be {wanted} {fields}")


def record(share, job_id, attempt=1):
    return fsio.read_json_object(Spool(str(share / "root")).folder(job_id).attempt_record(attempt))


def test_docker_job_log_is_live_and_exit_codes_decide_finished_or_failed(server, share, docker_agents):
    host, _ = docker_agents()
    job_id = submit(server, host, "sh -c 'echo first; sleep 1.5; echo second'")
    wait_for(lambda: "first" in server.get(f"/logs/{job_id}").text, timeout=10, message="live log")
    assert "second" not in server.get(f"/logs/{job_id}").text
    assert server.get(f"/status/{job_id}").json()["status"] == "running"
    wait_status(server, job_id, "finished")
    assert server.get(f"/logs/{job_id}").text.split() == ["first", "second"]
    assert record(share, job_id)["container_name"] == container_name(job_id, 1)
    failing = submit(server, host, "sh -c 'echo bye; exit 3'")
    wait_status(server, failing, "failed")
    assert record(share, failing)["exit_code"] == 3 and record(share, failing)["reason"] == "exit_code"


def test_stop_request_ends_a_container_that_ignores_sigterm_as_stopped_and_keeps_its_log(server, share,
                                                                                         docker_agents):
    host, _ = docker_agents()
    job_id = submit(server, host, ["sh", "-c", "trap 'echo got-term' TERM; echo ready; while true; do sleep 0.1; done"])
    wait_for(lambda: "ready" in server.get(f"/logs/{job_id}").text, timeout=10, message="the job to start")
    asked = time.monotonic()
    assert server.post(f"/stop/{job_id}").status == 200
    wait_status(server, job_id, "stopped", timeout=10)
    assert time.monotonic() - asked < 1.0 + 4  # grace 1 s, plus the watch/scan that carries the request
    assert record(share, job_id)["exit_code"] == 137  # TERM was trapped: SIGKILL after the grace
    log = server.get(f"/logs/{job_id}").text
    assert "ready" in log and "got-term" in log and "stop_requested" in log


def test_missing_image_fails_the_job_at_once_with_image_missing(server, share, docker_agents):
    host, _ = docker_agents()
    job_id = submit(server, host, "true", image="localhost/absent:none")
    wait_status(server, job_id, "failed", timeout=5)
    ended = record(share, job_id)
    assert ended["reason"] == "image_missing"
    assert ended["error"] == f"image localhost/absent:none is not present on host {host}"
    assert ended["error"] in server.get(f"/logs/{job_id}").text


def test_job_writes_the_share_through_its_data_mount(server, share, docker_agents):
    host, _ = docker_agents()
    job_id = submit(server, host, ["sh", "-c", 'echo "$OPEVA_ATTEMPT on $OPEVA_HOST" > /data/jobs/$OPEVA_JOB_ID/x'])
    wait_status(server, job_id, "finished")
    with open(share / "root" / "jobs" / job_id / "x") as handle:
        assert handle.read() == f"1 on {host}\n"


def test_container_job_runs_as_the_agent_s_user_from_its_config_snapshot_with_its_name_and_id(server, share,
                                                                                             docker_agents):
    host, _ = docker_agents()
    spool = Spool(str(share / "root"))
    config = f"{host}.yaml"
    assert server.post("/experiment-configs/create", json={"file_name": config, "config": {"a": 1}}).status == 200
    spool.request_drain(host)  # the job waits until the test has seen its snapshot
    script = 'echo "$OPEVA_JOB_ID $OPEVA_JOB_NAME $OPEVA_CONFIG_PATH $(id -u):$(id -g)"; cat "$OPEVA_CONFIG_PATH"'
    job_id = submit(server, host, ["sh", "-c", script], config_path=config, job_name="my-run")
    snapshot, live = spool.folder(job_id).path + "/config.yaml", f"{spool.configs_dir}/{config}"
    if not os.path.exists(snapshot):  # the submission side writes it; on its own, this test does
        shutil.copyfile(live, snapshot)
    with open(live, "w") as handle:
        handle.write("a: edited after the submission\n")
    spool.request_drain(host, undo=True)
    wait_status(server, job_id, "finished")
    first, *config_seen = server.get(f"/logs/{job_id}").text.splitlines()
    assert first == f"{job_id} my-run /data/jobs/{job_id}/config.yaml {os.getuid()}:{os.getgid()}"
    assert config_seen == ["a: 1"]


def test_gpu_job_asks_the_engine_for_exactly_its_assigned_devices(server, share, docker_agents):
    host, _ = docker_agents(gpu_ids="0,1,2")
    job_id = submit(server, host, "true", gpus=2)
    # No NVIDIA runtime on this machine: the engine refuses the request, which is what we check.
    wait_status(server, job_id, "failed", timeout=10)
    ended = record(share, job_id)
    assert ended["reason"] == "start_failed" and ended["gpus"] == ["0", "1"]
    assert "nvidia" in ended["error"] or "gpu" in ended["error"]


def test_two_jobs_never_share_a_gpu():
    pool = GpuPool(("0", "1", "2"))
    first = pool.take(2)
    assert first == ("0", "1") and pool.free() == ["2"]
    assert pool.take(2) is None  # one free: the job waits rather than share
    assert pool.take("all") is None
    assert pool.take(1) == ("2",) and pool.take(0) == ()
    pool.give_back(first)
    assert pool.free() == ["0", "1"]
    pool.hold(("1",))  # a re-attached attempt keeps the GPU its record names
    assert pool.take(2) is None and pool.take(1) == ("0",)
    requests, env = gpu_request(first)
    assert [request["DeviceIDs"] for request in requests] == [["0", "1"]]
    assert requests[0]["Driver"] == "nvidia" and env == {"NVIDIA_VISIBLE_DEVICES": "0,1"}
    assert gpu_request(()) == ([], {"NVIDIA_VISIBLE_DEVICES": "void"})


def test_killed_docker_agent_restarted_re_attaches_to_its_container_without_a_duplicate(server, share,
                                                                                        docker_agents,
                                                                                        docker_engine):
    host, agent = docker_agents()
    job_id = submit(server, host, ["sh", "-c", "echo one; sleep 2; echo two"])
    wait_for(lambda: "one" in server.get(f"/logs/{job_id}").text, timeout=10, message="the job to start")
    agent.kill()
    agent.wait()
    docker_agents(host)  # what systemd's Restart= does, well within the lease
    wait_status(server, job_id, "finished", timeout=10, attempt=1)
    assert server.get(f"/logs/{job_id}").text.split() == ["one", "two"]  # resumed, nothing twice
    assert docker_engine[1].containers.list(all=True, filters={"label": f"opeva.host={host}"}) == []


def test_frozen_docker_agent_s_guard_kills_its_containers_before_the_server_requeues(server, share,
                                                                                   docker_agents,
                                                                                   docker_engine):
    host_a, agent_a = docker_agents()
    # Attempt 1 would run for a minute; attempt 2 ends after 3 s.
    command = ["sh", "-c", 'echo "attempt $OPEVA_ATTEMPT"; sleep $(( OPEVA_ATTEMPT == 1 ? 60 : 3 ))']
    job_id = submit(server, "any", command, max_retries=1)
    wait_status(server, job_id, "running", host=host_a)
    host_b, _ = docker_agents()
    agent_a.send_signal(signal.SIGSTOP)
    frozen_at = time.monotonic()
    wait_status(server, job_id, "running", timeout=OFFLINE_AFTER + 6, host=host_b, attempt=2)
    api = docker_engine[1].api
    first = api.inspect_container(container_name(job_id, 1))["State"]
    second = api.inspect_container(container_name(job_id, 2))["State"]
    assert not first["Running"] and first["ExitCode"] in (137, 143)
    assert first["FinishedAt"] < second["StartedAt"]  # the engine's clock: one clock for both
    # Requeued only after the threshold, which runs from the last heartbeat the server saw change:
    # that write may precede the freeze by up to one heartbeat interval.
    assert time.monotonic() - frozen_at >= OFFLINE_AFTER - FAST["heartbeat_interval"]
    agent_a.send_signal(signal.SIGCONT)
    status = wait_status(server, job_id, "finished", timeout=10)
    assert (status["attempt"], status["host"]) == (2, host_b)
    # The thawed agent released its dead container and wrote no ending for the job.
    wait_for(lambda: not docker_engine[1].containers.list(all=True, filters={"label": f"opeva.host={host_a}"},
                                                          ignore_removed=True),
             timeout=5, message="the stale container to be removed")
    assert (record(share, job_id, 1) or {}).get("state") != "finished"


def test_restarted_docker_agent_removes_the_container_of_a_superseded_attempt(server, share, docker_agents,
                                                                             docker_engine):
    host, agent = docker_agents()
    command = ["sh", "-c", 'echo "attempt $OPEVA_ATTEMPT"; sleep $(( OPEVA_ATTEMPT == 1 ? 60 : 1 ))']
    job_id = submit(server, host, command, max_retries=1)
    wait_status(server, job_id, "running", host=host)
    logs = share / "root" / "jobs" / job_id / "logs"
    # Killed once its copier has the first line: what attempt 1 printed by then is its log.
    wait_for(lambda: (logs / f"{job_id}.log").read_text() == "attempt 1\n", message="attempt 1's output copied")
    agent.kill()
    agent.wait()
    # Nobody else serves this host: the server requeues the job as attempt 2 and it waits.
    wait_status(server, job_id, "queued", timeout=OFFLINE_AFTER + 5, attempt=2)
    stale = docker_engine[1].api.inspect_container(container_name(job_id, 1))["State"]
    assert not stale["Running"] and stale["ExitCode"] in (137, 143)  # the guard ended it at the lease
    docker_agents(host)
    wait_status(server, job_id, "finished", timeout=10, attempt=2)
    names = [c.name for c in docker_engine[1].containers.list(all=True, filters={"label": f"opeva.host={host}"})]
    assert container_name(job_id, 1) not in names
    assert (logs / f"{job_id}.attempt-1.log").read_text() == "attempt 1\n"
    assert (logs / f"{job_id}.log").read_text() == "attempt 2\n"
