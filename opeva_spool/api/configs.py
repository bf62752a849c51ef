"""Experiment configs under configs/: list, read, create, delete (plural and singular paths)."""

import os

import bottle
import yaml

from .. import fsio, names
from ..exceptions import BadRequest, NotFound
from ..service import parse_config_text
from .app import json_body, query_flag


def install(app, ctx):
    spool = ctx.spool

    def path_of(file_name):
        return names.safe_join(spool.configs_dir, names.config_file(file_name))

    def list_configs():
        return sorted(name for name in fsio.listdir(spool.configs_dir) if names.CONFIG_FILE.match(name))

    def create():
        body = json_body()
        file_name = body.get("file_name") or body.get("name")
        if not file_name:
            raise BadRequest("'file_name' is required")
        config = body.get("config")
        if isinstance(config, str):
            text = config
            parse_config_text(text, "config")
        elif isinstance(config, dict):
            text = yaml.safe_dump(config, sort_keys=False)
        else:
            raise BadRequest("'config' must be a JSON object or a YAML string")
        overwrite = bool(body.get("overwrite")) or query_flag("overwrite")
        spool.write_config(names.config_file(file_name), text, mode="replace" if overwrite else "create")
        return {"message": f"config {file_name} saved", "file": names.config_file(file_name),
                "config_path": f"configs/{names.config_file(file_name)}"}

    def read(file_name):
        path = path_of(file_name)
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except FileNotFoundError:
            raise NotFound(f"no config {file_name!r}") from None
        if bottle.request.query.get("format") == "yaml":
            bottle.response.content_type = "application/x-yaml"
            return text
        return {"file": names.config_file(file_name), "config": parse_config_text(text, file_name)}

    def delete(file_name):
        path = path_of(file_name)
        try:
            os.unlink(path)
        except FileNotFoundError:
            raise NotFound(f"no config {file_name!r}") from None
        return {"message": f"config {names.config_file(file_name)} deleted"}

    for prefix in ("/experiment-configs", "/experiment-config"):
        app.post(prefix + "/create")(create)
        app.get(prefix + "/<file_name>")(read)
        app.delete(prefix + "/<file_name>")(delete)
    app.get("/experiment-configs")(list_configs)
