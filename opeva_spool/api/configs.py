"""Experiment configs over HTTP (plural and singular paths); the config store does the work."""

import bottle

from .. import names
from ..configs import CONFIGS_PREFIX, WriteMode
from ..exceptions import BadRequest
from .app import json_body
from .openapi import BOOLEAN, JSON, MESSAGE, STRING, array, describe, nullable, obj

FALSE_WORDS = ("0", "false", "no", "off")
OVERWRITE_QUERY = {"overwrite": {**STRING, "description": "0/false/no/off: refuse to replace an existing config"}}


def _overwrite(body):
    """False only when the request says so (body ``"overwrite": false`` or ``?overwrite=0``):
    saving an existing name replaces it by default, as the original API (and its web UI) did."""
    value = body.get("overwrite")
    if value is not None:
        if not isinstance(value, bool):
            raise BadRequest("'overwrite' must be true or false", field="overwrite")
        return value
    return bottle.request.query.get("overwrite", "").lower() not in FALSE_WORDS


def install(app, ctx):
    store = ctx.jobs.configs

    @describe("Save a config (replaces one of the same name unless overwrite is false)", query=OVERWRITE_QUERY,
              body=obj({"file_name": STRING, "name": {**STRING, "description": "the same as file_name"},
                        "config": {"type": ["object", "string"], "description": "a JSON object or YAML text"},
                        "overwrite": BOOLEAN}),
              reply=obj({**MESSAGE["properties"], "file": STRING, "config_path": STRING, "replaced": BOOLEAN,
                         "history_path": nullable("string")}, ["message", "file", "config_path"]),
              statuses=(409, 503, 507))
    def create():
        body = json_body()
        file_name = body.get("file_name") or body.get("name")
        if not file_name:
            raise BadRequest("'file_name' is required")
        file_name = names.config_file(file_name)
        config = body.get("config")
        if isinstance(config, str):
            text = config
            store.parse(text, "config")
        elif isinstance(config, dict):
            text = store.serialise(config)
        else:
            raise BadRequest("'config' must be a JSON object or a YAML string")
        saved = store.write(file_name, text, WriteMode.REPLACE if _overwrite(body) else WriteMode.CREATE)
        return {"message": f"config {file_name} {'replaced' if saved.replaced else 'saved'}", "file": file_name,
                "config_path": CONFIGS_PREFIX + file_name, "replaced": saved.replaced,
                "history_path": saved.history_path}

    @describe("A config, parsed (or as its YAML text with format=yaml)", statuses=(400, 404, 503),
              query={"format": {"type": "string", "enum": ["json", "yaml"]}},
              reply=obj({"file": STRING, "config": obj()}, ["file", "config"]),
              reply_type=(JSON, "application/x-yaml"))
    def read(file_name):
        if bottle.request.query.get("format") == "yaml":
            bottle.response.content_type = "application/x-yaml"
            return store.read_text(file_name)
        return {"file": names.config_file(file_name), "config": store.read(file_name)}

    @describe("Paths of the config's earlier contents (configs/.history/...), oldest first", statuses=(400, 503),
              reply=obj({"file": STRING, "history": array(STRING)}, ["file", "history"]))
    def history(file_name):
        return {"file": names.config_file(file_name), "history": store.history(file_name)}

    @describe("Delete a config (its last content is kept in its history)", statuses=(400, 404, 503),
              reply=obj({**MESSAGE["properties"], "history_path": nullable("string")}, ["message"]))
    def delete(file_name):
        kept = store.delete(file_name)
        return {"message": f"config {names.config_file(file_name)} deleted", "history_path": kept}

    for prefix in ("/experiment-configs", "/experiment-config"):
        app.post(prefix + "/create")(create)
        app.get(prefix + "/<file_name>")(read)
        app.get(prefix + "/<file_name>/history")(history)
        app.delete(prefix + "/<file_name>")(delete)
    app.get("/experiment-configs")(describe("Config file names, sorted", reply=array(STRING))(lambda: store.list()))
