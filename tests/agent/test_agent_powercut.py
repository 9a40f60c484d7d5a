"""Power cuts: at every fsync boundary of an install or rollback, writes not yet fsynced are
lost; start-up recovery on what is left must serve the old or the new release, fully
verified, never a partial one.

How the disk after a power cut is made (honestly, and without a VM): the real
`satchel-agent install` runs once as a subprocess with a test-only fsync tracer loaded
through `sitecustomize` (tests/agent/fstrace/). After each real fsync the tracer records
what that fsync made durable: a file's full content, or a directory's entries, with inodes
identified by (inode number, generation). `tests/agent/powercut.py` then replays the trace
from a snapshot of the state directory taken before the run, under the POSIX promise and
nothing more: file content survives as of its file's last fsync (never fsynced: empty) and
creations, renames and removals survive as of their directory's last fsync. The disk after
the k-th fsync is written out as a real directory, and the real `recover()` runs on it.

This is stricter than ext4 in its default mode (which also commits metadata in order), so a
missing fsync anywhere in the installer, or in `bundles` beneath it, shows up here as a
partial or missing release.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from satchel.agent.install.installer import install, recover
from satchel.agent.state import DeviceState
from tests.agent.devices import verify_active_release
from tests.agent.powercut import Disk, power_cuts, trace_env

MIN_FSYNCS = 10  # fewer traced fsyncs than this means the tracer did not run


@pytest.fixture
def three_releases(device, make_bundle):
    for seq in (1, 2, 3):
        install(device.state_dir, make_bundle(version=f"1.{seq}", sequence=seq))
    return device


def traced(device, tmp_path: Path, *args: str) -> tuple[Disk, Path]:
    """Run `satchel-agent ARGS` under the fsync tracer; return the disk before it and the log."""
    os.sync()
    before = Disk.snapshot(device.state_dir)
    log = tmp_path / "trace" / "fsync.log"
    log.parent.mkdir()
    device.spawn(*args, env=trace_env(log, device.state_dir)).ok()
    assert len(log.read_text().splitlines()) >= MIN_FSYNCS
    return before, log


def after_power_cut(disk: Disk, where: Path) -> DeviceState:
    disk.materialize(where)
    recover(where)
    return DeviceState(where)


def kept_on_disk(state: DeviceState) -> list[str]:
    return sorted(p.name for p in state.layout.releases("kws").iterdir())


def test_power_cut_at_any_fsync_of_an_install_serves_old_or_new(
    three_releases, make_bundle, tmp_path
):
    bundle = make_bundle(version="1.4", sequence=4)
    before, log = traced(three_releases, tmp_path, "install", str(bundle))

    seen: list[str] = []
    for i, last, disk in power_cuts(before, log):
        state = after_power_cut(disk, tmp_path / "cut")
        record = state.record("kws")
        assert record is not None, f"cut {i} after fsync of {last}: channel lost"
        version = record.active.version
        assert version in ("1.3", "1.4"), f"cut {i}: serves {version}"
        assert verify_active_release(state.layout.root, "kws").version == version
        assert kept_on_disk(state) == sorted(record.names()), f"cut {i} after {last}"
        assert list(state.layout.staging("kws").iterdir()) == []
        assert not state.layout.journal("kws").exists()
        assert seen[-1:] != ["1.4"] or version == "1.4", f"cut {i}: went back after the switch"
        seen.append(version)
    assert seen[0] == "1.3" and seen[-1] == "1.4"
    assert [r.version for r in DeviceState(tmp_path / "cut").record("kws").releases] == [
        "1.4", "1.3", "1.2"]


def test_power_cut_at_any_fsync_of_a_rollback_serves_old_or_new(three_releases, tmp_path):
    before, log = traced(three_releases, tmp_path, "rollback", "kws")

    seen: list[str] = []
    for i, last, disk in power_cuts(before, log):
        state = after_power_cut(disk, tmp_path / "cut")
        record = state.record("kws")
        assert record is not None and record.active.version in ("1.3", "1.2"), f"cut {i}"
        assert verify_active_release(state.layout.root, "kws").version == record.active.version
        assert kept_on_disk(state) == sorted(record.names()), f"cut {i} after {last}"
        seen.append(record.active.version)
    assert seen[0] == "1.3" and seen[-1] == "1.2"
    assert seen == sorted(seen, reverse=True)  # once back on 1.2, never 1.3 again


def test_power_cut_during_a_first_install_leaves_nothing_or_the_release(
    device, make_bundle, tmp_path
):
    before, log = traced(device, tmp_path, "install", str(make_bundle()))

    outcomes = set()
    for i, _, disk in power_cuts(before, log):
        state = after_power_cut(disk, tmp_path / "cut")
        if state.channels():
            verify_active_release(state.layout.root, "kws")
            outcomes.add("installed")
        else:
            assert not state.layout.channel("kws").exists(), f"cut {i}: leftovers"
            outcomes.add("nothing")
    assert outcomes == {"nothing", "installed"}
