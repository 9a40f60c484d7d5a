"""The console entry point's fast path for `status` and `history` (agent.quickstatus, issue 14)
prints byte for byte what the full command line prints, and declines (hands over to it)
whenever the state is not plainly clean or the command line is anything unusual."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import tomllib
from click.testing import CliRunner

from satchel.agent import quickstatus
from satchel.agent.cli import main
from satchel.agent.config import DEFAULT_STATE_DIR, STATE_DIR_ENV
from satchel.agent.install import channel_store
from satchel.bundles.channels import STATE_ACTIVE, STATE_PROBATION
from satchel.bundles.timeutil import format_time, utcnow
from tests.agent.devices import AGENT_SCRIPT, SPAWN_TIMEOUT_S, Device

COMMANDS = [
    ["status"], ["status", "--json"], ["status", "--json", "--json"],
    ["history"], ["history", "--json"], ["history", "--channel", "kws"],
    ["history", "--channel=other", "--json"], ["history", "--limit", "1"],
    ["history", "--limit=2", "--json", "--channel", "kws"],
]


def full(device: Device, *args: str) -> str:
    result = CliRunner().invoke(main, ["--state-dir", str(device.state_dir), *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def fast(device: Device, *args: str, before: tuple[str, ...] = ()) -> str | None:
    return quickstatus.answer([*before, "--state-dir", str(device.state_dir), *args], {})


def assert_same(device: Device) -> None:
    for args in COMMANDS:
        answer = fast(device, *args)
        assert answer is not None, args
        assert answer == full(device, *args), args


def age_active_release(device: Device, channel: str = "kws") -> None:
    """As if the active release had been activated a day ago (its probation is over)."""
    path = device.state_dir / "channels" / channel / "channel.json"
    record = json.loads(path.read_text())
    record["releases"][0]["activated_at"] = format_time(utcnow() - timedelta(days=1))
    path.write_text(json.dumps(record, sort_keys=True, indent=2) + "\n")


@pytest.fixture
def installed(device, make_bundle):
    device.run("install", str(make_bundle(version="1.0.0", sequence=1))).ok()
    device.run("install", str(make_bundle(version="1.1.0", sequence=2))).ok()
    return device


def test_a_device_with_nothing_installed_is_answered_as_the_full_command_does(device):
    assert_same(device)


def test_a_release_on_probation_is_answered_as_the_full_command_does(installed):
    assert installed.status()["channels"]["kws"]["state"] == STATE_PROBATION

    assert_same(installed)


def test_a_release_past_its_probation_is_answered_as_the_full_command_does(installed):
    age_active_release(installed)
    assert installed.status()["channels"]["kws"]["state"] == STATE_ACTIVE

    assert_same(installed)


def test_a_rolled_back_channel_and_a_second_channel_are_answered_alike(installed, make_bundle):
    installed.run("rollback", "kws").ok()
    installed.run("install", str(make_bundle(name="vision", version="2.0.0"))).ok()

    assert_same(installed)


def test_an_interrupted_install_is_left_to_the_full_command_to_recover(installed):
    (installed.state_dir / "channels" / "kws" / "journal.json").write_text("{}")

    assert fast(installed, "status") is None
    assert fast(installed, "history") is None


@pytest.mark.parametrize("leftover", [
    "channels/kws/staging/3-1.2.0/x", "channels/kws/releases/9-9.0.0/x",
    ".history.json.abcd.tmp", "channels/kws/.channel.json.abcd.tmp",
])
def test_leftovers_of_a_killed_install_are_left_to_the_full_command(installed, leftover):
    path = installed.state_dir / leftover
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")

    assert fast(installed, "status", "--json") is None


@pytest.mark.parametrize(("name", "text"), [
    ("channels/kws/channel.json", "{not json"),
    ("channels/kws/channel.json", '{"channel": "kws", "releases": []}'),
    ("device.json", '{"device_id": "dev-1"}'),
])
def test_a_damaged_state_file_is_left_to_the_full_command(installed, name, text):
    (installed.state_dir / name).write_text(text)

    assert fast(installed, "status") is None
    assert fast(installed, "history") is None


def test_a_damaged_history_is_left_to_the_full_command_and_status_still_answered(installed):
    (installed.state_dir / "history.json").write_text("[{")

    assert fast(installed, "history") is None
    assert fast(installed, "status") == full(installed, "status")


def test_an_uninitialised_state_directory_is_left_to_the_full_command(tmp_path):
    assert quickstatus.quick(["--state-dir", str(tmp_path / "none"), "status"]) is None


@pytest.mark.parametrize("argv", [
    ["status", "--help"], ["--help"], ["--version"], ["status", "-h"], ["status", "--verbose"],
    ["history", "--limit", "0"], ["history", "--limit", "x"], ["history", "--limit"],
    ["history", "--channel", "--json"], ["status", "extra"], ["rollback", "kws"], [],
])
def test_unusual_command_lines_are_left_to_the_full_command(installed, argv):
    assert fast(installed, *argv) is None


def test_shell_completion_is_left_to_click(installed):
    argv = ["--state-dir", str(installed.state_dir), "status"]

    assert quickstatus.answer(argv, {"_SATCHEL_AGENT_COMPLETE": "bash_source"}) is None


def test_log_options_are_left_to_the_full_command(installed):
    assert fast(installed, "status", before=("--log-level", "debug")) is None
    assert fast(installed, "history", before=("--log-format=json",)) is None


def test_the_settings_file_option_is_checked_as_click_checks_it(installed, tmp_path):
    settings = tmp_path / "agent.toml"
    settings.write_text("")

    assert fast(installed, "status", before=("--config", str(settings))) == full(
        installed, "status")
    assert fast(installed, "status", before=("--config", str(tmp_path))) is None


def test_text_that_click_would_print_differently_is_left_to_it(installed):
    history = json.loads((installed.state_dir / "history.json").read_text())
    history[-1]["reason"] = "caf\u00e9 \x1b[31mred"
    (installed.state_dir / "history.json").write_text(json.dumps(history))

    assert fast(installed, "history") is None
    assert fast(installed, "history", "--json") == full(installed, "history", "--json")


def test_the_state_directory_comes_from_the_environment_as_in_the_full_command(installed):
    env = {STATE_DIR_ENV: str(installed.state_dir)}

    assert quickstatus.answer(["status"], env) == full(installed, "status")
    assert quickstatus.answer(["--state-dir", str(installed.state_dir), "status"],
                              {STATE_DIR_ENV: "/nonexistent"}) == full(installed, "status")


def test_the_console_script_is_the_fast_path_and_prints_the_same(installed):
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["satchel-agent"] == "satchel.agent.quickstatus:main"

    done = subprocess.run([str(AGENT_SCRIPT), "--state-dir", str(installed.state_dir),
                           "status", "--json"], capture_output=True, text=True,
                          timeout=SPAWN_TIMEOUT_S, check=True)
    assert done.stdout == full(installed, "status", "--json")
    declined = subprocess.run([sys.executable, "-m", "satchel.agent", "--state-dir",
                               str(installed.state_dir), "status", "--bogus"],
                              capture_output=True, text=True, timeout=SPAWN_TIMEOUT_S)
    assert declined.returncode == 2 and "--bogus" in declined.stderr  # click's usage error


def test_the_constants_copied_to_avoid_imports_match_their_sources():
    history = main.commands["history"]
    limit = next(p for p in history.params if p.name == "limit")

    assert quickstatus.STATE_DIR_ENV == STATE_DIR_ENV
    assert Path(quickstatus.DEFAULT_STATE_DIR) == DEFAULT_STATE_DIR
    assert quickstatus.TEMP_SUFFIX == channel_store._TEMP_SUFFIX
    assert (quickstatus.STATE_ACTIVE, quickstatus.STATE_PROBATION) == (STATE_ACTIVE,
                                                                       STATE_PROBATION)
    assert limit.default == quickstatus.HISTORY_DEFAULT_LIMIT
