"""One loader for both sides' settings (`bundles.configfile`): the file under the environment
under the options; every refusal one line naming the key and where it was given."""

from __future__ import annotations

from pathlib import Path

import pytest

from satchel.agent.config import (
    CONFIG_FILE_ENV,
    DEFAULT_CONFIG,
    AgentConfig,
    TFLiteDelegate,
    config_file_path,
    config_from_env,
    load_agent_config,
)
from satchel.bundles.errors import ConfigError
from satchel.manager.config import ManagerConfig, load_config
from satchel.manager.errors import UsageError


def _toml(tmp_path: Path, text: str, name: str = "settings.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_file_then_environment_then_options_each_win(tmp_path):
    toml = _toml(tmp_path, "[agent]\nretry_attempts = 7\nlock_wait_s = 5\nlisten = 'h:1'\n")
    env = {"SATCHEL_AGENT_LOCK_WAIT_S": "9", "SATCHEL_AGENT_LISTEN": "e:2"}

    config = load_agent_config(toml, env, listen="o:3")

    assert (config.retry_attempts, config.lock_wait_s, config.listen) == (7, 9.0, "o:3")
    assert config.keep_releases == DEFAULT_CONFIG.keep_releases


def test_the_settings_may_sit_at_the_top_level_of_the_file(tmp_path):
    config = load_agent_config(_toml(tmp_path, "keep_releases = 5\n"), {})

    assert config.keep_releases == 5


def test_the_default_file_is_read_only_when_present_and_a_named_one_must_exist(tmp_path):
    assert config_file_path(None, {}) == (Path("/etc/satchel-agent/agent.toml"), False)
    assert config_file_path(None, {CONFIG_FILE_ENV: "/x.toml"}) == (Path("/x.toml"), True)
    with pytest.raises(ConfigError, match=r"config file .*nope.toml does not exist"):
        load_agent_config(tmp_path / "nope.toml", {})


@pytest.mark.parametrize(("text", "message"), [
    ("keep_releases = 0", "keep_releases = 0 is out of range: it must be >= 1"),
    ("keep_releases = 2.5", "keep_releases must be a whole number"),
    ("lock_wait_s = true", "lock_wait_s must be a number"),
    ("lock_wait_s = nan", "lock_wait_s = nan is out of range: it must be a finite number"),
    ("backoff_jitter = 1.5", "backoff_jitter = 1.5 is out of range: it must be >= 0 and <= 1"),
    ("smoke_isolation = 'fork'", 'smoke_isolation = "fork" is out of range: it must be one of '
                                 "auto, in-process, child"),
    ("onnx_providers = 'CPUExecutionProvider'", "onnx_providers must be a list of strings"),
    ("onnx_provider_options = {CPUExecutionProvider = {threads = 2}}",
     "onnx_provider_options .CPUExecutionProvider .threads must be a string"),
    ("tflite_delegates = [{options = {}}]", "tflite_delegates [0] needs 'path'"),
    ("tflite_delegates = [{path = '/x.so', opts = {}}]",
     "tflite_delegates [0] has an unknown setting 'opts' (did you mean 'options'?)"),
    ("pool = 3", "unknown setting 'pool'"),
])
def test_a_bad_value_in_the_file_is_refused_naming_the_key_and_the_file(tmp_path, text, message):
    toml = _toml(tmp_path, f"[agent]\n{text}\n")

    with pytest.raises(ConfigError) as refused:
        load_agent_config(toml, {})

    assert str(refused.value) == f"config file {toml}: {message}"


@pytest.mark.parametrize(("env", "message"), [
    ({"SATCHEL_AGENT_POLL_S": "soon"}, "SATCHEL_AGENT_POLL_S='soon' is not a valid number"),
    ({"SATCHEL_AGENT_KEEP_RELEASES": "0"},
     "SATCHEL_AGENT_KEEP_RELEASES: keep_releases = 0 is out of range: it must be >= 1"),
    ({"SATCHEL_AGENT_TFLITE_XNNPACK": "maybe"},
     "SATCHEL_AGENT_TFLITE_XNNPACK='maybe' is not a valid boolean"),
    ({"SATCHEL_AGENT_BACKOFF_BASE_S": "500"},
     "SATCHEL_AGENT_BACKOFF_BASE_S: backoff_base_s must not exceed backoff_max_s"),
])
def test_a_bad_environment_value_is_refused_naming_the_variable(env, message):
    with pytest.raises(ConfigError) as refused:
        load_agent_config(None, env)

    assert str(refused.value) == message


def test_a_cross_setting_refusal_names_the_file_that_set_the_key(tmp_path):
    toml = _toml(tmp_path, "[agent]\nmin_poll_interval_s = 10.0\nmax_poll_interval_s = 5.0\n")

    with pytest.raises(ConfigError) as refused:
        load_agent_config(toml, {})

    assert str(refused.value) == (f"config file {toml}: min_poll_interval_s must not exceed "
                                  "max_poll_interval_s")


def test_environment_lists_and_tables_are_words_or_toml():
    config = load_agent_config(None, {
        "SATCHEL_AGENT_ONNX_PROVIDERS": "CUDAExecutionProvider, CPUExecutionProvider",
        "SATCHEL_AGENT_ONNX_PROVIDER_OPTIONS": '{CUDAExecutionProvider = {device_id = "0"}}',
        "SATCHEL_AGENT_TFLITE_DELEGATES": '[{path = "/usr/lib/libvx_delegate.so"}]',
        "SATCHEL_AGENT_USB_ROOTS": '["/media", "/mnt/usb"]',
        "SATCHEL_AGENT_TFLITE_XNNPACK": "off",
    })

    assert config.onnx_providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert config.onnx_provider_options == {"CUDAExecutionProvider": {"device_id": "0"}}
    assert config.tflite_delegates == (TFLiteDelegate("/usr/lib/libvx_delegate.so"),)
    assert config.usb_roots == ("/media", "/mnt/usb")
    assert config.tflite_xnnpack is False


def test_an_empty_variable_is_unset_and_the_short_poll_name_still_works():
    assert config_from_env({"SATCHEL_AGENT_DISK_MARGIN_BYTES": ""}) == AgentConfig()
    assert config_from_env({"SATCHEL_AGENT_POLL_S": "0.5"}).poll_interval_s == 0.5


def test_a_bad_option_value_is_refused_naming_the_option():
    with pytest.raises(ConfigError, match=r"^option listen = 'nowhere' is not HOST:PORT$"):
        load_agent_config(None, {}, listen="nowhere")


def test_the_manager_reads_the_same_way(tmp_path):
    toml = _toml(tmp_path, "[manager]\nport = 9000\nworkers = 2\nlog_requests = false\n",
                 "manager.toml")

    config = load_config(toml, {"SATCHEL_WORKERS": "3", "SATCHEL_CONFIG": "/ignored"},
                         threads=2)

    assert (config.port, config.workers, config.threads, config.log_requests) == (9000, 3, 2,
                                                                                  False)
    assert load_config(None, {"SATCHEL_CONFIG": str(toml)}).port == 9000


@pytest.mark.parametrize(("text", "message"), [
    ("pool = 3", "unknown setting 'pool'"),
    ("port = 70000", "port = 70000 is out of range: it must be >= 0 and <= 65535"),
    ("server = 'apache'", 'server = "apache" is out of range: it must be one of auto, '
                          "granian, waitress"),
    ("poll_jitter = 1.0", "poll_jitter = 1.0 is out of range: it must be >= 0 and < 1"),
    ("check_schema = 'yes'", "check_schema must be true or false"),
])
def test_the_manager_refuses_a_bad_file_naming_the_key_and_the_file(tmp_path, text, message):
    toml = _toml(tmp_path, f"[manager]\n{text}\n", "manager.toml")

    with pytest.raises(UsageError) as refused:
        load_config(toml, {})

    assert str(refused.value) == f"config file {toml}: {message}"


def test_the_manager_defaults_sit_below_the_file(tmp_path):
    toml = _toml(tmp_path, f"data_dir = '{tmp_path / 'from-file'}'\n", "manager.toml")

    from_file = load_config(toml, {}, defaults={"data_dir": tmp_path / "cli-default"})
    without = load_config(None, {}, defaults={"data_dir": tmp_path / "cli-default"})

    assert from_file.data_dir == tmp_path / "from-file"
    assert without.data_dir == tmp_path / "cli-default"
    assert isinstance(from_file, ManagerConfig)
