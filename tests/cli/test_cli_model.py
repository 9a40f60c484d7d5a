"""`satchel model quantize`: dynamic and static INT8, with sizes and agreement reported."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from agent.runtimes import get_runtime
from manager.build import detect_quantization
from tests.models import sample_inputs

if TYPE_CHECKING:
    from tests.cli.conftest import Cli, Models


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
    assert re.search(r"agreement on 64 samples: max abs error [0-9.e-]+, mean cosine 0\.9", stdout)
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
    assert report["samples"] == 48
    assert report["float_bytes"] == models.float_onnx.stat().st_size
    assert report["int8_bytes"] == out.stat().st_size
    assert report["ratio"] > 2
    assert report["mean_cosine"] > 0.99
    assert report["max_abs_error"] < 0.5
    assert 0.0 <= report["top1_agreement"] <= 1.0
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

    line = cli.run("model", "quantize", models.float_onnx, "-o", out,
                   "--calibration", models.wrong_samples).refusal()

    assert "calibration inputs ['features']" in line and "['input']" in line
    assert not out.exists()


def test_calibration_file_that_is_not_npz_is_refused(
    cli: Cli, models: Models, tmp_path: Path
) -> None:
    bogus = tmp_path / "calibration.npz"
    bogus.write_bytes(b"not a numpy archive")
    out = tmp_path / "out.onnx"

    line = cli.run("model", "quantize", models.float_onnx, "-o", out,
                   "--calibration", bogus).refusal()

    assert "cannot read calibration inputs" in line
    assert not out.exists()
