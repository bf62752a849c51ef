"""What a submission's fields become: job names from either config layout, image references."""

import pytest

from .test_bad_input import assert_json_error

SEED_LAYOUT = {"experiment": {"name": "demo", "run_name": "run 1"}}
IMAGE_LAYOUT = {"metadata": {"experiment_name": "citylearn/ppo", "run_name": "seed-22"},
                "simulator": {"dataset_path": "/data/datasets/x/schema.json"}}


@pytest.mark.parametrize("config,job_name,experiment,run", [
    (SEED_LAYOUT, "demo-run_1", "demo", "run 1"),
    (IMAGE_LAYOUT, "citylearn_ppo-seed-22", "citylearn/ppo", "seed-22"),
])
def test_job_name_and_experiment_come_from_either_config_layout(client, config, job_name, experiment, run):
    job = client.post("/run-simulation", json={"config": config, "target_host": "gpu-a"}).json()
    assert job["job_name"] == job_name
    info = client.get(f"/job-info/{job['job_id']}").json()
    assert (info["job_name"], info["experiment_name"], info["run_name"]) == (job_name, experiment, run)


def test_a_config_naming_no_experiment_gets_the_id_as_its_name(client):
    job = client.post("/run-simulation", json={"config": {"algorithm": {"seed": 1}}, "target_host": "gpu-a"}).json()
    assert job["job_name"] == f"job-{job['job_id'][:8]}"


GOOD_IMAGES = ["localhost/busybox:test", "ghcr.io/org/x:1.2", "python:3.11-slim", "busybox",
               "registry.example.com:5000/team/sub/image_name:v1.0-rc1", "library/ubuntu",
               "name@sha256:" + "a" * 64, "ghcr.io/org/x:1.2@sha256:" + "0f" * 32,
               "/scratch/images/Sim_2.sif", "/scratch/images/sim/"]  # paths on a Slurm cluster
BAD_IMAGES = ["busy\x00box", "busybox ", "bad image", "../x", "x/../y", "a/./b", "Busybox", "org/Name", "-x", "x:",
              "x@sha256:short", "x:" + "t" * 200, "x//y", 12, ["x"],
              # an image's path on a Slurm cluster is absolute and of plain names
              "/a/../b", "/a/./b", "/..", "//x", "/a b", "/a\nb", "/" + "a" * 256]


def test_valid_image_references_are_accepted(client):
    for image in GOOD_IMAGES:
        response = client.post("/run-simulation", json={"command": "true", "image": image, "target_host": "gpu-a"})
        assert response.status == 200, (image, response)


def test_image_references_with_nul_spaces_or_path_parts_are_400(client, server):
    for image in BAD_IMAGES:
        response = client.post("/run-simulation", json={"command": "true", "image": image, "target_host": "gpu-a"})
        body = assert_json_error(response, 400)
        assert body.get("field") == "image", (image, body)
