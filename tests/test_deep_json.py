"""Deeply nested JSON bodies get a JSON 400 on every route with a body, never a 500 or a logged traceback."""

import logging
import os

import pytest

from opeva_spool.api.app import MAX_BODY_DEPTH

BODY_ROUTES = [("POST", "/run-simulation"), ("POST", "/experiment-configs/create"),
               ("POST", "/experiment-config/create"), ("POST", "/schema/create"), ("PUT", "/schema/update/lab"),
               ("POST", "/dataset")]


def nested(depth):
    return "[" * depth + "]" * depth


# 5,000 levels overflow the JSON parser itself; 600 parse, inside a field the route reads, and would
# overflow whatever walks the value recursively afterwards (validators, YAML and BSON encoders).
BODIES = {
    "5000 levels": nested(5000),
    "5000 levels in a field": f'{{"file_name": "deep.yaml", "site": "lab", "config": {nested(5000)}}}',
    "600 levels in a field": (f'{{"file_name": "deep.yaml", "target_host": "local", "site": "lab", "name": "deep", '
                              f'"config": {nested(600)}, "schema": {nested(600)}, '
                              f'"citylearn_configs": {nested(600)}}}'),
}


@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
@pytest.mark.parametrize("method, path", BODY_ROUTES)
def test_deeply_nested_body_is_a_json_400_without_a_traceback(client, server, caplog, method, path, body):
    caplog.set_level(logging.DEBUG)
    response = client.request(method, path, body=body, headers={"Content-Type": "application/json"})
    assert response.status == 400, response
    answer = response.json()
    assert answer["error"] == "bad_request" and f"more than {MAX_BODY_DEPTH} levels" in answer["detail"]
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert os.listdir(server.spool.configs_dir) == []


def test_a_body_at_the_depth_limit_is_accepted(client):
    config = {}
    for _ in range(MAX_BODY_DEPTH - 2):  # the body and its "config" add two levels
        config = {"a": config}
    response = client.post("/experiment-configs/create", json={"file_name": "deep.yaml", "config": config})
    assert response.status == 200, response
