"""Settings from defaults, a YAML file and the environment, in that order of precedence."""

import os
import subprocess
import sys

import pytest

from opeva_spool.exceptions import SettingsError
from opeva_spool.settings import DEFAULT_SHARED_ROOT, load_settings, settings_markdown


def test_defaults_need_nothing():
    settings = load_settings(environ={})
    assert settings.shared_root == DEFAULT_SHARED_ROOT and settings.port == 8000 and settings.hosts == ("local",)


def test_environment_overrides_yaml_and_values_are_typed(tmp_path):
    config = tmp_path / "s.yaml"
    config.write_text("port: 9000\nhosts: [local, gpu-1]\nobserver: polling\ndocker_env: {A: 1}\n")
    settings = load_settings(config_file=str(config), environ={"OPEVA_PORT": "9100", "OPEVA_GPU_IDS": "0, 1",
                                                               "OPEVA_EMBEDDED_WORKER": "false"})
    assert settings.port == 9100 and settings.hosts == ("local", "gpu-1") and settings.observer == "polling"
    assert settings.gpu_ids == ("0", "1") and settings.embedded_worker is False and settings.docker_env == {"A": "1"}


@pytest.mark.parametrize("environ", [{"OPEVA_PORT": "eighty"}, {"OPEVA_OBSERVER": "magic"},
                                     {"OPEVA_RUNTIME": "vm"}, {"OPEVA_DOCKER_ENV": "[1, 2]"},
                                     {"OPEVA_JOB_USER": "opeva"}, {"OPEVA_JOB_USER": "1000"}])
def test_invalid_values_are_a_settings_error_naming_the_setting(environ):
    with pytest.raises(SettingsError) as raised:
        load_settings(environ=environ)
    assert repr(next(iter(environ))[len("OPEVA_"):].lower()) in raised.value.detail


def test_unknown_keys_in_the_file_are_refused(tmp_path):
    config = tmp_path / "s.yaml"
    config.write_text("prot: 9000\n")
    with pytest.raises(SettingsError) as raised:
        load_settings(config_file=str(config), environ={})
    assert "prot" in raised.value.detail


@pytest.mark.parametrize("content", [None, "port: [9000\n", b"\xff\xfe", "- just\n- a list\n"])
def test_a_missing_or_malformed_settings_file_is_a_settings_error(tmp_path, content):
    config = tmp_path / "s.yaml"
    if isinstance(content, bytes):
        config.write_bytes(content)
    elif content is not None:
        config.write_text(content)
    with pytest.raises(SettingsError) as raised:
        load_settings(config_file=str(config), environ={})
    assert str(config) in raised.value.detail and "\n" not in raised.value.detail


@pytest.mark.parametrize("args, environ", [(["--config", "/nonexistent/server.yaml"], {}),
                                          ([], {"OPEVA_OBSERVER": "magic"}),
                                          ([], {"OPEVA_DOCKER_ENV": "{a: [1"})])
def test_the_command_line_prints_a_settings_error_as_one_line(args, environ):
    env = {**os.environ, **environ}
    env.pop("OPEVA_CONFIG", None)
    done = subprocess.run([sys.executable, "-m", "opeva_spool.cli", "settings", *args], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("opeva-spool: ") and done.stderr.count("\n") == 1 and done.stdout == ""


def test_every_setting_is_documented():
    table = settings_markdown()
    for name in ("shared_root", "api_token", "mongo_uri", "gpu_ids", "offline_after"):
        assert f"`{name}`" in table
