"""Downloads from datasets/ (no MongoDB needed): jobs write on the share too, so links there are never followed."""

import os

import pytest

import opeva_spool.api.sites
from opeva_spool.api.app import Context, make_app
from opeva_spool.settings import Settings

from .clients import WsgiClient


@pytest.fixture
def datasets(tmp_path):
    root = tmp_path / "share"
    (root / "datasets").mkdir(parents=True)
    client = WsgiClient(make_app(Context(Settings(shared_root=str(root))), [opeva_spool.api.sites]))
    return client, root / "datasets"


@pytest.mark.parametrize("target", ["file", "folder"])
def test_a_dataset_that_links_out_of_the_datasets_folder_is_not_served(datasets, tmp_path, target):
    client, folder = datasets
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwords.csv").write_text("root:hunter2\n")
    os.symlink(outside / "passwords.csv" if target == "file" else outside, folder / "planted")
    response = client.get("/dataset/download/planted")
    assert response.status in (400, 404) and "error" in response.json(), response


def test_a_fifo_in_the_datasets_folder_is_404_not_a_hung_request(datasets):
    client, folder = datasets
    os.mkfifo(folder / "pipe")
    response = client.get("/dataset/download/pipe")
    assert response.status == 404 and response.json()["error"] == "not_found", response


def test_a_plain_file_keeps_its_name_type_and_length(datasets):
    client, folder = datasets
    (folder / "week.csv").write_bytes(b"a,b\n1,2\n")
    response = client.get("/dataset/download/week.csv")
    assert response.status == 200 and response.body == b"a,b\n1,2\n"
    assert response.headers["Content-Disposition"] == 'attachment; filename="week.csv"'
    assert response.headers["Content-Type"].startswith("text/csv") and response.headers["Content-Length"] == "8"


def test_a_folder_is_a_zip_named_after_it(datasets):
    client, folder = datasets
    (folder / "tiny").mkdir()
    (folder / "tiny" / "schema.json").write_text("{}")
    response = client.get("/dataset/download/tiny")
    assert response.status == 200 and response.headers["Content-Type"] == "application/zip"
    assert response.headers["Content-Disposition"] == 'attachment; filename="tiny.zip"'
    assert response.body.startswith(b"PK")


def test_a_plain_file_answers_range_requests_so_a_broken_download_can_resume(datasets):
    client, folder = datasets
    (folder / "week.csv").write_bytes(b"a,b\n1,2\n")
    response = client.get("/dataset/download/week.csv", headers={"Range": "bytes=4-"})
    assert response.status == 206 and response.body == b"1,2\n"
    assert response.headers["Content-Range"] == "bytes 4-7/8"
