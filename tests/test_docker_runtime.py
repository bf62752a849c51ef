"""The Docker runtime against a real engine, with the busybox test image."""

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import docker
import pytest

from opeva_spool.exceptions import RuntimeFailure
from opeva_spool.runtimes.base import Launch
from opeva_spool.runtimes.docker import DockerRuntime, container_name, gpu_request
from opeva_spool.settings import Settings

pytestmark = pytest.mark.docker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def eventually(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def read(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


@pytest.fixture
def shared_root(tmp_path):
    # tmp_path is under /tmp on this machine, which the daemon can bind-mount.
    (tmp_path / "jobs").mkdir()
    return tmp_path


@pytest.fixture
def host(docker_engine):
    """A host name of this test's own, so label lookups never see another test's containers."""
    name = f"h{uuid.uuid4().hex[:10]}"
    yield name
    client = docker_engine[1]
    for container in client.containers.list(all=True, filters={"label": f"opeva.host={name}"}):
        container.remove(force=True)


@pytest.fixture
def make_settings(docker_engine, shared_root, host, busybox_image):
    def make(**overrides):
        values = dict(
            shared_root=str(shared_root), docker_host=docker_engine[0], host=host, default_image=busybox_image
        )
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def runtime(make_settings):
    return DockerRuntime(make_settings())


@pytest.fixture
def make_launch(shared_root, host):
    def make(command, attempt=1, **fields):
        job_id = f"job-{uuid.uuid4().hex[:8]}"
        logs = shared_root / "jobs" / job_id / "logs"
        logs.mkdir(parents=True)
        return Launch(job_id=job_id, attempt=attempt, host=host, command=command, env=fields.pop("env", {}),
                      log_path=str(logs / f"{job_id}.log"), **fields)

    return make


def test_successful_job_exits_zero_with_stdout_and_stderr_in_its_log(runtime, make_launch, docker_engine):
    launch = make_launch(["sh", "-c", "echo to-out; echo to-err >&2"])
    execution = runtime.start(launch)
    assert execution.wait(10) == 0
    execution.release()
    # The engine keeps no order between the two streams.
    assert sorted(read(launch.log_path).splitlines()) == ["to-err", "to-out"]
    with pytest.raises(docker.errors.NotFound):  # release removed the container
        docker_engine[1].containers.get(execution.container_id)


def test_log_grows_while_the_container_still_runs(runtime, make_launch):
    launch = make_launch(["sh", "-c", "echo started; sleep 30"])
    execution = runtime.start(launch)
    try:
        assert eventually(lambda: os.path.exists(launch.log_path) and "started" in read(launch.log_path), 5)
        assert execution.poll() is None
    finally:
        execution.kill()
        assert execution.wait(10) == 137
        execution.release()


def test_exit_code_of_a_string_command_is_reported(runtime, make_launch):
    execution = runtime.start(make_launch("sh -c 'exit 3'"))
    assert execution.wait(10) == 3
    execution.release()


def test_stop_ends_a_job_that_honours_sigterm_before_the_grace_ends(runtime, make_launch):
    execution = runtime.start(make_launch(["sleep", "30"]))
    began = time.monotonic()
    assert execution.stop(grace=5) == 143
    assert time.monotonic() - began < 3
    execution.release()


def test_stop_kills_a_job_that_ignores_sigterm_once_the_grace_is_over(runtime, make_launch):
    launch = make_launch(["sh", "-c", "trap 'echo got-term' TERM; echo ready; while true; do sleep 0.1; done"])
    execution = runtime.start(launch)
    assert eventually(lambda: os.path.exists(launch.log_path) and "ready" in read(launch.log_path), 5)
    began = time.monotonic()
    execution.signal_stop()
    assert time.monotonic() - began < 0.5, "signal_stop must not wait for the grace period"
    assert execution.stop(grace=1) == 137
    assert 1 <= time.monotonic() - began < 5
    execution.release()
    assert "got-term" in read(launch.log_path)


def test_missing_image_fails_at_once_without_a_pull(runtime, make_launch, docker_engine):
    launch = make_launch(["true"], image="localhost/absent:none")
    began = time.monotonic()
    with pytest.raises(RuntimeFailure) as failure:
        runtime.start(launch)
    assert time.monotonic() - began < 1
    assert failure.value.reason == "image_missing"
    assert failure.value.detail == f"image localhost/absent:none is not present on host {launch.host}"
    with pytest.raises(docker.errors.NotFound):
        docker_engine[1].containers.get(container_name(launch.job_id, launch.attempt))


def test_failed_pull_becomes_a_runtime_failure(make_settings, make_launch):
    rt = DockerRuntime(make_settings(docker_allow_pull=True))
    # Nothing listens on port 9: the pull is refused quickly.
    with pytest.raises(RuntimeFailure) as failure:
        rt.start(make_launch(["true"], image="127.0.0.1:9/absent:none"))
    assert failure.value.reason == "image_pull_failed"
    assert "127.0.0.1:9/absent:none" in failure.value.detail


def test_start_refused_by_the_engine_fails_and_leaves_no_container(runtime, make_launch, docker_engine):
    # This machine has no NVIDIA driver, so the engine refuses the GPU request at start.
    launch = make_launch(["true"], gpus=("0",))
    with pytest.raises(RuntimeFailure) as failure:
        runtime.start(launch)
    assert failure.value.reason == "start_failed"
    assert "nvidia" in failure.value.detail
    with pytest.raises(docker.errors.NotFound):
        docker_engine[1].containers.get(container_name(launch.job_id, launch.attempt))


def test_command_that_cannot_run_exits_127_with_the_reason_in_its_log(runtime, make_launch):
    # The init (PID 1) execs the command, so a missing program is the job's failure, not the engine's.
    launch = make_launch(["/no/such/program"])
    execution = runtime.start(launch)
    assert execution.wait(10) == 127
    execution.release()
    assert "/no/such/program" in read(launch.log_path)


def test_job_writes_under_data_land_in_the_shared_root(runtime, make_launch, shared_root):
    launch = make_launch(None)
    launch.command = ["sh", "-c", f"echo written > /data/jobs/{launch.job_id}/x"]
    execution = runtime.start(launch)
    assert execution.wait(10) == 0
    execution.release()
    assert read(shared_root / "jobs" / launch.job_id / "x") == "written\n"


def test_container_is_named_and_labelled_for_the_job(runtime, make_launch, docker_engine):
    launch = make_launch(["true"], attempt=2)
    execution = runtime.start(launch)
    container = docker_engine[1].containers.get(execution.container_id)
    assert container.name == f"opeva-{launch.job_id}-a2" == execution.container_name
    labels = container.labels
    assert (labels["opeva.job_id"], labels["opeva.attempt"], labels["opeva.host"]) == (launch.job_id, "2", launch.host)
    execution.wait(10)
    execution.release()


def test_container_runs_as_job_user_so_what_it_writes_on_the_share_is_owned_by_that_user(make_settings,
                                                                                         make_launch, shared_root):
    # As the real image writes progress.json: mode 0600. Whoever owns it is the only one who can read it.
    os.chmod(shared_root, 0o755)  # a share every job user can enter (pytest makes its temp dirs 0700)

    def written_by(runtime, owner):
        launch = make_launch(None)
        progress = shared_root / "jobs" / launch.job_id / "progress"
        progress.mkdir()
        os.chown(progress, *owner)  # the job folder belongs to the service user, as on a real share
        launch.command = ["sh", "-c", f"umask 077; echo '{{}}' > /data/jobs/{launch.job_id}/progress/progress.json"]
        execution = runtime.start(launch)
        assert execution.wait(10) == 0, read(launch.log_path)
        execution.release()
        return os.stat(progress / "progress.json")

    written = written_by(DockerRuntime(make_settings(job_user="1234:1234")), (1234, 1234))
    assert (written.st_uid, written.st_gid) == (1234, 1234)
    written = written_by(DockerRuntime(make_settings()), (os.getuid(), os.getgid()))  # default: the agent's user
    assert (written.st_uid, written.st_gid) == (os.getuid(), os.getgid())


def test_default_command_and_image_come_from_the_runtime_s_settings(make_settings, make_launch, busybox_image):
    runtime = DockerRuntime(make_settings(docker_command="run {config_file} {job_id}"))
    assert runtime.default_command("j1", "/data/jobs/j1/config.yaml", "x.yaml") == "run x.yaml j1"
    launch = make_launch(["true"])  # names no image: the default_image setting (busybox here) runs it
    execution = runtime.start(launch)
    assert execution.wait(10) == 0
    execution.release()
    with pytest.raises(RuntimeFailure) as failure:
        DockerRuntime(make_settings(docker_command="{python} run")).default_command("j1", "", "")
    assert failure.value.reason == "bad_command" and "{python}" in failure.value.detail


def test_container_name_is_fitted_to_dockers_pattern():
    assert container_name("a b/c", 3) == "opeva-a_b_c-a3"


def test_job_env_overrides_configured_env_and_gpus_stay_hidden(make_settings, make_launch):
    rt = DockerRuntime(make_settings(docker_env={"A": "from-settings", "B": "kept"}))
    launch = make_launch(["sh", "-c", 'echo "$A $B $NVIDIA_VISIBLE_DEVICES"'], env={"A": "from-job"})
    execution = rt.start(launch)
    assert execution.wait(10) == 0
    execution.release()
    assert read(launch.log_path) == "from-job kept void\n"


def test_network_mode_from_settings_is_applied(make_settings, make_launch, docker_engine):
    rt = DockerRuntime(make_settings(docker_network_mode="host"))
    execution = rt.start(make_launch(["true"]))
    container = docker_engine[1].containers.get(execution.container_id)
    assert container.attrs["HostConfig"]["NetworkMode"] == "host"
    execution.wait(10)
    execution.release()


def test_gpu_request_names_exactly_the_assigned_devices(runtime, make_launch):
    requests_, env = gpu_request(("0", "2"))
    assert [(r.driver, r.device_ids, r.capabilities) for r in requests_] == [("nvidia", ["0", "2"], [["gpu"]])]
    assert env == {"NVIDIA_VISIBLE_DEVICES": "0,2"}
    spec = runtime.container_spec(make_launch(["true"], gpus=("0", "2")), "img", 0)
    assert spec["device_requests"] == requests_
    assert spec["environment"]["NVIDIA_VISIBLE_DEVICES"] == "0,2"


def test_no_gpu_assigned_requests_no_device(runtime, make_launch):
    assert gpu_request(()) == ([], {"NVIDIA_VISIBLE_DEVICES": "void"})
    assert runtime.container_spec(make_launch(["true"]), "img", 0)["device_requests"] == []


def test_check_names_an_engine_that_does_not_answer(runtime, make_settings, make_launch):
    assert runtime.check() is None
    dead = DockerRuntime(make_settings(docker_host="unix:///tmp/opeva-no-engine.sock"))
    assert "unix:///tmp/opeva-no-engine.sock" in dead.check()
    with pytest.raises(RuntimeFailure) as failure:
        dead.start(make_launch(["true"]))
    assert failure.value.reason == "engine_unavailable"


AGENT = textwrap.dedent("""
    import sys, time
    from opeva_spool.runtimes.base import Launch
    from opeva_spool.runtimes.docker import DockerRuntime
    from opeva_spool.settings import Settings
    shared_root, engine, image, host, job_id, log_path = sys.argv[1:]
    runtime = DockerRuntime(Settings(shared_root=shared_root, docker_host=engine, host=host, default_image=image))
    command = ["sh", "-c", "i=0; while true; do echo line$i; i=$((i+1)); sleep 0.05; done"]
    runtime.start(Launch(job_id=job_id, attempt=1, host=host, command=command, env={}, log_path=log_path))
    print("started", flush=True)
    time.sleep(60)
""")


def test_new_agent_adopts_a_running_container_and_resumes_its_log_without_duplicates(
    make_settings, make_launch, docker_engine, busybox_image, shared_root, host
):
    launch = make_launch(None)
    with open(launch.log_path, "w") as log:
        log.write("earlier attempt\n")  # the container's output starts after this
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT, str(shared_root), docker_engine[0], busybox_image, host, launch.job_id,
         launch.log_path],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert agent.stdout.readline() == "started\n"
        assert eventually(lambda: read(launch.log_path).count("\n") > 5, 5)
    finally:
        agent.send_signal(signal.SIGKILL)  # the agent dies without releasing anything
        agent.wait()
    size_at_death = os.path.getsize(launch.log_path)
    time.sleep(0.5)  # output nobody copies yet

    rt = DockerRuntime(make_settings())
    assert rt.adopt("some-other-host") == {}
    adopted = rt.adopt(host)
    assert list(adopted) == [(launch.job_id, 1)]
    execution = adopted[(launch.job_id, 1)]
    assert eventually(lambda: os.path.getsize(launch.log_path) > size_at_death + 100, 5)
    assert execution.stop(grace=5) == 143
    execution.release()

    lines = read(launch.log_path).splitlines()
    assert lines[0] == "earlier attempt"
    assert lines[1:] == [f"line{i}" for i in range(len(lines) - 1)], "a line was lost or copied twice"


def test_adopted_container_that_already_exited_reports_its_code_and_log_once(make_settings, make_launch):
    first = DockerRuntime(make_settings())
    launch = make_launch(["sh", "-c", "echo only-once; exit 4"])
    gone = first.start(launch)
    assert gone.wait(10) == 4  # and never released: the agent died here
    assert eventually(lambda: read(launch.log_path) == "only-once\n", 5)

    second = DockerRuntime(make_settings())
    execution = second.adopt(launch.host)[(launch.job_id, 1)]
    assert execution.poll() == 4
    execution.release()
    assert read(launch.log_path) == "only-once\n"


def test_release_of_a_stale_running_container_kills_and_removes_it(
    runtime, make_settings, make_launch, docker_engine
):
    launch = make_launch(["sleep", "30"])
    runtime.start(launch)
    other = DockerRuntime(make_settings())
    stale = other.adopt(launch.host)[(launch.job_id, 1)]
    began = time.monotonic()
    stale.release()
    assert time.monotonic() - began < 5
    assert docker_engine[1].containers.list(all=True, filters={"label": f"opeva.job_id={launch.job_id}"}) == []


def test_a_second_deployment_on_the_same_engine_never_adopts_or_removes_this_one_s_containers(
    make_settings, make_launch, tmp_path
):
    ours = DockerRuntime(make_settings())
    launch = make_launch(["sh", "-c", "sleep 30"])
    execution = ours.start(launch)
    try:
        other_root = tmp_path / "other-share"
        (other_root / "jobs").mkdir(parents=True)
        other = DockerRuntime(make_settings(shared_root=str(other_root)))
        # Same host name, another root: nothing of ours is its own, and "superseded" removals spare ours.
        assert other.adopt(launch.host, current=set()) == {}
        assert execution.poll() is None
        adopted = ours.adopt(launch.host)
        assert list(adopted) == [(launch.job_id, 1)]
        adopted[(launch.job_id, 1)].detach()
    finally:
        execution.kill()
        execution.release()
