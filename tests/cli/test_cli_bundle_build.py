"""`satchel bundle build`: measure the shipped model against its reference, sign, refuse."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from satchel.agent.runtimes import get_runtime
from satchel.bundles.manifest import Manifest
from satchel.bundles.reader import verify_and_unpack
from satchel.bundles.timeutil import utcnow
from satchel.manager.keydir import read_root

if TYPE_CHECKING:
    from tests.cli.invoke import Cli
    from tests.cli.model_files import Models


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _unpack(bundle: Path, keydir: Path, target: Path) -> Manifest:
    """Verify and unpack as a device would; returns the manifest."""
    target.mkdir()
    verified = verify_and_unpack(bundle, read_root(keydir), target, utcnow(), fsync=False)
    return verified.manifest


def _npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _outputs(model_path: Path, runtime: str, inputs: np.ndarray) -> np.ndarray:
    model = get_runtime(runtime).load(model_path)
    try:
        return np.concatenate([model.run({"input": row[None, :]})["logits"] for row in inputs])
    finally:
        model.close()


def _build_args(model: Path, out: Path, key: Path, *extra: str | Path) -> list[str | Path]:
    return ["bundle", "build", "--name", "detector", "--version", "2.0", "--model", model,
            "--key", key, "-o", out, *extra]


def test_int8_onnx_bundle_ships_float_reference_outputs_as_smoke_test(
    models: Models, int8_bundle: Path, shared_keydir: Path, tmp_path: Path
) -> None:
    manifest = _unpack(int8_bundle, shared_keydir, tmp_path / "staged")
    staged = tmp_path / "staged"

    assert (manifest.name, manifest.version, manifest.sequence) == ("detector", "1.2.3", 42)
    (model,) = manifest.models
    assert (model.runtime, model.file, model.quantization) == (
        "onnxruntime", "model.onnx", "dynamic-int8"
    )
    assert model.reference_sha256 == _sha256(models.float_onnx)
    assert [(t.name, t.datatype) for t in model.inputs] == [("input", "FP32")]
    assert manifest.compatibility.device_classes == ("cam-v2",)
    assert manifest.compatibility.runtimes == {"onnxruntime": "1.16"}
    (smoke,) = manifest.smoke_tests
    (check,) = smoke.outputs
    assert (check.name, check.kind) == ("logits", "classes")
    assert (check.min_top1_agreement, check.min_sqnr_db, check.max_rel_error) == (0.9, 10.0, 0.15)
    assert (smoke.p95_latency_budget_ms, smoke.max_memory_mb) == (50.0, 64.0)
    assert (staged / "model.onnx").read_bytes() == models.int8_onnx.read_bytes()
    samples = _npz(models.samples)["input"]
    np.testing.assert_array_equal(_npz(staged / "smoke/inputs.npz")["input"], samples)
    reference = _npz(staged / "smoke/reference.npz")["logits"]  # one feed: the batch of 16
    np.testing.assert_allclose(
        reference[0], _outputs(models.float_onnx, "onnxruntime", samples), rtol=1e-5, atol=1e-5
    )


def test_build_without_samples_generates_them_and_reports_figures(
    cli: Cli, models: Models, shared_keydir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "b.satchel"

    stdout = cli.run(*_build_args(models.int8_onnx, out, shared_keydir / "signing.key",
                                  "--reference", models.float_onnx)).ok().stdout

    lines = stdout.splitlines()
    assert lines[0].startswith(f"built {out} (")
    assert "detector 2.0 sequence" in lines[1]
    assert "onnxruntime, quantization dynamic-int8" in lines[1]
    assert "vs reference on 32 sample feeds: max abs error" in lines[2]
    assert "logits (classes): max abs error" in lines[3]
    assert "host latency p50" in lines[4]
    assert f"signed by 1 key(s); sha256 {_sha256(out)}" in lines[5]
    _unpack(out, shared_keydir, tmp_path / "staged")
    assert _npz(tmp_path / "staged/smoke/inputs.npz")["input"].shape == (32, 1, 64)


def test_build_json_reports_bundle_and_agreement(
    cli: Cli, models: Models, shared_keydir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "b.satchel"

    report = cli.run(*_build_args(models.int8_onnx, out, shared_keydir / "signing.key",
                                  "--reference", models.float_onnx, "--samples", models.samples,
                                  "--sequence", "7", "--json")).json()

    assert (report["name"], report["version"], report["sequence"]) == ("detector", "2.0", 7)
    assert report["output"] == str(out)
    assert report["bundle_bytes"] == out.stat().st_size
    assert report["bundle_sha256"] == _sha256(out)
    agreement = report["agreement"]
    assert agreement["samples"] == 1  # [16, 64] fits the declared [batch, 64]: one feed
    assert agreement["outputs"][0]["values"] == 160
    assert agreement["nonfinite"] == 0
    assert 0 < agreement["max_abs_error"] < 0.5
    assert agreement["min_cosine"] >= 0.99
    assert report["host_p95_ms"] >= report["host_p50_ms"] > 0


def test_default_sequence_is_build_time_in_epoch_seconds(
    cli: Cli, models: Models, shared_keydir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "b.satchel"
    before = int(time.time())

    report = cli.run(*_build_args(models.float_onnx, out, shared_keydir / "signing.key",
                                  "--json")).json()

    assert before <= report["sequence"] <= int(time.time())


def test_build_options_land_in_the_signed_manifest(
    cli: Cli, models: Models, shared_keydir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "b.satchel"

    cli.run(*_build_args(models.float_onnx, out, shared_keydir / "signing.key",
                         "--arch", "aarch64", "--device-class", "a", "--device-class", "b",
                         "--expires-days", "30", "--probation-s", "120",
                         "--max-p95-latency-ms", "15", "--min-samples", "50",
                         "--max-error-rate", "0.01", "--description", "night model")).ok()

    manifest = _unpack(out, shared_keydir, tmp_path / "staged")
    assert manifest.compatibility.architectures == ("aarch64",)
    assert manifest.compatibility.device_classes == ("a", "b")
    assert manifest.expires is not None
    assert abs(manifest.expires - (utcnow() + timedelta(days=30))) < timedelta(minutes=5)
    policy = manifest.health_policy
    assert (policy.probation_s, policy.max_p95_latency_ms, policy.min_samples) == (120, 15, 50)
    assert policy.max_error_rate == 0.01
    assert manifest.description == "night model"
    (model,) = manifest.models
    assert (model.quantization, model.reference_sha256) == ("none", None)
    (smoke,) = manifest.smoke_tests
    (check,) = smoke.outputs
    assert (check.kind, check.min_top1_agreement, check.min_sqnr_db) == ("classes", 0.99, 30.0)


def test_float_tflite_bundle_runs_on_tflite(
    cli: Cli, models: Models, shared_keydir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "b.satchel"

    cli.run(*_build_args(models.float_tflite, out, shared_keydir / "signing.key",
                         "--samples", models.samples)).ok()

    manifest = _unpack(out, shared_keydir, tmp_path / "staged")
    (model,) = manifest.models
    assert (model.runtime, model.file, model.quantization) == ("tflite", "model.tflite", "none")
    assert list(manifest.compatibility.runtimes) == ["tflite"]
    assert (tmp_path / "staged/model.tflite").read_bytes() == models.float_tflite.read_bytes()
    samples = _npz(models.samples)["input"]
    np.testing.assert_allclose(
        _npz(tmp_path / "staged/smoke/reference.npz")["logits"][:, 0],  # 16 feeds of [1, 10]
        _outputs(models.float_tflite, "tflite", samples), rtol=1e-5, atol=1e-5,
    )


def test_int8_tflite_bundle_is_checked_against_float_tflite_reference(
    cli: Cli, models: Models, shared_keydir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "b.satchel"

    report = cli.run(*_build_args(models.int8_tflite, out, shared_keydir / "signing.key",
                                  "--reference", models.float_tflite, "--json")).json()

    assert report["agreement"]["min_cosine"] >= 0.99
    manifest = _unpack(out, shared_keydir, tmp_path / "staged")
    (model,) = manifest.models
    assert (model.runtime, model.quantization) == ("tflite", "int8")
    assert model.reference_sha256 == _sha256(models.float_tflite)


def test_runtime_comes_from_the_file_extension(
    cli: Cli, models: Models, shared_keydir: Path, tmp_path: Path
) -> None:
    upper = tmp_path / "MODEL.ONNX"
    shutil.copy(models.float_onnx, upper)
    out = tmp_path / "b.satchel"

    cli.run(*_build_args(upper, out, shared_keydir / "signing.key")).ok()

    (model,) = _unpack(out, shared_keydir, tmp_path / "staged").models
    assert (model.runtime, model.file) == ("onnxruntime", "model.onnx")


def test_onnx_file_named_tflite_is_refused(
    cli: Cli, models: Models, shared_keydir: Path, tmp_path: Path
) -> None:
    disguised = tmp_path / "model.tflite"
    shutil.copy(models.float_onnx, disguised)
    out = tmp_path / "b.satchel"

    line = cli.run(*_build_args(disguised, out, shared_keydir / "signing.key")).refusal()

    assert "tflite cannot load model.tflite" in line
    assert not out.exists()


def test_unsupported_model_extension_is_refused(
    cli: Cli, models: Models, shared_keydir: Path, tmp_path: Path
) -> None:
    torch_like = tmp_path / "model.pt"
    shutil.copy(models.float_onnx, torch_like)
    out = tmp_path / "b.satchel"

    line = cli.run(*_build_args(torch_like, out, shared_keydir / "signing.key")).refusal()

    assert "unsupported model file type '.pt'" in line
    assert not out.exists()


def test_reference_that_disagrees_refuses_the_build_and_leaves_nothing(
    cli: Cli, models: Models, shared_keydir: Path, tmp_path: Path, snapshot: Any
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "b.satchel"
    out.write_bytes(b"previous bundle")
    before = snapshot(out_dir)

    line = cli.spawn(*_build_args(models.float_onnx, out, shared_keydir / "signing.key",
                                  "--reference", models.other_onnx)).refusal()

    assert "disagrees with its reference on 32 sample feeds" in line
    assert "output 'logits' (classes)" in line
    assert "SQNR" in line and "dB < required 10.0 dB" in line
    assert "top-1 agreement" in line
    assert snapshot(out_dir) == before


@pytest.mark.parametrize("kind", ["onnx", "tflite"])
def test_int8_model_beyond_strict_thresholds_is_refused_with_figures(
    cli: Cli, models: Models, shared_keydir: Path, tmp_path: Path, kind: str
) -> None:
    shipped, reference = {
        "onnx": (models.int8_onnx, models.float_onnx),
        "tflite": (models.int8_tflite, models.float_tflite),
    }[kind]
    out = tmp_path / "b.satchel"

    line = cli.run(*_build_args(shipped, out, shared_keydir / "signing.key",
                                "--reference", reference,
                                "--min-cosine", "0.99999", "--max-abs-error", "1e-6")).refusal()

    assert "> allowed 1e-06" in line
    assert "< required 1.0000" in line
    assert list(tmp_path.iterdir()) == []


def test_samples_missing_a_model_input_are_refused(
    cli: Cli, models: Models, shared_keydir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "b.satchel"

    line = cli.run(*_build_args(models.int8_onnx, out, shared_keydir / "signing.key",
                                "--samples", models.wrong_samples)).refusal()

    assert "samples hold inputs ['features'], the model expects ['input']" in line
    assert not out.exists()


def test_samples_file_that_is_not_npz_is_refused(
    cli: Cli, models: Models, shared_keydir: Path, tmp_path: Path
) -> None:
    bogus = tmp_path / "samples.npz"
    bogus.write_text("input,1,2,3\n")
    out = tmp_path / "b.satchel"

    line = cli.run(*_build_args(models.int8_onnx, out, shared_keydir / "signing.key",
                                "--samples", bogus)).refusal()

    assert "samples.npz is not an .npz file of arrays" in line
    assert "pickle" not in line
    assert not out.exists()


def test_unwritable_output_is_refused_in_one_line(
    cli: Cli, models: Models, shared_keydir: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")

    line = cli.run(*_build_args(models.float_onnx, blocker / "b.satchel",
                                shared_keydir / "signing.key")).refusal()

    assert "cannot write bundle" in line


def test_signing_key_that_is_not_a_key_is_refused(
    cli: Cli, models: Models, shared_keydir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "b.satchel"

    line = cli.run(*_build_args(models.float_onnx, out, shared_keydir / "root.json")).refusal()

    assert line == f"error: {shared_keydir / 'root.json'}: not a PEM private key"
    assert not out.exists()


def test_the_console_script_ends_after_a_build_with_its_answer_out_and_the_bundle_durable(
    cli: Cli, models: Models, shared_keydir: Path, tmp_path: Path
) -> None:
    # `satchel` skips the interpreter's teardown after a build (bundles/fastexit.py): what
    # it printed must be whole, its exit code 0 and the bundle the one it describes
    out = tmp_path / "b.satchel"

    printed = cli.spawn(*_build_args(models.float_onnx, out, shared_keydir / "signing.key",
                                     "--json")).ok()

    report = json.loads(printed.stdout)
    assert report["bundle_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert report["bundle_bytes"] == out.stat().st_size
    assert _unpack(out, shared_keydir, tmp_path / "staged").version == "2.0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.satchel", "staged"]  # no temp
