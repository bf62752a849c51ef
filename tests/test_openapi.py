"""The OpenAPI contract: every route described, the document valid OpenAPI 3.1, and the live server fuzzed
against it by schemathesis (real HTTP on 127.0.0.1) with auth off and on: no 5xx, no reply breaking it."""

import json
import os
import shutil
import subprocess
import sys

import bottle
import pymongo
import pytest
from openapi_spec_validator import validate

from opeva_spool.api import openapi
from opeva_spool.server import Server

from .clients import WsgiClient
from .conftest import demo_config, make_settings, wait_for, wait_for_status

TOKEN = "fuzz-token-0123456789"
# Bounded and seeded, so a run takes about a minute and CI replays the same cases.
FUZZ_SEED = 20261207
FUZZ_EXAMPLES = 25
FUZZ_REQUEST_TIMEOUT = 10
FUZZ_WALL_TIMEOUT = 300
CHECKS = "not_a_server_error,response_schema_conformance,content_type_conformance,status_code_conformance"
# Streams that end only when the client leaves (or the job ends, and no job runs here): a fuzzer waiting
# for their end would wait for its timeout. They stay in the document; this run leaves them out.
ENDLESS_STREAMS = {"/events": None, "/logs/{job_id}": "follow", "/file-logs/{job_id}": "follow"}


def test_every_route_is_described_and_in_the_document(server):
    assert openapi.undescribed(server.app) == []
    document = openapi.document(server.app)
    listed = {(method.upper(), path) for path, operations in document["paths"].items() for method in operations}
    for route in openapi.api_routes(server.app):
        assert (route.method, openapi.openapi_path(route.rule)[0]) in listed


def test_served_document_is_valid_openapi_3_1_with_path_parameters_and_error_replies(server):
    answer = WsgiClient(server.app).get("/openapi.json")
    assert answer.status == 200
    document = answer.json()
    validate(document)  # raises on anything that is not OpenAPI 3.1
    assert document["openapi"].startswith("3.1")
    status = document["paths"]["/status/{job_id}"]["get"]
    [parameter] = status["parameters"]
    assert parameter["in"] == "path" and parameter["name"] == "job_id" and parameter["required"]
    assert status["responses"]["404"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert document["components"]["schemas"]["Error"]["required"] == ["error", "detail"]
    ui_file = document["paths"]["/ui/{path}"]["get"]["parameters"][0]
    assert ui_file["name"] == "path"


def test_a_route_without_a_description_is_named():
    app = bottle.Bottle()
    app.get("/described/<item>")(openapi.describe("described")(lambda item: {}))
    app.post("/forgotten")(lambda: {})
    assert openapi.undescribed(app) == ["POST /forgotten"]
    assert list(openapi.document(app)["paths"]) == ["/described/{item}"]


def _finished_demo_job(tmp_path) -> str:
    """A demo job run to its end by a server's embedded worker on the shared root the fuzzed server uses
    (its result, progress, metrics and log are real replies to check)."""
    server = Server(make_settings(tmp_path)).start()
    try:
        client = WsgiClient(server.app)
        job_id = client.post("/run-simulation", json={"config": demo_config()}).json()["job_id"]
        wait_for_status(client, job_id, "finished", timeout=60)
        return job_id
    finally:
        server.close()


def _fuzzable(document: dict, examples: dict[str, list[str]]) -> dict:
    """The document without the endless streams (see ENDLESS_STREAMS), with ``examples`` (path parameter ->
    values naming things that exist) so that some cases reach past the 404s."""
    for operation in (op for operations in document["paths"].values() for op in operations.values()):
        for parameter in operation["parameters"]:
            if parameter["in"] == "path" and parameter["name"] in examples:
                parameter["schema"] = {**parameter["schema"], "examples": examples[parameter["name"]]}
    for path, parameter in ENDLESS_STREAMS.items():
        if parameter is None:
            document["paths"].pop(path)
        else:
            operation = document["paths"][path]["get"]
            operation["parameters"] = [p for p in operation["parameters"] if p["name"] != parameter]
    return document


def _schemathesis() -> str:
    found = shutil.which("st") or os.path.join(os.path.dirname(sys.executable), "st")
    if not os.path.exists(found):
        pytest.fail("schemathesis is not installed (pip install -e '.[test]')")
    return found


@pytest.fixture
def scratch_mongo(mongo_uri):
    """The session's MongoDB, its databases as the fuzzer found them afterwards (it creates site schemas)."""
    client = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=2000)
    before = set(client.list_database_names())
    yield mongo_uri
    for name in set(client.list_database_names()) - before:
        client.drop_database(name)
    client.close()


