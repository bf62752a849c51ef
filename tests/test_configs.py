"""Experiment configs: create, list, read, delete, on the plural and singular paths."""

import os

import pytest


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
    assert os.listdir(server.spool.configs_dir) == []


def test_creating_an_existing_config_is_409_unless_overwrite(client):
    client.post("/experiment-configs/create", json={"file_name": "a.yml", "config": {"v": 1}})
    clash = client.post("/experiment-configs/create", json={"file_name": "a.yml", "config": {"v": 2}})
    assert clash.status == 409
    assert client.get("/experiment-configs/a.yml").json()["config"] == {"v": 1}
    replaced = client.post("/experiment-configs/create", json={"file_name": "a.yml", "config": {"v": 2},
                                                               "overwrite": True})
    assert replaced.status == 200
    assert client.get("/experiment-configs/a.yml").json()["config"] == {"v": 2}


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
