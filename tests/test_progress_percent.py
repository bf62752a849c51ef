"""/progress/{id} answers the percentage under both names clients read: ``progress_pct`` (OPEVA's job
image) and ``percent`` (the original's examples, and its web UI's progress bar)."""

from opeva_spool import fsio

from .conftest import demo_config, wait_for_status


def test_a_finished_jobs_progress_pct_is_also_its_percent(client):
    job_id = client.post("/run-simulation", json={"config": demo_config(episodes=1, steps=4)}).json()["job_id"]
    wait_for_status(client, job_id, "finished")
    progress = client.get(f"/progress/{job_id}").json()
    assert progress["progress_pct"] == 100.0 and progress["percent"] == 100.0


def test_a_file_with_only_one_name_gets_the_other_and_a_file_with_both_is_left_as_written(server, client):
    job_id = client.post("/run-simulation", json={"command": "sleep 30"}).json()["job_id"]
    wait_for_status(client, job_id, "running")
    path = server.spool.folder(job_id).progress
    try:
        fsio.atomic_write_json(path, {"percent": 40, "episode": 2}, durable=False)
        assert client.get(f"/progress/{job_id}").json() == {"percent": 40, "progress_pct": 40, "episode": 2}
        fsio.atomic_write_json(path, {"progress_pct": 12.5}, durable=False)
        assert client.get(f"/progress/{job_id}").json() == {"progress_pct": 12.5, "percent": 12.5}
        both = {"progress_pct": 50.0, "percent": 0.5}  # a writer that means two things keeps both
        fsio.atomic_write_json(path, both, durable=False)
        assert client.get(f"/progress/{job_id}").json() == both
        fsio.atomic_write_json(path, {"percent": "soon"}, durable=False)  # not a number: nothing to copy
        assert client.get(f"/progress/{job_id}").json() == {"percent": "soon"}
        assert fsio.read_json_object(path) == {"percent": "soon"}  # the job's file itself is never rewritten
    finally:
        client.post(f"/stop/{job_id}")
        wait_for_status(client, job_id, "stopped", timeout=30)
