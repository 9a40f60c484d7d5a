"""Delta bundles under attack and fault (issue 19), on a device serving 1.0.0 (sequence 10):
a patch against another build of the base, a base corrupted on disk, a base no longer kept,
an altered patch, and the install killed at every step while patching. Each is refused in one
line with the device exactly as it was, or recovered to the old or the new release; on a
stick, a device whose base is unusable falls back to the full bundle."""

from __future__ import annotations

from pathlib import Path

import pytest

from satchel.agent.errors import DeltaBaseMissingError
from satchel.agent.install.installer import recover
from satchel.agent.install.states import (
    GENERATION,
    JOURNALED,
    PROMOTED,
    PRUNED,
    SMOKE_TESTED,
    SWITCHED,
    UNPACKED,
)
from satchel.agent.state import DeviceState
from satchel.agent.sync.usb import process_stick
from satchel.bundles.delta import make_delta_bundle
from satchel.bundles.delta_manifest import PlanDelta
from satchel.bundles.errors import PayloadHashError
from satchel.bundles.manifest import member_name
from tests.agent.devices import Device, verify_active_release
from tests.factory.delta import fine_tuned
from tests.factory.model_makers import make_mlp_weights, onnx_mlp
from tests.factory.spans import flip_byte, span_of
from tests.reliability.figures import Recorder
from tests.reliability.kit import CFG, CHANNEL, Site, installer_refusal, no_health
from tests.reliability.sticks import Stick, assign_file
from tests.service.devices import HIDDEN, IN_DIM, OUT_DIM

AREA = "delta bundles"
STEPS = (JOURNALED, UNPACKED, SMOKE_TESTED, PROMOTED, SWITCHED, GENERATION, PRUNED)


class Releases:
    """1.0.0 (sequence 10) installed on the site, the fine-tuned 1.1.0 (20), its delta."""

    def __init__(self, site: Site) -> None:
        work = site.work
        weights = make_mlp_weights(IN_DIM, HIDDEN, OUT_DIM, seed=31)
        self.site = site
        self.base = site.bundle(onnx_mlp(weights, work / "base.onnx"), "1.0.0", 10)
        self.full = site.bundle(onnx_mlp(fine_tuned(weights), work / "tuned.onnx"), "1.1.0", 20)
        self.delta = work / "1.1.0.delta.satchel"
        make_delta_bundle(self.full, self.base, self.delta, site.keys.signing_keys)
        other = make_mlp_weights(IN_DIM, HIDDEN, OUT_DIM, seed=32)  # another 1.0.0 build
        self.other_base = site.bundle(onnx_mlp(other, work / "other.onnx"), "1.0.0", 10)


@pytest.fixture
def releases(site: Site) -> Releases:
    return Releases(site)


def test_patch_against_another_build_of_the_base_is_refused(
    site: Site, releases: Releases, measured: Recorder
) -> None:
    site.install(releases.other_base)  # same version and sequence, other content
    reason = installer_refusal(site, releases.delta, DeltaBaseMissingError)
    assert "is another build" in reason and "install the full bundle" in reason
    assert site.active() == ("1.0.0", 10)
    site.install(releases.full)
    measured.row(AREA, "patch against another build of the base release", 1,
                 "refused: DeltaBaseMissingError")


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_base_corrupted_on_disk_is_refused_then_the_full_bundle_installs(
    site: Site, releases: Releases, measured: Recorder, where: str
) -> None:
    site.install(releases.base)
    release = DeviceState(site.state).active_release(CHANNEL)
    assert release is not None
    model = release.path / "model.onnx"
    data = bytearray(model.read_bytes())
    data[{"first": 0, "middle": len(data) // 2, "last": len(data) - 1}[where]] ^= 0x20
    model.write_bytes(bytes(data))
    reason = installer_refusal(site, releases.delta, DeltaBaseMissingError)
    assert "on this device is damaged: install the full bundle" in reason
    site.install(releases.full)
    verify_active_release(site.state, CHANNEL)
    measured.row(AREA, f"base file corrupted on disk ({where} byte)", 1,
                 "refused: DeltaBaseMissingError; full bundle installs")


def test_base_no_longer_kept_is_refused(site: Site, releases: Releases,
                                        measured: Recorder) -> None:
    site.install(releases.base)
    for seq in (11, 12, 13):  # 1.0.0 pruned: a device keeps three releases
        site.install(site.bundle(site.work / "base.onnx", f"1.0.{seq}", seq))
    reason = installer_refusal(site, releases.delta, DeltaBaseMissingError)
    assert reason == ("delta bundle vision 1.1.0 needs base 1.0.0 (sequence 10), which this "
                      "device no longer keeps: install the full bundle")
    measured.row(AREA, "base release no longer kept", 1, "refused: DeltaBaseMissingError")


def test_altered_patch_is_refused_before_it_is_applied(site: Site, releases: Releases,
                                                       measured: Recorder) -> None:
    site.install(releases.base)
    data = releases.delta.read_bytes()
    span = span_of(data, member_name("model.onnx"), "data")
    cases = 0
    for offset in (span.start, (span.start + span.stop) // 2, span.stop - 1):
        altered = site.work / f"altered-{offset}.satchel"
        altered.write_bytes(flip_byte(data, offset))
        installer_refusal(site, altered, PayloadHashError)
        cases += 1
    measured.row(AREA, "patch bytes altered (first, middle, last)", cases,
                 "refused: PayloadHashError")


@pytest.mark.parametrize("step", STEPS)
def test_install_killed_at_any_step_while_patching_serves_old_or_new(
    site: Site, releases: Releases, measured: Recorder, step: str
) -> None:
    site.install(releases.base)
    device = Device(site.state)
    killed = device.spawn("install", str(releases.delta), crash_at=f"install:{step}")
    assert killed.exit_code < 0, killed
    recover(site.state)
    version = site.active()
    assert version in (("1.0.0", 10), ("1.1.0", 20)), version
    verify_active_release(site.state, CHANNEL)
    assert list(DeviceState(site.state).layout.staging(CHANNEL).iterdir()) == []
    if version == ("1.0.0", 10):  # the base survived: the delta installs on a second try
        site.install(releases.delta)
        assert site.active() == ("1.1.0", 20)
    measured.row(AREA, f"install of a delta killed at step {step!r}", 1,
                 "recovered: old or new release, never a partial one")


def test_stick_falls_back_to_the_full_bundle_when_the_base_is_damaged(
    site: Site, releases: Releases, measured: Recorder, tmp_path: Path
) -> None:
    site.install(releases.base)
    release = DeviceState(site.state).active_release(CHANNEL)
    assert release is not None
    (release.path / "model.onnx").write_bytes(b"bit rot")
    stick = Stick(tmp_path / "stick")
    stick.roots(site.keys.root_json)
    delta_bytes = releases.delta.read_bytes()
    delta = assign_file(stick, delta_bytes, "1.1.0", 20)
    full = assign_file(stick, releases.full.read_bytes(), "1.1.0", 20,
                       deltas=(PlanDelta("1.0.0", 10, delta.bundle_sha256, len(delta_bytes)),))
    stick.plan([full], site.keys.signing_keys)

    outcome = process_stick(site.state, stick.path, site.events(), no_health, config=CFG)

    assert outcome.installed == ["vision 1.1.0"], outcome
    assert site.active() == ("1.1.0", 20)
    verify_active_release(site.state, CHANNEL)
    measured.row(AREA, "USB: delta refused (base damaged), full bundle on the stick used", 1,
                 "recovered: full bundle installed")
