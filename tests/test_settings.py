"""Settings from defaults, a YAML file and the environment, in that order of precedence."""

import pytest

from opeva_spool.exceptions import BadRequest
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
def test_invalid_values_are_refused_with_the_setting_named(environ):
    with pytest.raises(BadRequest):
        load_settings(environ=environ)


def test_unknown_keys_in_the_file_are_refused(tmp_path):
    config = tmp_path / "s.yaml"
    config.write_text("prot: 9000\n")
    with pytest.raises(BadRequest) as raised:
        load_settings(config_file=str(config), environ={})
    assert "prot" in raised.value.detail


def test_every_setting_is_documented():
    table = settings_markdown()
    for name in ("shared_root", "api_token", "mongo_uri", "gpu_ids", "offline_after"):
        assert f"`{name}`" in table
