"""Every refusal leaves the device as it was: `status --json` byte-identical, release
directories untouched, and the reason on one line (and in the history).

Bundle-format refusals are a representative few (the format's own tests are exhaustive);
then device incompatibility, anti-rollback, expiry and clocks, and smoke tests failing on
accuracy, latency, memory and NaN with the real runtimes.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from satchel.agent.errors import InsufficientDiskError, RuntimeMissingError
from satchel.agent.install.facts import gather_facts
from satchel.agent.install.installer import install
from satchel.agent.provision import init_device
from satchel.bundles.keys import SigningKey
from satchel.bundles.manifest import Compatibility
from satchel.bundles.reader import verify_bundle
from satchel.bundles.timeutil import format_time, utcnow
from satchel.bundles.trust import load_root


@pytest.fixture
def installed(device, make_bundle):
    """A device serving kws 1.0.0 (sequence 5), and its state before the refused attempt."""
    device.run("install", str(make_bundle(version="1.0.0", sequence=5))).ok()
    return device


def refused(device, bundle: Path) -> str:
    """Install `bundle`, expect a refusal; check nothing changed; return the error line."""
    status, tree = device.status_bytes(), device.tree()
    line = device.run("install", str(bundle)).refusal()
    assert device.tree() == tree  # before `status`, whose recovery would tidy up
    assert device.status_bytes() == status
    event = device.history()[-1]
    assert event["event"] in ("refused", "smoke-test-failed")
    assert event["reason"] == line.removeprefix("error: ")
    device.verify_active()
    return line


# --- the bundle format ----------------------------------------------------------------------


def _flip(path: Path, offset: int) -> Path:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    return path


def test_altered_payload_is_refused(installed, make_bundle, keys):
    bundle = make_bundle(sequence=6)
    with open(bundle, "rb") as f:
        model_member = verify_bundle(f, load_root(keys.root_json), utcnow()).members[0]
    line = refused(installed, _flip(bundle, model_member.offset + 40))
    assert "does not match its signed hash" in line


def test_altered_manifest_is_refused(installed, make_bundle):
    bundle = make_bundle(version="2.0.0", sequence=6)
    data = bundle.read_bytes().replace(b'"version":"2.0.0"', b'"version":"2.0.1"', 1)
    bundle.write_bytes(data)
    assert "does not match" in refused(installed, bundle)


def test_bundle_signed_by_an_untrusted_key_is_refused(installed, make_bundle):
    line = refused(installed, make_bundle(sequence=6, sign_with=SigningKey.generate()))
    assert "trust" in line and "key" in line


def test_truncated_bundle_is_refused(installed, make_bundle):
    bundle = make_bundle(sequence=6)
    bundle.write_bytes(bundle.read_bytes()[:-2000])
    assert "truncated" in refused(installed, bundle)


def test_file_that_is_not_a_bundle_is_refused(installed, tmp_path):
    junk = tmp_path / "junk.satchel"
    junk.write_bytes(b"PK\x03\x04 this is a zip file, not a bundle" * 40)
    refused(installed, junk)


# --- the device -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("compatibility", "expected"),
    [
        (Compatibility(device_classes=("jetson-nano",)), "for device classes jetson-nano"),
        (Compatibility(architectures=("riscv64",)), "for CPU architectures riscv64"),
        (Compatibility(runtimes={"onnxruntime": "99.0"}), "needs onnxruntime >= 99.0"),
        (Compatibility(min_agent_version="99.1"), "needs satchel-agent >= 99.1"),
    ],
    ids=["device-class", "architecture", "runtime-version", "agent-version"],
)
def test_incompatible_bundle_is_refused(installed, make_bundle, compatibility, expected):
    line = refused(installed, make_bundle(sequence=6, compatibility=compatibility))
    assert expected in line


def test_bundle_whose_runtime_is_absent_is_refused(installed, make_bundle):
    status, tree = installed.status_bytes(), installed.tree()

    def no_tflite(state):
        facts = gather_facts(state)
        return replace(facts, runtimes={"onnxruntime": facts.runtimes["onnxruntime"]})

    with pytest.raises(RuntimeMissingError, match="needs runtime tflite, not installed"):
        install(installed.state_dir, make_bundle(sequence=6, model="tflite"), facts=no_tflite)
    assert installed.status_bytes() == status and installed.tree() == tree


def test_bundle_that_does_not_fit_on_disk_is_refused(installed, make_bundle):
    status, tree = installed.status_bytes(), installed.tree()

    def full_disk(state):
        return replace(gather_facts(state), free_disk_bytes=10 * 1024 * 1024)

    with pytest.raises(InsufficientDiskError, match="only 10.0 MiB free"):
        install(installed.state_dir, make_bundle(sequence=6), facts=full_disk)
    assert installed.status_bytes() == status and installed.tree() == tree


@pytest.mark.parametrize("sequence", [5, 4], ids=["equal", "older"])
def test_sequence_not_newer_is_refused(installed, make_bundle, sequence):
    line = refused(installed, make_bundle(version="9.9.9", sequence=sequence))
    assert f"sequence {sequence}, not newer than 5" in line


def test_expired_bundle_is_refused(installed, make_bundle):
    now = utcnow()
    bundle = make_bundle(sequence=6, created=now - timedelta(days=2),
                         expires=now - timedelta(days=1))
    assert "expired at" in refused(installed, bundle)


def test_untrusted_clock_refuses_what_expired_before_the_newest_signed_time_seen(
    tmp_path, keys, make_bundle
):
    from tests.agent.devices import Device

    init_device(tmp_path / "s", keys.root_json, "dev-2", "test-board", trusted_clock=False)
    device = Device(tmp_path / "s")
    now = utcnow()
    device.run("install", str(make_bundle(sequence=1, created=now - timedelta(hours=1)))).ok()
    assert f'"{format_time(now - timedelta(hours=1))}"' in (tmp_path / "s/clock.json").read_text()
    stale = make_bundle(name="vision", sequence=1, created=now - timedelta(days=3),
                        expires=now - timedelta(days=2))

    line = refused(device, stale)

    assert "before" in line and "newest signed time this device has seen" in line


def test_untrusted_clock_does_not_judge_expiry_by_its_own_clock(tmp_path, keys, make_bundle):
    from tests.agent.devices import Device

    init_device(tmp_path / "s", keys.root_json, "dev-3", "test-board", trusted_clock=False)
    now = utcnow()
    bundle = make_bundle(created=now - timedelta(days=3), expires=now - timedelta(days=2))

    Device(tmp_path / "s").run("install", str(bundle)).ok()  # nothing newer was ever seen


# --- smoke tests on this device -------------------------------------------------------------


def test_smoke_test_failing_on_accuracy_is_refused(installed, make_bundle):
    bundle = make_bundle(sequence=6, model="tflite-int8", smoke={"max_abs_error": 1e-6})
    line = refused(installed, bundle)
    assert "max abs error" in line and "1.0.0 stays active" in line
    report = installed.history()[-1]["report"]
    assert report["passed"] is False and report["tests"][0]["agreement"]["max_abs_error"] > 1e-6


def test_smoke_test_failing_on_latency_budget_is_refused(installed, make_bundle):
    bundle = make_bundle(sequence=6, smoke={"p95_latency_budget_ms": 0.0001})
    line = refused(installed, bundle)
    assert "p95 latency" in line and "> budget 0.0001 ms" in line
    latency = installed.history()[-1]["report"]["tests"][0]["latency_ms"]
    assert latency["p95"] > latency["budget_p95"] == 0.0001


def test_smoke_test_failing_on_memory_budget_is_refused(installed, make_bundle):
    bundle = make_bundle(sequence=6, smoke={"max_memory_mb": 0.000001})
    line = refused(installed, bundle)
    assert "peak memory" in line
    memory = installed.history()[-1]["report"]["tests"][0]["memory_mb"]
    assert memory["peak_growth"] > memory["budget"]


def test_smoke_test_failing_on_nan_outputs_is_refused(installed, make_bundle):
    line = refused(installed, make_bundle(sequence=6, model="onnx-nan"))
    assert "NaN/Inf" in line
    assert installed.history()[-1]["report"]["tests"][0]["agreement"]["nonfinite"] > 0


def test_model_that_does_not_load_is_refused(installed, make_bundle, models, tmp_path):
    from tests.agent.bundle_maker import Model

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07this is not a protobuf model")
    models["broken"] = Model(broken, models["onnx"].inputs, models["onnx"].reference)
    try:
        line = refused(installed, make_bundle(sequence=6, model="broken"))
    finally:
        del models["broken"]
    assert "cannot load" in line


def test_smoke_failure_on_a_fresh_channel_leaves_no_channel(device, make_bundle):
    status, tree = device.status_bytes(), device.tree()

    line = device.run("install", str(make_bundle(model="onnx-nan"))).refusal()

    assert "nothing activated" in line
    assert device.tree() == tree and device.status_bytes() == status


def test_tflite_refusal_from_the_console_script_is_one_line(installed, make_bundle):
    bundle = make_bundle(sequence=6, model="tflite-int8", smoke={"max_abs_error": 1e-6})

    line = installed.spawn("install", str(bundle)).refusal()  # no runtime banner on stderr

    assert "max abs error" in line
