"""`satchel-agent --config FILE` (or $SATCHEL_AGENT_CONFIG): the settings file, under the
SATCHEL_AGENT_<NAME> variables, under the command's options. A bad file is refused in one line
naming the key and the file, exit code 2, and the device is left as it was."""

from __future__ import annotations

import shutil
from pathlib import Path

from satchel.agent.config import CONFIG_FILE_ENV

MARGIN_ENV = "SATCHEL_AGENT_DISK_MARGIN_BYTES"


def _settings(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def _huge_margin(device) -> int:
    return shutil.disk_usage(device.state_dir).free * 1000


def test_install_takes_its_disk_margin_from_the_settings_file(device, make_bundle, tmp_path):
    bundle = make_bundle(version="1.0.0", sequence=1)
    toml = _settings(tmp_path, f"[agent]\ndisk_margin_bytes = {_huge_margin(device)}\n")
    tree = device.tree()

    line = device.spawn("--config", str(toml), "install", str(bundle)).refusal()

    assert "margin" in line, line
    assert device.tree() == tree and device.active() is None


def test_the_settings_file_may_be_named_by_the_environment(device, make_bundle, tmp_path):
    toml = _settings(tmp_path, f"disk_margin_bytes = {_huge_margin(device)}\n")  # top level

    line = device.spawn("install", str(make_bundle(version="1.0.0", sequence=1)),
                        env={CONFIG_FILE_ENV: str(toml)}).refusal()

    assert "margin" in line, line
    assert device.active() is None


def test_an_environment_variable_wins_over_the_settings_file(device, make_bundle, tmp_path):
    toml = _settings(tmp_path, f"[agent]\ndisk_margin_bytes = {_huge_margin(device)}\n")

    device.spawn("--config", str(toml), "install", str(make_bundle(version="1.0.0", sequence=1)),
                 env={MARGIN_ENV: "0"}).ok()

    assert device.active() == ("1.0.0", 1)


def test_an_unknown_key_is_refused_naming_it_and_the_file(device, make_bundle, tmp_path):
    toml = _settings(tmp_path, "[agent]\nkeep_release = 2\n")
    tree = device.tree()

    error = device.spawn("--config", str(toml), "install",
                         str(make_bundle(version="1.0.0", sequence=1))).usage_error()

    assert error.splitlines() == [
        f"error: config file {toml}: unknown setting 'keep_release' (did you mean "
        "'keep_releases'?)"
    ]
    assert device.tree() == tree and device.active() is None


def test_a_value_of_the_wrong_type_is_refused_naming_the_key(device, make_bundle, tmp_path):
    toml = _settings(tmp_path, '[agent]\nkeep_releases = "three"\n')
    tree = device.tree()

    error = device.spawn("--config", str(toml), "install",
                         str(make_bundle(version="1.0.0", sequence=1))).usage_error()

    assert error.strip() == f"error: config file {toml}: keep_releases must be a whole number"
    assert device.tree() == tree


def test_an_out_of_range_value_is_refused_with_its_range(device, make_bundle, tmp_path):
    toml = _settings(tmp_path, "[agent]\nkeep_releases = 0\n")
    tree = device.tree()

    error = device.spawn("--config", str(toml), "install",
                         str(make_bundle(version="1.0.0", sequence=1))).usage_error()

    assert error.strip() == (f"error: config file {toml}: keep_releases = 0 is out of range: "
                             "it must be >= 1")
    assert device.tree() == tree


def test_a_missing_settings_file_that_was_named_is_refused(device, tmp_path):
    error = device.spawn("--config", str(tmp_path / "nope.toml"), "enroll", "--manager",
                         "http://127.0.0.1:9", "--token", "x").usage_error()

    assert error.strip() == f"error: config file {tmp_path / 'nope.toml'} does not exist"


def test_a_file_that_is_not_toml_is_refused_in_one_line(device, make_bundle, tmp_path):
    toml = _settings(tmp_path, "keep_releases = = 3\n")

    error = device.spawn("--config", str(toml), "install",
                         str(make_bundle(version="1.0.0", sequence=1))).usage_error()

    assert len(error.splitlines()) == 1 and "is not valid TOML" in error and str(toml) in error
