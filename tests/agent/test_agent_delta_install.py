"""`satchel-agent install` of a delta bundle: the patch is applied from the kept release of
the channel into staging, checked against the signed content hash, smoke-tested and
activated; without the base (pruned, never installed, or damaged on disk) it is refused in
one line, the device unchanged, and the full bundle still installs. A power cut at any fsync
while patching leaves the old or the new release, never a half-patched one."""

from __future__ import annotations

from pathlib import Path

import pytest

from satchel.agent.install.installer import install, recover
from satchel.agent.state import FILES_DIR, DeviceState
from satchel.bundles.delta import make_delta_bundle
from tests.agent.bundle_maker import HIDDEN, IN_DIM, OUT_DIM, SAMPLES, BundleMaker, Model
from tests.agent.devices import Device, verify_active_release
from tests.agent.powercut import power_cuts
from tests.agent.test_agent_powercut import after_power_cut, kept_on_disk, traced
from tests.factory.delta import fine_tuned
from tests.factory.keys import Keyring
from tests.factory.model_makers import (
    INPUT_NAME,
    OUTPUT_NAME,
    make_mlp_weights,
    mlp_forward,
    onnx_mlp,
    sample_inputs,
)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> Model:
    """The agent suite's "onnx" model (seed 3) with its last layer fine-tuned."""
    directory = tmp_path_factory.mktemp("tuned")
    weights = fine_tuned(make_mlp_weights(IN_DIM, HIDDEN, OUT_DIM, seed=3))
    x = sample_inputs(IN_DIM, SAMPLES, seed=5)
    return Model(onnx_mlp(weights, directory / "tuned.onnx"), {INPUT_NAME: x},
                 {OUTPUT_NAME: mlp_forward(weights, x)})


@pytest.fixture
def releases(tmp_path: Path, keys: Keyring, models: dict[str, Model],
             tuned: Model) -> dict[str, Path]:
    """kws 2.0.0 (sequence 5), the fine-tuned 2.1.0 (sequence 6) and its delta against 2.0.0."""
    directory = tmp_path / "releases"
    directory.mkdir()
    maker = BundleMaker(directory, keys, {**models, "tuned": tuned})
    old = maker(version="2.0.0", sequence=5)
    full = maker(version="2.1.0", sequence=6, model="tuned")
    delta = directory / "kws-2.1.0.delta.satchel"
    make_delta_bundle(full, old, delta, [keys.signing])
    return {"old": old, "full": full, "delta": delta, "maker": maker}  # type: ignore[dict-item]


NO_BASE = ("error: delta bundle kws 2.1.0 needs base 2.0.0 (sequence 5), which this device "
           "no longer keeps: install the full bundle")


def test_delta_install_patches_the_kept_release_and_activates(
    device: Device, releases: dict[str, Path], tuned: Model
) -> None:
    device.run("install", str(releases["old"])).ok()
    out = device.spawn("install", str(releases["delta"])).ok()  # the console script
    assert "2.1.0" in out.stdout
    assert device.active() == ("2.1.0", 6)
    manifest = device.verify_active()  # every file re-hashed against the signed manifest
    assert manifest.delta_base is not None
    release = device.state.active_release("kws")
    assert release is not None
    assert (release.path / "model.onnx").read_bytes() == tuned.path.read_bytes()
    assert [r.version for r in device.state.record("kws").releases] == ["2.1.0", "2.0.0"]


def test_delta_applies_from_a_kept_release_that_is_not_active(
    device: Device, releases: dict[str, Path], keys: Keyring
) -> None:
    maker: BundleMaker = releases["maker"]  # type: ignore[assignment]
    device.run("install", str(releases["old"])).ok()
    newer = maker(version="2.0.9", sequence=7, model="onnx-v2")
    later_delta = releases["delta"].with_name("d2.satchel")
    full = maker(version="3.0.0", sequence=8, model="tuned")
    make_delta_bundle(full, releases["old"], later_delta, [keys.signing])
    device.run("install", str(newer)).ok()  # 2.0.0 is kept, no longer active
    device.run("install", str(later_delta)).ok()
    assert device.active() == ("3.0.0", 8)
    device.verify_active()


