"""Installing a release with variants: every variant is smoke-tested on the device; one that
fails is dropped and reported, the release activates when its default variant passes, and is
refused as today when the default fails. Real onnxruntime models, the real installer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from satchel.agent.install.installer import install
from satchel.agent.sync.install_events import smoke_figures
from satchel.agent.variants.status import variant_status, write_runtime
from satchel.manager.build_variants import VariantSpec
from tests.agent.bundle_maker import BundleMaker
from tests.agent.devices import Device
from tests.factory.keys import Keyring
from tests.factory.variants import VariantModels, make_variant_models, variant_bundle

BUDGET_MS = 8.0  # the slow variant takes ~30 ms a run: it fails this budget on any machine


@pytest.fixture(scope="module")
def vmodels(tmp_path_factory: pytest.TempPathFactory) -> VariantModels:
    return make_variant_models(tmp_path_factory.mktemp("variant-models"), slow_steps=150)


def test_a_failing_variant_is_dropped_and_the_release_activates(
    tmp_path: Path, keys: Keyring, vmodels: VariantModels, device: Device
) -> None:
    bundle = tmp_path / "kws.satchel"
    variant_bundle(bundle, keys, [VariantSpec("full", vmodels.full),
                                  VariantSpec("slow", vmodels.slow),
                                  VariantSpec("lite", vmodels.lite)],
                   samples=vmodels.samples, latency_budget_ms=BUDGET_MS)
    result = install(device.state_dir, bundle)
    assert result.report.passed
    states = result.report.variants
    assert states["full"]["state"] == "ready" and states["lite"]["state"] == "ready"
    assert states["slow"]["state"] == "dropped"
    assert "p95 latency" in states["slow"]["reason"] and "budget" in states["slow"]["reason"]
    assert "variant slow dropped" in result.report.summary()
    channel = device.status()["channels"]["kws"]
    assert channel["variant"] == "full"
    assert channel["variants"]["slow"]["state"] == "dropped"
    assert channel["variants"]["lite"] == {
        "state": "ready", "reason": "", "p95_ms": states["lite"]["p95_ms"]}
    assert isinstance(channel["variants"]["lite"]["p95_ms"], float)
    text = device.run("status").stdout
    assert "  variant full (default variant); full ready, lite ready, slow dropped" in text
    figures = smoke_figures(result.report.to_dict())  # what the install's event carries
    assert figures["variants"]["slow"]["state"] == "dropped"


def test_a_failing_default_variant_refuses_the_release(
    tmp_path: Path, keys: Keyring, vmodels: VariantModels, device: Device
) -> None:
    bundle = tmp_path / "kws.satchel"
    variant_bundle(bundle, keys, [VariantSpec("slow", vmodels.slow),
                                  VariantSpec("lite", vmodels.lite)],
                   samples=vmodels.samples, latency_budget_ms=BUDGET_MS)
    before = device.tree()
    done = device.run("install", str(bundle))
    assert done.exit_code == 1
    assert "smoke test of kws 1.0.0 failed" in done.stderr
    assert "slow: p95 latency" in done.stderr
    assert device.active() is None
    assert device.tree() == before


def test_status_reports_a_variant_the_server_disabled_and_the_current_one(
    tmp_path: Path, keys: Keyring, vmodels: VariantModels, device: Device
) -> None:
    bundle = tmp_path / "kws.satchel"
    variant_bundle(bundle, keys, [VariantSpec("full", vmodels.full),
                                  VariantSpec("lite", vmodels.lite)], samples=vmodels.samples)
    release = install(device.state_dir, bundle).release
    write_runtime(release.directory, {"current": "lite", "reason": "battery_below=30",
                                      "disabled": {"full": "health: error rate"},
                                      "seconds": {"full": 1.5, "lite": 2.0}})
    channel = device.status()["channels"]["kws"]
    assert channel["variant"] == "lite"
    assert channel["variant_reason"] == "battery_below=30"
    assert channel["variants"]["full"]["state"] == "disabled"
    assert channel["variant_seconds"] == {"full": 1.5, "lite": 2.0}


def test_a_release_without_variants_says_nothing_of_them(
    device: Device, make_bundle: BundleMaker
) -> None:
    bundle = make_bundle()
    install(device.state_dir, bundle)
    channel = device.status()["channels"]["kws"]
    assert "variants" not in channel and "variant" not in channel


def test_damaged_runtime_file_never_breaks_status(tmp_path: Path) -> None:
    (tmp_path / "report.json").write_text(json.dumps(
        {"variants": {"full": {"state": "ready", "reason": "", "p95_ms": 1.0, "default": True}}}))
    (tmp_path / "variants.json").write_text("{not json")
    assert variant_status(tmp_path)["variant"] == "full"
