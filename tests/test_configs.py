"""Experiment configs: create, list, read, delete, on the plural and singular paths; the job's
snapshot of its config; links planted in configs/."""

import hashlib
import os

import pytest

from .test_bad_input import assert_json_error


@pytest.mark.parametrize("prefix", ["/experiment-configs", "/experiment-config"])
def test_config_round_trip(client, server, prefix):
    created = client.post(f"{prefix}/create", json={"file_name": "exp1.yaml", "config": {"experiment": {"name": "a"}}})
    assert created.status == 200 and created.json()["config_path"] == "configs/exp1.yaml"
    assert client.get("/experiment-configs").json() == ["exp1.yaml"]
    assert client.get(f"{prefix}/exp1.yaml").json()["config"] == {"experiment": {"name": "a"}}
    assert "name: a" in client.get(f"{prefix}/exp1.yaml?format=yaml").text
    assert client.delete(f"{prefix}/exp1.yaml").status == 200
    assert client.get(f"{prefix}/exp1.yaml").status == 404
    assert client.delete(f"{prefix}/exp1.yaml").status == 404
    assert client.get("/experiment-configs").json() == []
    assert [name for name in os.listdir(server.spool.configs_dir) if not name.startswith(".")] == []


def history_texts(server, file_name):
    folder = os.path.join(server.spool.configs_dir, ".history", file_name)
    return [open(os.path.join(folder, name)).read() for name in sorted(os.listdir(folder))]


def test_creating_an_existing_config_replaces_it_and_keeps_the_old_one_in_history(client, server):
    first = client.post("/experiment-config/create", json={"file_name": "a.yml", "config": {"v": 1}})
    assert first.status == 200 and first.json()["replaced"] is False
    again = client.post("/experiment-config/create", json={"file_name": "a.yml", "config": {"v": 2}})
    assert again.status == 200, again
    body = again.json()
    assert body["replaced"] is True and body["config_path"] == "configs/a.yml" and body["file"] == "a.yml"
    assert client.get("/experiment-configs/a.yml").json()["config"] == {"v": 2}
    assert history_texts(server, "a.yml") == ["v: 1\n"]
    assert client.get("/experiment-configs/a.yml/history").json()["history"] == [body["history_path"]]
    assert body["history_path"].startswith("configs/.history/a.yml/")
    client.delete("/experiment-configs/a.yml")
    assert history_texts(server, "a.yml") == ["v: 1\n", "v: 2\n"]


def test_creating_an_existing_config_with_overwrite_false_is_409(client):
    client.post("/experiment-configs/create", json={"file_name": "a.yml", "config": {"v": 1}})
    for request in ({"json": {"file_name": "a.yml", "config": {"v": 2}, "overwrite": False}},
                    {"json": {"file_name": "a.yml", "config": {"v": 2}}, "url": "?overwrite=0"}):
        clash = client.post("/experiment-configs/create" + request.get("url", ""), json=request["json"])
        assert_json_error(clash, 409)
    assert client.get("/experiment-configs/a.yml").json()["config"] == {"v": 1}
    assert_json_error(client.post("/experiment-configs/create",
                                  json={"file_name": "a.yml", "config": {"v": 2}, "overwrite": "no"}), 400)


def test_yaml_is_checked_with_safe_load(client, server):
    unsafe = "!!python/object/apply:os.system ['touch /tmp/pwned']\n"
    for text in [unsafe, "a: [1, 2", "- just\n- a list\n"]:
        response = client.post("/experiment-configs/create", json={"file_name": "bad.yaml", "config": text})
        assert response.status == 400 and response.json()["error"] == "bad_request"
    assert os.listdir(server.spool.configs_dir) == []


def test_yaml_text_is_saved_verbatim(client):
    text = "# comment kept\nexperiment: {name: b}\n"
    client.post("/experiment-configs/create", json={"file_name": "b.yaml", "config": text})
    assert client.get("/experiment-configs/b.yaml?format=yaml").text == text


def test_submitting_with_save_as_reuses_identical_config_and_refuses_a_different_one(client):
    body = {"config": {"experiment": {"name": "s"}}, "save_as": "shared.yaml", "target_host": "gpu-a"}
    assert client.post("/run-simulation", json=body).status == 200
    assert client.post("/run-simulation", json=body).status == 200  # same content: fine
    changed = dict(body, config={"experiment": {"name": "other"}})
    assert client.post("/run-simulation", json=changed).status == 409
    assert client.post("/run-simulation", json=dict(changed, overwrite=True)).status == 200
    assert client.get("/experiment-configs/shared.yaml").json()["config"] == {"experiment": {"name": "other"}}


def test_config_path_is_accepted_with_or_without_prefix(client):
    client.post("/experiment-configs/create", json={"file_name": "p.yaml", "config": {"experiment": {"name": "p",
                                                                                              "run_name": "x y"}}})
    for path in ("p.yaml", "configs/p.yaml"):
        job = client.post("/run-simulation", json={"config_path": path, "target_host": "gpu-a"}).json()
        assert job["config_path"] == "configs/p.yaml" and job["job_name"] == "p-x_y"