def test_delta_without_the_base_is_refused_in_one_line_device_unchanged(
    device: Device, releases: dict[str, Path]
) -> None:
    maker: BundleMaker = releases["maker"]  # type: ignore[assignment]
    device.run("install", str(maker(version="1.0.0", sequence=4))).ok()
    before = device.tree()
    line = device.spawn("install", str(releases["delta"])).refusal()
    assert line == NO_BASE
    assert device.tree() == before
    assert device.active() == ("1.0.0", 4)
    device.run("install", str(releases["full"])).ok()  # the full bundle: the fallback
    assert device.active() == ("2.1.0", 6)


def test_delta_whose_base_was_pruned_is_refused(
    device: Device, releases: dict[str, Path], keys: Keyring
) -> None:
    maker: BundleMaker = releases["maker"]  # type: ignore[assignment]
    device.run("install", str(releases["old"])).ok()
    for seq in (6, 7, 8):  # three newer releases: 2.0.0 (sequence 5) is no longer kept
        device.run("install", str(maker(version=f"2.0.{seq}", sequence=seq))).ok()
    full = maker(version="2.1.0", sequence=9, model="tuned")
    delta = full.with_name("late.delta.satchel")
    make_delta_bundle(full, releases["old"], delta, [keys.signing])
    before = device.tree()
    assert device.run("install", str(delta)).refusal() == NO_BASE
    assert device.tree() == before


def test_delta_over_a_corrupted_base_is_refused_then_the_full_bundle_installs(
    device: Device, releases: dict[str, Path]
) -> None:
    device.run("install", str(releases["old"])).ok()
    release = device.state.active_release("kws")
    assert release is not None
    model = release.path / "model.onnx"
    data = bytearray(model.read_bytes())
    data[100] ^= 0x01  # bit rot in the kept release
    model.write_bytes(bytes(data))
    before = device.tree()
    line = device.run("install", str(releases["delta"])).refusal()
    assert line == ("error: delta bundle kws 2.1.0 needs base 2.0.0 (sequence 5), whose file "
                    "model.onnx on this device is damaged: install the full bundle")
    assert device.tree() == before
    device.run("install", str(releases["full"])).ok()
    device.verify_active()


def test_power_cut_at_any_fsync_while_patching_serves_old_or_new(
    device: Device, releases: dict[str, Path], models: dict[str, Model], tmp_path: Path
) -> None:
    install(device.state_dir, releases["old"])
    before, log = traced(device, tmp_path, "install", str(releases["delta"]))
    seen: list[str] = []
    for i, last, disk in power_cuts(before, log):
        state = after_power_cut(disk, tmp_path / "cut")
        record = state.record("kws")
        assert record is not None, f"cut {i} after fsync of {last}: channel lost"
        version = record.active.version
        assert version in ("2.0.0", "2.1.0"), f"cut {i}: serves {version}"
        assert verify_active_release(state.layout.root, "kws").version == version
        assert kept_on_disk(state) == sorted(record.names()), f"cut {i} after {last}"
        assert list(state.layout.staging("kws").iterdir()) == []
        base = next(r for r in record.releases if r.version == "2.0.0")  # the base survives
        files = state.layout.release("kws", base.name) / FILES_DIR
        assert (files / "model.onnx").read_bytes() == models["onnx"].path.read_bytes()
        seen.append(version)
    assert seen[0] == "2.0.0" and seen[-1] == "2.1.0"
    recover(tmp_path / "cut")  # recovery is idempotent on the final disk
    assert DeviceState(tmp_path / "cut").record("kws").active.version == "2.1.0"



def test_an_encrypted_delta_is_decrypted_then_patched_as_it_streams(
    device: Device, releases: dict[str, Path], keys: Keyring, tuned: Model
) -> None:
    from satchel.agent.install.decrypt import device_recipient
    from satchel.bundles.crypt import BundleEncryption

    recipient = device_recipient(device.state_dir, "dev-1")
    delta = releases["delta"].with_name("encrypted.delta.satchel")
    made = make_delta_bundle(releases["full"], releases["old"], delta, [keys.signing],
                             encryption=BundleEncryption((recipient,)))
    assert made.manifest.encryption is not None and made.manifest.delta_base is not None
    device.run("install", str(releases["old"])).ok()
    device.run("install", str(delta)).ok()
    assert device.active() == ("2.1.0", 6)
    release = device.state.active_release("kws")
    assert release is not None
    assert (release.path / "model.onnx").read_bytes() == tuned.path.read_bytes()
    device.verify_active()
