"""The ``opeva-spool`` command's edges, run as a real subprocess: refusals, unreachable servers, help, secrets."""

import argparse
import json
import os
import subprocess
import sys

import pytest

from opeva_spool.cli import apply_overrides, mask_uri_password, parser
from opeva_spool.client import Target, resolve, write_config_file
from opeva_spool.exceptions import BadRequest
from opeva_spool.spool import Spool

from .clients import free_port
from .conftest import assert_one_line_error
from .processes import PROJECT_ROOT, spool_env


def run_cli(*argv, env):
    return subprocess.run([sys.executable, "-m", "opeva_spool.cli", *argv], env=env, cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def share(tmp_path):
    root = tmp_path / "share"
    Spool(str(root)).ensure_layout()
    return root


def test_drain_refuses_a_root_that_is_not_a_share_and_creates_nothing(tmp_path):
    root = tmp_path / "opt" / "opeva_shared_data"
    line = assert_one_line_error(run_cli("drain", "--host", "local", "--root", str(root),
                                           env=spool_env(root, tmp_path)))
    assert "not an initialised shared root" in line
    assert not (tmp_path / "opt").exists()
    # An existing directory that is not a share is left as it was, too.
    root.mkdir(parents=True)
    assert_one_line_error(run_cli("drain", "--host", "local", "--root", str(root), env=spool_env(root, tmp_path)))
    assert os.listdir(root) == []


def test_drain_refuses_an_unknown_host_and_creates_nothing(share, tmp_path):
    before = sorted(os.listdir(share / "spool"))
    line = assert_one_line_error(run_cli("drain", "--host", "gpu-typo", env=spool_env(share, tmp_path)))
    assert "unknown host 'gpu-typo'" in line and "local" in line
    assert sorted(os.listdir(share / "spool")) == before


def test_drain_of_a_known_host_writes_and_lifts_its_drain_file(share, tmp_path):
    env = spool_env(share, tmp_path, hosts="local,gpu-a")
    result = run_cli("drain", "--host", "gpu-a", env=env)
    assert result.returncode == 0 and "drain requested" in result.stdout
    assert os.path.exists(Spool(str(share)).drain_path("gpu-a"))
    # A host known only from the share (its agent ran here) counts as well.
    os.makedirs(Spool(str(share)).running_dir("gpu-z"))
    assert run_cli("drain", "--host", "gpu-z", env=env).returncode == 0
    assert run_cli("drain", "--host", "gpu-a", "--undo", env=env).returncode == 0
    assert not os.path.exists(Spool(str(share)).drain_path("gpu-a"))


@pytest.mark.parametrize("argv", [["submit", "demo.yaml"], ["status", "0123"]])
def test_client_command_against_an_unreachable_server_prints_one_line(argv, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    line = assert_one_line_error(run_cli(*argv, "--server", url, env=spool_env(tmp_path, tmp_path)))
    assert f"cannot reach the server at {url}" in line


def test_settings_masks_the_mongo_uri_password_like_the_token(tmp_path):
    env = spool_env(tmp_path, tmp_path, mongo_uri="mongodb://opeva:s3cret@db1:27017,db2:27017/site?authSource=admin",
                    api_token="tok")
    result = run_cli("settings", env=env)
    assert result.returncode == 0 and "s3cret" not in result.stdout and "tok\"" not in result.stdout
    shown = json.loads(result.stdout)
    assert shown["mongo_uri"] == "mongodb://opeva:***@db1:27017,db2:27017/site?authSource=admin"
    assert shown["api_token"] == "***"


def test_mask_keeps_a_uri_without_password_as_it_is():
    assert mask_uri_password("") == ""
    assert mask_uri_password("mongodb://db:27017/x") == "mongodb://db:27017/x"
    assert mask_uri_password("mongodb://user@db/x") == "mongodb://user@db/x"
    assert mask_uri_password("mongodb://u:p%40ss@db/x") == "mongodb://u:***@db/x"


def subcommands(command_parser, prefix=""):
    """(name, parser) of every command and sub-command, e.g. ("configs push", ...)."""
    for action in command_parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield f"{prefix}{name}", child
                yield from subcommands(child, f"{prefix}{name} ")


def test_every_option_has_help_that_names_its_default(tmp_path):
    for name, command in subcommands(parser()):
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{name} {action.dest} has no help"
            if action.option_strings:
                assert "default" in action.help or action.required, f"{name} {action.dest}: {action.help!r}"
    assert "(default: INFO)" in run_cli("serve", "--help", env=spool_env(tmp_path, tmp_path)).stdout


def test_overrides_set_nested_keys_with_yaml_values():
    config = {"demo": {"episodes": 2}, "name": "x"}
    assert apply_overrides(config, ["demo.episodes=5", "demo.lr=1e-3", "demo.deep.flag=true", "name=",
                                    "tags=[a, b]", "note=a: b: c"]) == {
        "demo": {"episodes": 5, "lr": 1e-3, "deep": {"flag": True}}, "name": "", "tags": ["a", "b"],
        "note": "a: b: c"}
    for bad in ("demo", "=1", "demo..x=1", "name.x=1"):
        with pytest.raises(BadRequest):
            apply_overrides({"name": "x"}, [bad])


def test_server_and_token_come_from_flag_then_environment_then_file_then_default(tmp_path):
    path = str(tmp_path / "client.yaml")
    assert resolve(config_path=path, environ={}) == Target("http://127.0.0.1:8000", "", path,
                                                          {"server": "default", "token": "default"})
    write_config_file(path, "http://file:1/", "file-token")
    assert resolve(config_path=path, environ={}).url == "http://file:1"
    environ = {"OPEVA_SERVER": "http://env:2", "OPEVA_TOKEN": "env-token"}
    target = resolve(config_path=path, environ=environ)
    assert (target.url, target.token, target.sources["server"]) == ("http://env:2", "env-token", "$OPEVA_SERVER")
    target = resolve("https://flag:3/prefix", "flag-token", path, environ)
    assert (target.url, target.token, target.sources["token"]) == ("https://flag:3/prefix", "flag-token", "--token")
    # The default file: $XDG_CONFIG_HOME, else ~/.config.
    assert resolve(environ={"XDG_CONFIG_HOME": str(tmp_path / "xdg")}).config_path == str(
        tmp_path / "xdg" / "opeva-spool" / "client.yaml")
    # Saving one key keeps the other; "" removes one.
    write_config_file(path, None, "")
    assert resolve(config_path=path, environ={}) == Target("http://file:1", "", path,
                                                          {"server": path, "token": "default"})
