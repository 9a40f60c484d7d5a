"""`satchel model quantize`: dynamic and static INT8, with sizes and agreement reported."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import numpy_helper

from satchel.agent.runtimes import get_runtime
from satchel.manager.build import detect_quantization
from tests.factory.model_makers import sample_inputs

if TYPE_CHECKING:
    from tests.cli.invoke import Cli
    from tests.cli.model_files import Models


def _quantization_of(path: Path) -> str:
    model = get_runtime("onnxruntime").load(path)
    try:
        return detect_quantization(path, model)
    finally:
        model.close()


def test_dynamic_quantize_prints_sizes_and_agreement(
    cli: Cli, models: Models, tmp_path: Path
) -> None:
    out = tmp_path / "int8.onnx"

    stdout = cli.spawn("model", "quantize", models.float_onnx, "-o", out).ok().stdout

    assert stdout.startswith("dynamic INT8 -> ")
    assert re.search(r"size .* float32 -> .* int8 \([0-9.]+x smaller\)", stdout)
    assert re.search(r"vs float on 64 sample feeds: max abs error [0-9.e-]+, .*top-1 9", stdout)
    assert re.search(r"\n    logits \(classes\): max abs error .*SQNR [0-9.]+ dB", stdout)
    assert stdout.endswith("default checks of bundle build --reference: pass\n")
    assert _quantization_of(out) == "dynamic-int8"
    assert out.stat().st_size < models.float_onnx.stat().st_size


def test_static_quantize_with_calibration_reports_json(
    cli: Cli, models: Models, tmp_path: Path
) -> None:
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, input=sample_inputs(64, 48, seed=3))
    out = tmp_path / "static.onnx"

    report = cli.run("model", "quantize", models.float_onnx, "-o", out,
                     "--calibration", calibration, "--json").json()

    assert report["mode"] == "static"
    assert report["output"] == str(out)
    assert report["samples"] == 48  # rows
    assert report["feeds"] == 1  # [48, 64] fits the declared [batch, 64]: one feed
    assert report["float_bytes"] == models.float_onnx.stat().st_size
    assert report["int8_bytes"] == out.stat().st_size
    assert report["ratio"] > 2
    assert report["mean_cosine"] > 0.99
    assert report["max_abs_error"] < 0.5
    assert 0.0 <= report["top1_agreement"] <= 1.0
    assert report["agreement"]["samples"] == 1
    assert [o["name"] for o in report["agreement"]["outputs"]] == ["logits"]
    assert report["checks"] == [{"name": "logits", "kind": "classes", "max_rel_error": 0.15,
                                 "min_sqnr_db": 10.0, "min_top1_agreement": 0.9}]
    assert report["passed"] is True and report["failures"] == []
    assert _quantization_of(out) == "static-int8"


def test_quantize_of_a_non_onnx_model_is_refused(
    cli: Cli, models: Models, tmp_path: Path
) -> None:
    out = tmp_path / "out.onnx"

    line = cli.spawn("model", "quantize", models.float_tflite, "-o", out).refusal()

    assert models.float_tflite.name in line
    assert list(tmp_path.iterdir()) == []


def test_calibration_without_the_model_input_is_refused(
    cli: Cli, models: Models, tmp_path: Path
) -> None:
    out = tmp_path / "out.onnx"

    line = cli.spawn("model", "quantize", models.float_onnx, "-o", out,
                     "--calibration", models.wrong_samples).refusal()

    assert "calibration inputs ['features']" in line and "['input']" in line
    assert not out.exists()


def test_calibration_file_that_is_not_npz_is_refused(
    cli: Cli, models: Models, tmp_path: Path
) -> None:
    bogus = tmp_path / "calibration.npz"
    bogus.write_bytes(b"not a numpy archive")
    out = tmp_path / "out.onnx"

    line = cli.spawn("model", "quantize", models.float_onnx, "-o", out,
                     "--calibration", bogus).refusal()

    assert line.startswith("error: samples calibration.npz is not an .npz file of arrays")
    assert not out.exists()


def test_samples_that_build_a_bundle_calibrate_the_same_model(
    cli: Cli, models: Models, tmp_path: Path
) -> None:
    out = tmp_path / "static.onnx"

    report = cli.run("model", "quantize", models.float_onnx, "-o", out,
                     "--calibration", models.samples, "--json").json()

    assert report["mode"] == "static" and report["samples"] == 16
    assert report["passed"] is True


def test_the_quantizer_and_onnxruntime_say_nothing_on_stderr(
    cli: Cli, models: Models, tmp_path: Path
) -> None:
    """An unused initializer makes onnxruntime's calibration session log a native warning."""
    proto = onnx.load(str(models.float_onnx))
    proto.graph.initializer.append(
        numpy_helper.from_array(np.zeros(3, np.float32), name="unused")
    )
    src = tmp_path / "unused.onnx"
    onnx.save_model(proto, str(src))

    outcome = cli.spawn("model", "quantize", src, "-o", tmp_path / "static.onnx",
                        "--calibration", models.samples).ok()

    assert outcome.stderr == ""