@pytest.mark.slow
@pytest.mark.parametrize("auth", ["off", "on"])
def test_schemathesis_finds_no_server_error_and_no_reply_breaking_the_contract(serving, scratch_mongo, tmp_path,
                                                                                 auth):
    token = TOKEN if auth == "on" else ""
    finished = _finished_demo_job(tmp_path)
    # No embedded worker: fuzzed submissions stay queued instead of running fuzzed commands.
    _, port, client = serving(embedded_worker=False, mongo_uri=scratch_mongo, api_token=token)
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    # Things to find: a queued job (no agent serves gpu-a) with a config, and that config.
    saved = client.post("/experiment-configs/create", json={"file_name": "fuzz.yaml", "config": {"a": 1}},
                        headers=headers)
    submitted = client.post("/run-simulation", json={"config_path": "configs/fuzz.yaml", "target_host": "gpu-a"},
                            headers=headers)
    assert saved.status == 200 and submitted.status == 200, (saved.body, submitted.body)
    examples = {"job_id": [finished, submitted.json()["job_id"]], "file_name": ["fuzz.yaml"], "host": ["gpu-a"]}
    document = client.get("/openapi.json").json()
    schema_file = tmp_path / "openapi.json"
    schema_file.write_text(json.dumps(_fuzzable(document, examples)))
    reports = os.path.join(os.environ.get("OPEVA_CI_LOG_DIR") or str(tmp_path), f"schemathesis-auth-{auth}")
    command = [_schemathesis(), "run", str(schema_file), "--url", base, "--checks", CHECKS,
               "--phases", "coverage,fuzzing,stateful", "--max-examples", str(FUZZ_EXAMPLES),
               "--seed", str(FUZZ_SEED), "--request-timeout", str(FUZZ_REQUEST_TIMEOUT), "--workers", "1",
               "--no-shrink", "--report", "junit", "--report-dir", reports]
    if token:
        command += ["--header", f"Authorization: Bearer {token}"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=FUZZ_WALL_TIMEOUT, cwd=tmp_path,
                         env={**os.environ, "SCHEMATHESIS_HOOKS": "", "NO_COLOR": "1"})
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    assert " passed" in run.stdout


def test_api_page_lists_every_operation_of_the_document_and_filters_them(serving, browser):
    from selenium.webdriver.common.by import By

    _, port, client = serving()
    document = client.get("/openapi.json").json()
    operations = sum(len(methods) for methods in document["paths"].values())
    browser.get(f"http://127.0.0.1:{port}/ui/api")
    wait_for(lambda: browser.find_element(By.ID, "api-operations").get_attribute("data-loaded"),
             message="the API page loaded the document")
    cards = browser.find_elements(By.CSS_SELECTOR, "#api-operations details.card")
    assert len(cards) == operations
    assert {card.get_attribute("data-path") for card in cards} == set(document["paths"])
    assert browser.find_element(By.CSS_SELECTOR, "nav a.active").text == "API"
    box = browser.find_element(By.ID, "api-filter")
    box.send_keys("delete /job/")
    wait_for(lambda: [card.get_attribute("data-path")
                      for card in browser.find_elements(By.CSS_SELECTOR, "#api-operations details.card")]
             == ["/job/{job_id}"], message="the filter keeps DELETE /job/{job_id} alone")
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors


# ----- what the fuzzer found ---------------------------------------------------------------------------

def test_a_target_host_list_holding_an_object_is_a_400_naming_the_field(server):
    answer = WsgiClient(server.app).post("/run-simulation", json={"command": "true", "target_host": [{}]})
    assert answer.status == 400 and answer.json()["field"] == "target_host"
