"""Smoke tests with the real runtimes: figures, verdicts, quantized models, isolation."""

from __future__ import annotations

import hashlib
import io
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from satchel.agent.config import AgentConfig
from satchel.agent.install.smoketest import (
    AutoSmokeRunner,
    ChildSmokeRunner,
    InProcessSmokeRunner,
    PeakMemory,
    measures_honestly_in_process,
    run_all,
)
from satchel.bundles.manifest import FileEntry, Manifest, ModelEntry, SmokeTest, TensorInfo
from tests.factory.model_makers import INPUT_NAME, OUTPUT_NAME

T0 = datetime(2026, 5, 1, tzinfo=timezone.utc)


def unpacked(tmp_path: Path, model, smoke: dict | None = None,
             inputs: dict | None = None) -> tuple[Manifest, Path]:
    """A release's files directory and manifest, as the installer would hand them over."""
    files = tmp_path / "files"
    (files / "smoke").mkdir(parents=True)
    model_file = f"model{model.path.suffix}"
    shutil.copy(model.path, files / model_file)
    for name, arrays in (("inputs", inputs or model.inputs), ("reference", model.reference)):
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        (files / f"smoke/{name}.npz").write_bytes(buf.getvalue())
    runtime = "onnxruntime" if model_file.endswith(".onnx") else "tflite"
    tests = () if smoke is None else (
        SmokeTest("m", "smoke/inputs.npz", "smoke/reference.npz", **smoke),)
    entries = tuple(
        FileEntry(str(p.relative_to(files)), p.stat().st_size,
                  hashlib.sha256(p.read_bytes()).hexdigest(), 1, "0" * 64)
        for p in sorted(files.rglob("*")) if p.is_file()
    )
    manifest = Manifest(
        name="kws", version="1", sequence=1, created=T0, files=entries, smoke_tests=tests,
        models=(ModelEntry("m", runtime, model_file, (TensorInfo(INPUT_NAME, "FP32", (-1, 16)),),
                           (TensorInfo(OUTPUT_NAME, "FP32", (-1, 4)),)),),
    )
    return manifest, files


@pytest.mark.parametrize("name", ["onnx", "tflite", "tflite-int8"])
def test_report_holds_every_figure(tmp_path, models, name):
    manifest, files = unpacked(tmp_path, models[name],
                               {"max_abs_error": 0.1, "warmup_runs": 2, "latency_runs": 7})

    report = run_all(manifest, files)

    assert report.passed, report.failures
    test = report.tests[0]
    assert set(test["agreement"]) == {"samples", "max_abs_error", "max_rel_error", "min_sqnr_db",
                                      "min_cosine", "mean_cosine", "top1_agreement", "nonfinite",
                                      "outputs"}
    (output,) = test["agreement"]["outputs"]
    assert output["name"] == OUTPUT_NAME and output["sqnr_db"] > 20
    assert test["latency_ms"]["runs"] == 7 and test["latency_ms"]["warmup_runs"] == 2
    assert 0 < test["latency_ms"]["p50"] <= test["latency_ms"]["p95"]
    assert test["memory_mb"]["method"] == "vmhwm-reset" and test["load_ms"] > 0
    assert test["runtime_version"]


def test_int8_model_is_fed_quantized_inputs_and_judged_on_dequantized_outputs(tmp_path, models):
    manifest, files = unpacked(tmp_path, models["tflite-int8"], {"min_cosine": 0.99})

    test = run_all(manifest, files).tests[0]

    assert test["passed"] and 0 < test["agreement"]["max_abs_error"] < 0.2


def test_all_failures_are_reported_together(tmp_path, models):
    manifest, files = unpacked(tmp_path, models["onnx-nan"],
                               {"p95_latency_budget_ms": 1e-9, "min_cosine": 0.9})

    report = run_all(manifest, files)

    assert not report.passed
    text = " | ".join(report.failures)
    assert "NaN/Inf" in text and "cosine" in text and "p95 latency" in text
    assert "latency_ms" in report.tests[0]  # measured even though accuracy already failed


def test_smoke_inputs_that_do_not_match_the_model_fail_the_test(tmp_path, models):
    x = models["onnx"].inputs[INPUT_NAME]
    manifest, files = unpacked(tmp_path, models["onnx"], {}, inputs={"wrong_name": x})

    report = run_all(manifest, files)

    assert not report.passed and "the model expects" in report.failures[0]


def test_bundle_without_smoke_test_still_has_to_load(tmp_path, models):
    manifest, files = unpacked(tmp_path, models["onnx"], None)
    assert run_all(manifest, files).passed
    (files / "model.onnx").write_bytes(b"garbage")
    report = run_all(manifest, files)
    assert not report.passed and "cannot load" in report.failures[0]


def test_child_process_runner_gives_the_same_verdict(tmp_path, models):
    manifest, files = unpacked(tmp_path, models["onnx"], {"max_memory_mb": 1024.0})

    report = ChildSmokeRunner(AgentConfig()).run(manifest, files)

    assert report.passed, report.failures
    memory = report.tests[0]["memory_mb"]
    assert memory["isolation"] == "child" and memory["peak_growth"] > 0


def test_auto_runner_judges_a_memory_budget_in_process_where_it_is_measured_honestly(
    tmp_path, models
):
    manifest, files = unpacked(tmp_path, models["onnx"], {})
    assert AutoSmokeRunner().run(manifest, files).tests[0]["memory_mb"]["isolation"] == (
        "in-process")
    budgeted, _ = unpacked(tmp_path / "b", models["onnx"], {"max_memory_mb": 1024.0})
    memory = AutoSmokeRunner().run(budgeted, files).tests[0]["memory_mb"]
    assert measures_honestly_in_process()  # Linux with glibc, as every test machine
    assert memory["isolation"] == "in-process" and memory["free_memory_returned"]
    assert InProcessSmokeRunner().run(budgeted, files).passed


def test_peak_memory_sees_a_transient_allocation():
    memory = PeakMemory()
    memory.start()
    block = np.ones(64 * 1024 * 1024 // 8)  # 64 MiB, touched
    del block

    assert memory.growth_mb() >= 60