def test_editing_a_config_after_submit_leaves_the_queued_jobs_snapshot(client, server):
    client.post("/experiment-configs/create", json={"file_name": "x.yaml", "config": {"experiment": {"name": "v1"}}})
    job = client.post("/run-simulation", json={"config_path": "x.yaml", "target_host": "gpu-a"}).json()
    inline = client.post("/run-simulation", json={"config": {"experiment": {"name": "v1"}}, "save_as": "y.yaml",
                                                  "target_host": "gpu-a"}).json()
    client.post("/experiment-configs/create", json={"file_name": "x.yaml", "config": {"experiment": {"name": "v2"}}})
    client.post("/run-simulation", json={"config": {"experiment": {"name": "v2"}}, "save_as": "y.yaml",
                                         "overwrite": True, "target_host": "gpu-a"})
    for submitted in (job, inline):
        snapshot = os.path.join(server.spool.jobs_dir, submitted["job_id"], "config.yaml")
        with open(snapshot, "rb") as handle:
            data = handle.read()
        assert data == b"experiment:\n  name: v1\n"
        info = client.get(f"/job-info/{submitted['job_id']}").json()
        assert info["config_sha256"] == hashlib.sha256(data).hexdigest() == submitted["config_sha256"]
        assert info["config_path"] == submitted["config_path"]
    assert job["config_path"] == "configs/x.yaml" and inline["config_path"] == "configs/y.yaml"


def test_a_job_without_a_config_has_no_snapshot(client, server):
    job = client.post("/run-simulation", json={"command": "true", "target_host": "gpu-a"}).json()
    assert not os.path.exists(os.path.join(server.spool.jobs_dir, job["job_id"], "config.yaml"))
    assert client.get(f"/job-info/{job['job_id']}").json()["config_sha256"] is None


# ----- links planted in configs/ ----------------------------------------------------------------

@pytest.fixture
def outside_file(tmp_path):
    """A file outside the shared root whose content is a valid config, linked as configs/leak.yaml."""
    path = tmp_path / "outside.yaml"
    path.write_text("secret: true\n")
    return path


@pytest.fixture
def planted(server, outside_file):
    os.symlink(outside_file, os.path.join(server.spool.configs_dir, "leak.yaml"))
    # A link to another config inside configs/ is refused as well: links are never followed.
    with open(os.path.join(server.spool.configs_dir, "real.yaml"), "w") as handle:
        handle.write("real: true\n")
    os.symlink("real.yaml", os.path.join(server.spool.configs_dir, "alias.yaml"))
    return ("leak.yaml", "alias.yaml")


def test_save_as_onto_a_planted_link_cannot_probe_the_file_it_points_at(client, server, planted, outside_file):
    for config in ({"secret": True}, {"secret": False}):  # matching, then not: the answers must not differ
        response = client.post("/run-simulation", json={"config": config, "save_as": "leak.yaml",
                                                        "target_host": "gpu-a"})
        body = assert_json_error(response, 400)
        assert "link" in body["detail"]
    assert outside_file.read_text() == "secret: true\n"
    assert os.listdir(server.spool.queued_dir) == []


def test_links_in_configs_are_refused_by_every_operation(client, server, planted, outside_file):
    assert client.get("/experiment-configs").json() == ["real.yaml"]
    for name in planted:
        assert_json_error(client.get(f"/experiment-configs/{name}"), 400)
        assert_json_error(client.get(f"/experiment-configs/{name}?format=yaml"), 400)
        assert_json_error(client.post("/run-simulation", json={"config_path": name, "target_host": "gpu-a"}), 400)
        for overwrite in (True, False):
            created = client.post("/experiment-configs/create",
                                  json={"file_name": name, "config": {"x": 1}, "overwrite": overwrite})
            assert_json_error(created, 400)
        assert_json_error(client.delete(f"/experiment-configs/{name}"), 400)
        assert os.path.islink(os.path.join(server.spool.configs_dir, name))
    assert outside_file.read_text() == "secret: true\n"
    assert client.get("/experiment-configs/real.yaml").json()["config"] == {"real": True}
    assert os.listdir(server.spool.queued_dir) == []


def test_a_history_folder_planted_as_a_link_is_never_written_through(client, server, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, os.path.join(server.spool.configs_dir, ".history"))
    client.post("/experiment-configs/create", json={"file_name": "a.yaml", "config": {"v": 1}})
    assert_json_error(client.post("/experiment-configs/create", json={"file_name": "a.yaml", "config": {"v": 2}}),
                      400)
    assert_json_error(client.get("/experiment-configs/a.yaml/history"), 400)
    assert os.listdir(elsewhere) == []
    assert client.get("/experiment-configs/a.yaml").json()["config"] == {"v": 1}


# ----- nesting ----------------------------------------------------------------------------------

def nested(levels):
    config = {}
    for _ in range(levels):
        config = {"a": config}
    return config


def test_a_deeply_nested_inline_config_is_400_not_500(client, server):
    deep = nested(500)
    assert_json_error(client.post("/run-simulation", json={"config": deep, "target_host": "gpu-a"}), 400)
    assert_json_error(client.post("/experiment-configs/create", json={"file_name": "d.yaml", "config": deep}), 400)
    text = "a: " + "[" * 1000 + "]" * 1000 + "\n"
    assert_json_error(client.post("/experiment-configs/create", json={"file_name": "d.yaml", "config": text}), 400)
    assert client.get("/experiment-configs").json() == []
    assert os.listdir(server.spool.queued_dir) == []


def test_yaml_aliases_are_measured_once_and_a_self_reference_is_refused(client):
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(9))
    assert client.post("/experiment-configs/create", json={"file_name": "l.yaml", "config": laughs}).status == 200
    job = client.post("/run-simulation", json={"config_path": "l.yaml", "target_host": "gpu-a"})
    assert job.status == 200, job
    loop = "a: &a [*a]\n"
    assert_json_error(client.post("/experiment-configs/create", json={"file_name": "c.yaml", "config": loop}), 400)
