"""Compatibility checks, as pure functions over described devices (no disk, no runtime)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from satchel.agent.errors import (
    AgentTooOldError,
    ArchitectureError,
    DeviceClassError,
    InsufficientDiskError,
    RuntimeMissingError,
    SequenceRollbackError,
)
from satchel.agent.install.compat import (
    DeviceFacts,
    check_compatible,
    check_device,
    check_disk,
    expiry_clock,
)
from satchel.bundles.errors import ExpiredError
from satchel.bundles.manifest import Compatibility, FileEntry, Manifest, ModelEntry, TensorInfo

T0 = datetime(2026, 5, 1, tzinfo=timezone.utc)
MiB = 1024 * 1024
FACTS = DeviceFacts(
    device_class="rpi4",
    architecture="aarch64",
    agent_version="0.3.0",
    free_disk_bytes=500 * MiB,
    now=T0,
    trusted_clock=True,
    newest_signed_time=None,
    runtimes={"onnxruntime": "1.17.1", "tflite": "2.3.0"},
)


def manifest(compat: Compatibility | None = None, runtime: str = "onnxruntime",
             size: int = 10 * MiB, expires: datetime | None = None, sequence: int = 7) -> Manifest:
    return Manifest(
        name="kws", version="2.0", sequence=sequence, created=T0 - timedelta(days=1),
        expires=expires,
        files=(FileEntry("model.onnx", size, "0" * 64, 100, "0" * 64),),
        models=(ModelEntry("model", runtime, "model.onnx", (TensorInfo("x", "FP32", (1, 4)),),
                           (TensorInfo("y", "FP32", (1, 2)),)),),
        smoke_tests=(), compatibility=compat or Compatibility(),
    )


def test_a_bundle_for_any_device_fits():
    check_compatible(manifest(), FACTS, highest_installed=6, margin_bytes=64 * MiB)


def test_device_class_outside_the_list_is_refused():
    with pytest.raises(DeviceClassError, match="for device classes jetson, x86-box, not rpi4"):
        check_device(manifest(Compatibility(device_classes=("jetson", "x86-box"))), FACTS)
    check_device(manifest(Compatibility(device_classes=("jetson", "rpi4"))), FACTS)


def test_cpu_architecture_outside_the_list_is_refused():
    with pytest.raises(ArchitectureError, match="x86_64, not aarch64"):
        check_device(manifest(Compatibility(architectures=("x86_64",))), FACTS)


def test_runtime_too_old_is_refused():
    with pytest.raises(RuntimeMissingError, match="needs onnxruntime >= 1.18, this device has "
                                                  "1.17.1"):
        check_device(manifest(Compatibility(runtimes={"onnxruntime": "1.18"})), FACTS)
    check_device(manifest(Compatibility(runtimes={"onnxruntime": "1.17"})), FACTS)


def test_runtime_missing_is_refused_even_when_the_manifest_names_no_minimum():
    facts = replace(FACTS, runtimes={"onnxruntime": "1.17.1"})
    with pytest.raises(RuntimeMissingError, match="needs runtime tflite, not installed"):
        check_device(manifest(runtime="tflite"), facts)


def test_agent_too_old_is_refused():
    with pytest.raises(AgentTooOldError, match="needs satchel-agent >= 0.10.0"):
        check_device(manifest(Compatibility(min_agent_version="0.10.0")), FACTS)


def test_disk_needs_the_unpacked_size_plus_the_margin():
    facts = replace(FACTS, free_disk_bytes=70 * MiB)
    check_disk(manifest(size=6 * MiB), facts, margin_bytes=64 * MiB)
    with pytest.raises(InsufficientDiskError, match="74.0 MiB free .* only 70.0 MiB free"):
        check_disk(manifest(size=10 * MiB), facts, margin_bytes=64 * MiB)


@pytest.mark.parametrize("highest", [7, 8])
def test_sequence_equal_or_older_is_refused(highest):
    with pytest.raises(SequenceRollbackError, match="rollback refused"):
        check_compatible(manifest(sequence=7), FACTS, highest, 0)


def test_first_install_on_a_channel_takes_any_sequence():
    check_compatible(manifest(sequence=0), FACTS, None, 0)


def test_trusted_clock_refuses_an_expired_manifest():
    with pytest.raises(ExpiredError):
        check_compatible(manifest(expires=T0 - timedelta(seconds=1)), FACTS, None, 0)


def test_untrusted_clock_judges_expiry_by_the_newest_signed_time_seen():
    facts = replace(FACTS, trusted_clock=False, now=datetime(1970, 1, 2, tzinfo=timezone.utc),
                    newest_signed_time=T0)
    assert expiry_clock(facts)[1] == T0
    with pytest.raises(ExpiredError, match="newest signed time this device has seen"):
        check_compatible(manifest(expires=T0 - timedelta(hours=1)), facts, None, 0)
    check_compatible(manifest(expires=T0 + timedelta(hours=1)), facts, None, 0)


def test_untrusted_clock_ignores_a_clock_that_runs_ahead():
    facts = replace(FACTS, trusted_clock=False, now=datetime(2099, 1, 1, tzinfo=timezone.utc))
    check_compatible(manifest(expires=T0 + timedelta(days=1)), facts, None, 0)
