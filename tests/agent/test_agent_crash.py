"""SIGKILL the installer at every step; the next command must find the old or the new release,
fully verified (signature and every file re-hashed), never a partial one.

Each case runs the real `satchel-agent install` (or `rollback`) as a subprocess with
$SATCHEL_AGENT_CRASH_AT=OP:STEP, a test-only hook that makes the process SIGKILL itself right
after that step became durable. `status --json` then runs start-up recovery, as every command
does. Power cuts (writes not yet fsynced are lost) are in test_agent_powercut.py.
"""

from __future__ import annotations

import signal

import pytest

from satchel.agent.install.installer import install
from satchel.agent.install.states import INSTALL_STEPS, ROLLBACK_STEPS, SWITCHED

SWITCH_AT = INSTALL_STEPS.index(SWITCHED)


@pytest.fixture
def three_releases(device, make_bundle):
    """kws 1.1, 1.2, 1.3 installed (sequences 1..3); 1.3 active."""
    for seq in (1, 2, 3):
        install(device.state_dir, make_bundle(version=f"1.{seq}", sequence=seq))
    return device


def assert_clean(device, kept: list[str]) -> None:
    """Nothing half-done is left: no journal, nothing staged, only kept releases, no temps."""
    channel = device.state_dir / "channels/kws"
    assert not (channel / "journal.json").exists()
    assert sorted(p.name for p in (channel / "releases").iterdir()) == sorted(kept)
    assert list((channel / "staging").iterdir()) == []
    leftovers = [p for p in device.state_dir.rglob(".*.tmp")]
    assert leftovers == []


@pytest.mark.parametrize("step", INSTALL_STEPS)
def test_install_killed_at_any_step_serves_old_or_new_never_partial(
    three_releases, make_bundle, step
):
    device = three_releases
    generation = device.state.generation()
    killed = device.spawn("install", str(make_bundle(version="1.4", sequence=4)),
                          crash_at=f"install:{step}")
    assert killed.exit_code == -signal.SIGKILL, killed.stderr

    status = device.status()  # start-up recovery runs here

    info = status["channels"]["kws"]
    if INSTALL_STEPS.index(step) < SWITCH_AT:
        assert info["active"] == {"version": "1.3", "sequence": 3}
        assert [r["version"] for r in info["releases"]] == ["1.3", "1.2", "1.1"]
        assert_clean(device, ["1-1.1", "2-1.2", "3-1.3"])
        assert device.history()[-1]["event"] == "undone"
        assert device.state.generation() == generation
    else:
        assert info["active"] == {"version": "1.4", "sequence": 4}
        assert [r["version"] for r in info["releases"]] == ["1.4", "1.3", "1.2"]
        assert_clean(device, ["2-1.2", "3-1.3", "4-1.4"])
        assert [e["event"] for e in device.history()].count("activated") == 4
        assert device.state.generation() > generation
    assert info["state"] == "probation"  # just activated: its health is being watched
    device.verify_active()
    install(device.state_dir, make_bundle(version="1.5", sequence=5))  # not wedged
    assert device.active() == ("1.5", 5)


@pytest.mark.parametrize("step", ROLLBACK_STEPS)
def test_rollback_killed_at_any_step_completes_at_restart(three_releases, step):
    device = three_releases

    killed = device.spawn("rollback", "kws", crash_at=f"rollback:{step}")
    assert killed.exit_code == -signal.SIGKILL, killed.stderr

    info = device.status()["channels"]["kws"]
    assert info["active"] == {"version": "1.2", "sequence": 2}
    assert [r["version"] for r in info["releases"]] == ["1.2", "1.1"]
    assert info["state"] == "rolled-back"
    assert_clean(device, ["1-1.1", "2-1.2"])
    device.verify_active()
    assert [e["event"] for e in device.history()].count("rolled-back") == 1


def test_recovery_killed_in_turn_still_finishes(three_releases, make_bundle):
    device = three_releases
    bundle = make_bundle(version="1.4", sequence=4)
    assert device.spawn("install", str(bundle), crash_at="install:generation").exit_code < 0

    again = device.spawn("status", "--json", crash_at="install:pruned")  # recovery dies too
    assert again.exit_code == -signal.SIGKILL

    assert device.active() == ("1.4", 4)
    assert_clean(device, ["2-1.2", "3-1.3", "4-1.4"])
    device.verify_active()


def test_first_install_killed_before_the_switch_leaves_no_channel(device, make_bundle):
    before = device.status_bytes()
    killed = device.spawn("install", str(make_bundle()), crash_at="install:promoted")
    assert killed.exit_code == -signal.SIGKILL

    assert device.status_bytes() == before
    assert not (device.state_dir / "channels/kws").exists()
