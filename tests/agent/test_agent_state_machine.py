"""The installer's decisions (pure) and its step order, driven through a fake smoke runner."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from satchel.agent.errors import NoPreviousReleaseError, SmokeTestFailedError
from satchel.agent.install import history
from satchel.agent.install.installer import install, recover
from satchel.agent.install.journal import (
    OP_INSTALL,
    OP_ROLLBACK,
    Journal,
    read_journal,
    write_journal,
)
from satchel.agent.install.smoketest import SmokeReport
from satchel.agent.install.states import (
    Recovery,
    record_after_install,
    record_after_rollback,
    recovery_for,
    stale_releases,
)
from satchel.agent.state import ChannelRecord, KeptRelease
from satchel.bundles.channels import STATE_ROLLED_BACK
from satchel.bundles.manifest import Manifest, ModelEntry, TensorInfo

T0 = datetime(2026, 5, 1, tzinfo=timezone.utc)


def manifest(sequence: int, version: str = "") -> Manifest:
    tensor = (TensorInfo("x", "FP32", (1,)),)
    return Manifest(
        name="kws", version=version or f"v{sequence}", sequence=sequence, created=T0, files=(),
        models=(ModelEntry("m", "onnxruntime", "m.onnx", tensor, tensor),), smoke_tests=(),
    )


def record(*sequences: int, floor: int | None = None) -> ChannelRecord:
    kept = tuple(KeptRelease(f"{s}-v{s}", f"v{s}", s, T0, T0) for s in sequences)
    return ChannelRecord("kws", kept, floor if floor is not None else max(sequences), "active")


def journal(op: str, target: str, previous: str | None) -> Journal:
    return Journal(op, "id1", "kws", target, "v", 1, previous, "journaled", "t")


# --- decisions ------------------------------------------------------------------------------


def test_new_release_goes_first_and_only_three_are_kept():
    after = record_after_install(record(3, 2, 1), manifest(4), "4-v4", T0, keep=3)
    assert [r.sequence for r in after.releases] == [4, 3, 2]
    assert after.active.name == "4-v4" and after.highest_sequence == 4


def test_first_install_makes_a_record():
    after = record_after_install(None, manifest(9), "9-v9", T0, keep=3)
    assert after.releases[0].sequence == 9 and after.previous is None


def test_rollback_keeps_the_anti_rollback_floor_and_drops_the_active_release():
    after = record_after_rollback(record(3, 2, 1), T0 + timedelta(hours=1))
    assert [r.sequence for r in after.releases] == [2, 1]
    assert after.highest_sequence == 3 and after.state == STATE_ROLLED_BACK
    assert after.active.activated_at == T0 + timedelta(hours=1)


def test_rollback_with_a_single_release_is_refused():
    with pytest.raises(NoPreviousReleaseError):
        record_after_rollback(record(1), T0)


def test_install_after_rollback_keeps_the_floor():
    rolled = record_after_rollback(record(3, 2), T0)
    after = record_after_install(rolled, manifest(4), "4-v4", T0, keep=3)
    assert after.highest_sequence == 4 and [r.sequence for r in after.releases] == [4, 2]


def test_releases_not_named_by_the_record_are_stale():
    assert stale_releases(record(3, 2), ["1-v1", "2-v2", "3-v3", "9-v9"]) == ["1-v1", "9-v9"]
    assert stale_releases(None, ["1-v1"]) == ["1-v1"]


def test_recovery_finishes_once_switched_and_undoes_before():
    assert recovery_for(journal(OP_INSTALL, "4-v4", "3-v3"), record(4, 3)) is Recovery.FINISH
    assert recovery_for(journal(OP_INSTALL, "4-v4", "3-v3"), record(3)) is Recovery.UNDO
    assert recovery_for(journal(OP_INSTALL, "1-v1", None), None) is Recovery.UNDO


def test_recovery_redoes_a_decided_rollback_that_did_not_switch():
    assert recovery_for(journal(OP_ROLLBACK, "2-v2", "3-v3"), record(3, 2)) is Recovery.REDO
    assert recovery_for(journal(OP_ROLLBACK, "2-v2", "3-v3"), record(2)) is Recovery.FINISH


# --- the step order, with a fake smoke runner -----------------------------------------------


class FakeRunner:
    """Passes or fails on demand, and records what the device looked like while testing."""

    def __init__(self, device, passed: bool = True, raises: BaseException | None = None):
        self.device, self.passed, self.raises = device, passed, raises
        self.seen: list[tuple[Path, list[str], dict]] = []

    def run(self, manifest: Manifest, files: Path) -> SmokeReport:
        unpacked = sorted(str(p.relative_to(files)) for p in files.rglob("*") if p.is_file())
        self.seen.append((files, unpacked, self.device.state.status()))
        if self.raises:
            raise self.raises
        reasons = () if self.passed else ("m: fake says no",)
        return SmokeReport(self.passed, reasons, ({"model": "m", "fake": True},))


def test_smoke_test_runs_on_the_staged_release_before_anything_is_active(device, make_bundle):
    runner = FakeRunner(device)

    install(device.state_dir, make_bundle(), smoke_runner=runner)

    files, unpacked, status_during = runner.seen[0]
    assert files.parent.parent.name == "staging"
    assert unpacked == ["model.onnx", "smoke/inputs.npz", "smoke/reference.npz"]
    assert status_during["channels"] == {}
    assert device.state.active_release("kws").report()["tests"] == [{"model": "m", "fake": True}]


def test_status_during_an_install_shows_the_old_release_installing(device, make_bundle):
    install(device.state_dir, make_bundle(sequence=1), smoke_runner=FakeRunner(device))
    seen = []

    class StatusRunner(FakeRunner):
        def run(self, manifest, files):
            seen.append(device.run("status", "--json").ok().stdout)  # the real command
            return super().run(manifest, files)

    install(device.state_dir, make_bundle(sequence=2, version="2.0"),
            smoke_runner=StatusRunner(device))

    during = json.loads(seen[0])["channels"]["kws"]
    assert during["active"] == {"version": "1.0.0", "sequence": 1}
    assert during["state"] == "installing"
    assert device.status()["channels"]["kws"]["state"] == "probation"


def test_failed_smoke_test_discards_the_staged_release_and_keeps_the_report(device, make_bundle):
    install(device.state_dir, make_bundle(sequence=1), smoke_runner=FakeRunner(device))
    status, tree = device.status_bytes(), device.tree()

    with pytest.raises(SmokeTestFailedError, match="fake says no") as failure:
        install(device.state_dir, make_bundle(sequence=2),
                smoke_runner=FakeRunner(device, passed=False))

    assert failure.value.report["passed"] is False
    assert device.tree() == tree and device.status_bytes() == status
    assert read_journal(device.state.layout, "kws") is None
    assert history.read_history(device.state.layout)[-1]["report"]["failures"]


def test_an_exception_mid_install_undoes_it(device, make_bundle):
    install(device.state_dir, make_bundle(sequence=1), smoke_runner=FakeRunner(device))
    status, tree = device.status_bytes(), device.tree()

    with pytest.raises(KeyboardInterrupt):
        install(device.state_dir, make_bundle(sequence=2),
                smoke_runner=FakeRunner(device, raises=KeyboardInterrupt()))

    assert device.tree() == tree and device.status_bytes() == status


def test_recovery_redoes_a_rollback_journaled_before_its_switch(device, make_bundle):
    for seq in (1, 2):
        install(device.state_dir, make_bundle(sequence=seq, version=f"{seq}.0"),
                smoke_runner=FakeRunner(device))
    layout = device.state.layout
    write_journal(layout, Journal(OP_ROLLBACK, "rb1", "kws", "1-1.0", "1.0", 1, "2-2.0",
                                  "journaled", "t", reason="health: NaN rate 0.2 > 0",
                                  previous_version="2.0"))

    done = recover(device.state_dir)

    assert done == ["finished the interrupted rollback of kws 1.0"]
    assert device.active() == ("1.0", 1)
    assert not (layout.releases("kws") / "2-2.0").exists()
    assert history.read_history(layout)[-1]["reason"] == "health: NaN rate 0.2 > 0 (from 2.0)"


def test_recovery_removes_leftovers_the_record_does_not_name(device, make_bundle):
    install(device.state_dir, make_bundle(), smoke_runner=FakeRunner(device))
    layout = device.state.layout
    (layout.staging("kws") / "7-junk").mkdir()
    (layout.releases("kws") / "8-junk" / "files").mkdir(parents=True)
    (layout.channel("kws") / ".channel.json.abc.tmp").write_text("half")
    tree = device.tree()

    done = recover(device.state_dir)

    assert sorted(done) == ["removed leftover kws/.channel.json.abc.tmp",
                            "removed leftover kws/releases/8-junk",
                            "removed leftover kws/staging/7-junk"]
    assert device.tree() == {k: v for k, v in tree.items() if "junk" not in k and ".tmp" not in k}
