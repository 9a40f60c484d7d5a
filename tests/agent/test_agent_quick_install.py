"""The console entry point runs the plain cases of `install` without click (agent.quickinstall,
issue 14): what it prints, its exit code, what it does to the device and the events it queues
are the full command line's; anything unusual on the command line goes to click."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from satchel.agent.config import CONFIG_FILE_ENV, DEFAULT_STATE_DIR, STATE_DIR_ENV
from satchel.agent.provision import init_device
from satchel.agent.quickstatus import install_args
from tests.agent.devices import AGENT_SCRIPT, DEVICE_CLASS, SPAWN_TIMEOUT_S, Device
from tests.factory.outcome import Outcome

FULL = ("import sys; from satchel.agent.cli import main; sys.argv[0] = 'satchel-agent'; "
        "main()")
# Figures that differ from run to run: timings, and the events' ids and times.
_TIMED = re.compile(r"(p95 )[0-9.e+-]+( ms)")


def _run(command: list[str], *args: str) -> Outcome:
    env = {k: v for k, v in os.environ.items()
           if k not in (STATE_DIR_ENV, CONFIG_FILE_ENV) and not k.startswith("SATCHEL_AGENT_")}
    done = subprocess.run([*command, *args], capture_output=True, text=True, env=env,
                          timeout=SPAWN_TIMEOUT_S, check=False)
    return Outcome(done.returncode, done.stdout, done.stderr)


def fast(device: Device, *args: str) -> Outcome:
    return _run([str(AGENT_SCRIPT)], "--state-dir", str(device.state_dir), *args)


def full(device: Device, *args: str) -> Outcome:
    return _run([sys.executable, "-c", FULL], "--state-dir", str(device.state_dir), *args)


def _plain(outcome: Outcome, device: Device) -> tuple[int, str, str]:
    def text(s: str) -> str:
        return _TIMED.sub(r"\1T\2", s.replace(str(device.state_dir), "STATE"))

    return outcome.exit_code, text(outcome.stdout), text(outcome.stderr)


def _json(outcome: Outcome) -> dict:
    """The --json result without its measured figures (times, latency, memory)."""
    result = json.loads(outcome.stdout)
    result.pop("seconds", None)
    for test in (result.get("report") or {}).get("tests", []):
        for key in ("load_ms", "latency_ms", "memory_mb"):
            test.pop(key, None)
    return result


def _events(device: Device) -> list[dict]:
    """The queued events, without what differs from run to run (ids, times, figures)."""
    lines = (device.state_dir / "events" / "queue.jsonl").read_text().splitlines()
    events = [json.loads(line).get("event") for line in lines]
    return [{k: v for k, v in e.items() if k not in ("id", "time", "figures")}
            for e in events if e]


@pytest.fixture
def twin(tmp_path, keys):
    """A second device set up as `device` is, for the full command line."""
    state_dir = tmp_path / "twin"
    init_device(state_dir, keys.root_json, "dev-1", DEVICE_CLASS)
    return Device(state_dir)


def test_an_install_prints_queues_and_activates_as_the_full_command_does(
        device, twin, make_bundle):
    first = make_bundle(version="1.0.0", sequence=1)
    second = make_bundle(version="1.1.0", sequence=2)

    for args in (["install", str(first)], ["install", "--json", str(second)],
                 ["install", str(first)], ["install", str(second), "--json"]):
        ours, theirs = fast(device, *args), full(twin, *args)
        assert _plain(ours, device)[0] == _plain(theirs, twin)[0], (ours, theirs)
        if "--json" in args and ours.stdout:
            assert _json(ours) == _json(theirs)
        else:
            assert _plain(ours, device) == _plain(theirs, twin)
    ours, theirs = device.status()["channels"]["kws"], twin.status()["channels"]["kws"]
    assert ours["active"]["version"] == theirs["active"]["version"] == "1.1.0"
    assert [r["version"] for r in ours["releases"]] == [r["version"] for r in theirs["releases"]]
    assert len(_events(device)) > 4
    assert _events(device) == _events(twin)


def test_refusals_are_the_full_commands_lines(device, twin, tmp_path, make_bundle):
    garbage = tmp_path / "garbage.satchel"
    garbage.write_bytes(b"not a bundle")
    missing = tmp_path / "missing.satchel"
    uninitialised = Device(tmp_path / "nothing-here")

    for target, other, args in [
        (device, twin, ["install", str(garbage)]),
        (device, twin, ["install", "--json", str(garbage)]),
        (device, twin, ["install", str(missing)]),
        (uninitialised, uninitialised, ["install", str(make_bundle())]),
    ]:
        ours, theirs = fast(target, *args), full(other, *args)
        ours.refusal()
        assert _plain(ours, target) == _plain(theirs, other), args


def test_a_bad_settings_file_is_a_usage_error_either_way(device, twin, tmp_path, make_bundle):
    settings = tmp_path / "agent.toml"
    settings.write_text("no_such_setting = 1\n")
    bundle = make_bundle()

    ours = fast(device, "--config", str(settings), "install", str(bundle))
    theirs = full(twin, "--config", str(settings), "install", str(bundle))

    assert ours.exit_code == theirs.exit_code == 2
    assert _plain(ours, device) == _plain(theirs, twin)
    assert "kws" not in device.status()["channels"]


@pytest.mark.parametrize("argv", [
    ["install", "B"], ["install", "--json", "B"], ["install", "B", "--json"],
    ["--state-dir", "S", "install", "B"], ["--state-dir=S", "--config", "C", "install", "B"],
])
def test_plain_installs_take_the_fast_path(tmp_path, argv):
    (tmp_path / "S").mkdir()
    (tmp_path / "B").write_bytes(b"")
    (tmp_path / "C").write_text("")
    argv = [str(tmp_path / a) if a in ("B", "S", "C") else a.replace("=S", f"={tmp_path}/S")
            for a in argv]

    parsed = install_args(argv, {STATE_DIR_ENV: str(tmp_path / "S")})

    assert parsed is not None
    state_dir, config_file, bundle, as_json = parsed
    assert (state_dir, bundle, as_json) == (str(tmp_path / "S"), str(tmp_path / "B"),
                                            "--json" in argv)
    assert config_file == (str(tmp_path / "C") if "--config" in argv else None)


def test_the_state_dir_comes_from_the_environment_then_the_default(tmp_path):
    (tmp_path / "B").write_bytes(b"")
    bundle = str(tmp_path / "B")

    assert install_args(["install", bundle], {STATE_DIR_ENV: str(tmp_path)})[0] == str(tmp_path)
    if not Path(DEFAULT_STATE_DIR).exists():
        assert install_args(["install", bundle], {STATE_DIR_ENV: ""})[0] == str(DEFAULT_STATE_DIR)


@pytest.mark.parametrize("argv", [
    ["install"], ["install", "--help"], ["install", "-h"], ["--help", "install", "B"],
    ["install", "B", "B"], ["install", "--", "B"], ["install", "-"], ["install", "--jsonx", "B"],
    ["--log-level", "debug", "install", "B"], ["--version"], ["status"], ["rollback", "kws"],
    ["install", "DIR"], ["--state-dir", "B", "install", "B"], ["--config", "DIR", "install", "B"],
    ["install", "bündel"], ["--state-dir", "", "install", "B"],
])
def test_anything_unusual_goes_to_click(tmp_path, argv):
    (tmp_path / "DIR").mkdir()
    (tmp_path / "B").write_bytes(b"")
    argv = [str(tmp_path / a) if a in ("B", "DIR") else a for a in argv]

    assert install_args(argv, {STATE_DIR_ENV: str(tmp_path)}) is None


def test_shell_completion_goes_to_click(tmp_path):
    (tmp_path / "B").write_bytes(b"")

    assert install_args(["install", str(tmp_path / "B")],
                        {"_SATCHEL_AGENT_COMPLETE": "bash_source"}) is None
