"""The manifest's signed `"activation"` section: parsed strictly, absent unless asked for,
and made from `satchel bundle build`'s flags (a bad flag is one line, nothing built)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from satchel.bundles.activation import ActivationPolicy, build_policy, parse_capture, parse_ramp
from satchel.bundles.errors import ManifestError
from satchel.bundles.manifest import FileEntry, Manifest, parse_manifest
from satchel.bundles.reader import read_unverified
from satchel.manager.keydir import init_keydir
from tests.cli.invoke import Cli
from tests.factory.bundles import default_manifest
from tests.factory.model_makers import make_mlp_weights, onnx_mlp

FULL = {
    "shadow": {"requests": 500, "fraction": 0.1, "agreement": 0.99, "max_seconds": 3600.0},
    "ramp": {"steps": [10, 50, 100], "step_requests": 200, "step_seconds": 600.0},
    "capture": {"reasons": ["disagreement", "nonfinite", "low_margin"], "min_margin": 0.1,
                "max_samples": 100, "max_bytes": 1048576},
}


def _with(activation: Any) -> dict[str, Any]:
    manifest = default_manifest("vision", "1.0.0", 1, ["model.onnx"])
    d = manifest.with_files([FileEntry("model.onnx", 10, "0" * 64, 10, "1" * 64)]).to_dict()
    d["activation"] = activation
    return d


def test_policy_round_trips_through_the_signed_manifest() -> None:
    manifest = Manifest.from_dict(_with(FULL))
    assert manifest.activation is not None and manifest.activation.staged
    assert manifest.activation.to_dict() == FULL
    assert parse_manifest(manifest.to_bytes()) == manifest


def test_manifest_without_the_section_is_written_without_it() -> None:
    manifest = default_manifest("vision", "1.0.0", 1, ["model.onnx"])
    assert manifest.activation is None and "activation" not in manifest.to_dict()


@pytest.mark.parametrize("activation, words", [
    ({"shadow": {"requests": 0, "fraction": 0.1, "agreement": 0.9}}, "'requests'"),
    ({"shadow": {"requests": 5, "fraction": 0.0, "agreement": 0.9}}, "'fraction'"),
    ({"shadow": {"requests": 5, "fraction": 1.5, "agreement": 0.9}}, "'fraction'"),
    ({"shadow": {"requests": 5, "fraction": 0.1, "agreement": 2}}, "'agreement'"),
    ({"shadow": {"requests": 5, "fraction": 0.1}}, "'agreement'"),
    ({"ramp": {"steps": [50, 10, 100], "step_requests": 5}}, "rise"),
    ({"ramp": {"steps": [10, 50], "step_requests": 5}}, "100"),
    ({"ramp": {"steps": [], "step_requests": 5}}, "'steps'"),
    ({"ramp": {"steps": [True, 100], "step_requests": 5}}, "percent"),
    ({"capture": {"reasons": ["everything"], "max_samples": 1, "max_bytes": 1}}, "'reasons'"),
    ({"capture": {"reasons": ["low_margin"], "max_samples": 1, "max_bytes": 1}},
     "'min_margin'"),
    ({"rollout": {}}, "unexpected field 'rollout'"),
    ([], "must be an object"),
])
def test_malformed_policy_is_refused_in_one_line(activation: Any, words: str) -> None:
    with pytest.raises(ManifestError, match=words) as e:
        Manifest.from_dict(_with(activation))
    assert "\n" not in str(e.value)


def test_build_options_make_the_policy_or_none() -> None:
    assert build_policy() is None
    policy = build_policy(shadow_requests=100, ramp="10,50,100",
                          capture="disagreement,low-margin:0.2")
    assert isinstance(policy, ActivationPolicy) and policy.shadow and policy.ramp
    assert policy.capture is not None and policy.capture.min_margin == 0.2
    assert policy.capture.reasons == ("disagreement", "low_margin")
    assert parse_ramp("10,100") == (10, 100)
    assert parse_capture("nonfinite") == (("nonfinite",), None)


@pytest.mark.parametrize("kwargs, words", [
    ({"ramp": "10,abc"}, "rising percents"),
    ({"ramp": "10,50"}, "100"),
    ({"shadow_requests": 5, "capture": "sometimes"}, "unknown reason"),
    ({"shadow_requests": 5, "capture": "low-margin:x"}, "not a number"),
    ({"capture": "nonfinite"}, "needs a shadow stage"),
    ({"shadow_requests": 5, "shadow_fraction": 0.0}, "--shadow-fraction"),
])
def test_bad_build_options_are_refused(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        build_policy(**kwargs)


def test_bundle_build_flags_put_the_policy_in_the_signed_manifest(tmp_path: Path) -> None:
    keydir = tmp_path / "keys"
    init_keydir(keydir)
    model = onnx_mlp(make_mlp_weights(8, 16, 3, seed=1), tmp_path / "m.onnx")
    out = tmp_path / "b.satchel"
    base = ["bundle", "build", "--name", "vision", "--version", "1.0.0", "--sequence", "1",
            "--model", model, "--key", keydir / "signing.key", "-o", out]
    Cli(tmp_path).run(*base, "--shadow-requests", "200", "--shadow-fraction", "0.2",
                      "--ramp", "25,100", "--ramp-step-requests", "50",
                      "--capture", "disagreement,nonfinite", "--capture-max", "10").ok()
    with open(out, "rb") as f:
        manifest, _ = read_unverified(f)
    assert manifest.activation is not None
    assert manifest.activation.to_dict()["shadow"] == {
        "requests": 200, "fraction": 0.2, "agreement": 0.99}
    assert manifest.activation.to_dict()["ramp"] == {"steps": [25, 100], "step_requests": 50}
    assert manifest.activation.capture is not None
    assert manifest.activation.capture.max_samples == 10
    shown = Cli(tmp_path).run("bundle", "inspect", out).ok().stdout
    assert "activation shadow: requests=200, fraction=0.2, agreement=0.99" in shown
    assert "activation ramp: steps=[25, 100], step_requests=50" in shown
    refused = Cli(tmp_path).run(*base[:-1], tmp_path / "c.satchel", "--ramp", "50,10")
    assert "rise" in refused.usage_error()
    assert not (tmp_path / "c.satchel").exists()
    plain = tmp_path / "plain.satchel"
    Cli(tmp_path).run(*base[:-1], plain).ok()
    with open(plain, "rb") as f:
        manifest, _ = read_unverified(f)
    assert manifest.activation is None
