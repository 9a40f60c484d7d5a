"""The runtime adapters, against real onnxruntime and ai-edge-litert interpreters."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from satchel.agent.runtimes import (
    InferenceError,
    LoadedModel,
    ModelLoadError,
    RuntimeUnavailableError,
    UnsupportedModelError,
    dequantize,
    get_runtime,
    installed_runtimes,
    quantize,
    runtime_for_file,
)
from satchel.agent.runtimes.tflite import TFLiteAdapter
from tests.factory.model_makers import (
    make_mlp_weights,
    mlp_forward,
    onnx_mlp,
    sample_inputs,
    tflite_mlp,
)

IN_DIM, HIDDEN, OUT_DIM = 8, 16, 3


@pytest.fixture(scope="module")
def weights() -> dict[str, np.ndarray]:
    return make_mlp_weights(IN_DIM, HIDDEN, OUT_DIM, seed=7)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory, weights) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("models")
    return {
        "onnxruntime": onnx_mlp(weights, directory / "mlp.onnx"),
        "tflite": tflite_mlp(weights, directory / "mlp.tflite"),
        "tflite-int8": tflite_mlp(weights, directory / "mlp-int8.tflite", int8=True),
    }


def load(path: Path, **kwargs) -> LoadedModel:
    return get_runtime(runtime_for_file(path)).load(path, **kwargs)


@pytest.mark.parametrize(
    ("name", "runtime"),
    [("m.onnx", "onnxruntime"), ("m.tflite", "tflite"), ("M.ONNX", "onnxruntime")],
)
def test_runtime_is_chosen_from_the_file_extension(name, runtime):
    assert runtime_for_file(Path(name)) == runtime


@pytest.mark.parametrize("name", ["model.pt", "model.onnx.zst", "model"])
def test_runtime_for_unknown_extension_is_refused(name):
    with pytest.raises(UnsupportedModelError, match="expected .onnx or .tflite"):
        runtime_for_file(Path(name))


def test_unknown_runtime_is_unavailable():
    with pytest.raises(RuntimeUnavailableError, match="unknown runtime 'tensorrt'"):
        get_runtime("tensorrt")


def test_installed_runtimes_report_package_versions():
    import ai_edge_litert  # noqa: F401  (the test is about what this venv has)
    import onnxruntime

    runtimes = installed_runtimes()
    assert runtimes["onnxruntime"] == onnxruntime.__version__
    assert runtimes["tflite"]
    assert TFLiteAdapter().package() == "ai-edge-litert"  # numpy 2: never tflite-runtime


def test_importing_runtimes_does_not_import_ml_runtimes():
    code = (
        "import sys, agent.runtimes as r; r.runtime_for_file(__import__('pathlib').Path('a.onnx'));"
        "print(sorted(m for m in sys.modules if 'onnxruntime' in m or 'litert' in m))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_onnx_model_describes_dynamic_batch_and_kserve_datatypes(model_files):
    model = load(model_files["onnxruntime"])
    assert model.runtime == "onnxruntime"
    assert [(t.name, t.datatype, t.shape) for t in model.inputs] == [
        ("input", "FP32", (-1, IN_DIM))
    ]
    assert [(t.name, t.datatype, t.shape) for t in model.outputs] == [
        ("logits", "FP32", (-1, OUT_DIM))
    ]
    assert model.inputs[0].quantization is None


def test_tflite_int8_tensors_report_scale_and_zero_point(model_files):
    model = load(model_files["tflite-int8"])
    assert model.runtime == "tflite"
    (spec,) = model.inputs
    assert (spec.name, spec.datatype, spec.shape) == ("input", "INT8", (1, IN_DIM))
    assert spec.quantization is not None
    assert spec.quantization["scale"] > 0
    assert -128 <= spec.quantization["zero_point"] <= 127
    assert model.outputs[0].quantization is not None


@pytest.mark.parametrize("kind", ["onnxruntime", "tflite"])
def test_both_runtimes_match_the_numpy_reference(model_files, weights, kind):
    x = sample_inputs(IN_DIM, 1, seed=1)
    model = load(model_files[kind], threads=1)
    logits = model.run({"input": x})["logits"]
    np.testing.assert_allclose(logits, mlp_forward(weights, x), atol=1e-5)


def test_tflite_batch_is_resized_to_the_feed_and_back(model_files, weights):
    model = load(model_files["tflite"])
    for rows in (5, 1, 3):
        x = sample_inputs(IN_DIM, rows, seed=rows)
        logits = model.run({"input": x})["logits"]
        assert logits.shape == (rows, OUT_DIM)
        np.testing.assert_allclose(logits, mlp_forward(weights, x), atol=1e-5)


def test_tflite_int8_round_trip_through_quantize_helpers(model_files, weights):
    model = load(model_files["tflite-int8"])
    x = sample_inputs(IN_DIM, 16, seed=2)
    raw = model.run({"input": quantize(x, model.inputs[0])})["logits"]
    assert raw.dtype == np.int8
    logits = dequantize(raw, model.outputs[0])
    reference = mlp_forward(weights, x)
    assert np.abs(logits - reference).max() < 0.05 * np.ptp(reference)


@pytest.mark.parametrize(
    ("suffix", "content"),
    [
        (".onnx", b"\x08\x07garbage that is not a protobuf graph" * 10),
        (".onnx", b""),
        (".tflite", b"TFL3" + bytes(range(256)) * 4),
        (".tflite", b""),
    ],
)
def test_corrupt_model_file_raises_model_load_error(tmp_path, suffix, content):
    path = tmp_path / f"corrupt{suffix}"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match="cannot load corrupt"):
        load(path)


@pytest.mark.parametrize("kind", ["onnxruntime", "tflite"])
def test_truncated_model_file_raises_model_load_error(tmp_path, model_files, kind):
    source = model_files[kind]
    path = tmp_path / source.name
    path.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    with pytest.raises(ModelLoadError):
        load(path)


@pytest.mark.parametrize("suffix", [".onnx", ".tflite"])
def test_missing_model_file_raises_model_load_error(tmp_path, suffix):
    with pytest.raises(ModelLoadError, match="model file not found"):
        load(tmp_path / f"absent{suffix}")


@pytest.mark.parametrize("kind", ["onnxruntime", "tflite"])
def test_wrong_input_name_raises_inference_error(model_files, kind):
    model = load(model_files[kind])
    with pytest.raises(InferenceError, match="unknown input 'image'"):
        model.run({"image": sample_inputs(IN_DIM, 1)})


@pytest.mark.parametrize("kind", ["onnxruntime", "tflite"])
def test_missing_input_raises_inference_error(model_files, kind):
    with pytest.raises(InferenceError, match="missing input 'input'"):
        load(model_files[kind]).run({})


@pytest.mark.parametrize("kind", ["onnxruntime", "tflite", "tflite-int8"])
def test_wrong_input_datatype_raises_inference_error(model_files, kind):
    with pytest.raises(InferenceError, match="input 'input' must be"):
        load(model_files[kind]).run({"input": np.zeros((1, IN_DIM), np.float64)})


@pytest.mark.parametrize("kind", ["onnxruntime", "tflite"])
def test_wrong_input_shape_raises_inference_error(model_files, kind):
    with pytest.raises(InferenceError, match=r"must have shape \[.*got \[1, 5\]"):
        load(model_files[kind]).run({"input": np.zeros((1, 5), np.float32)})


@pytest.mark.parametrize("kind", ["onnxruntime", "tflite"])
def test_closed_model_refuses_to_run(model_files, kind):
    model = load(model_files[kind])
    model.close()
    with pytest.raises(InferenceError, match="closed"):
        model.run({"input": sample_inputs(IN_DIM, 1)})


@pytest.mark.parametrize("kind", ["onnxruntime", "tflite"])
def test_concurrent_callers_each_get_their_own_result(model_files, weights, kind):
    model = load(model_files[kind])
    # Different batch sizes per thread also exercise the tflite resize under the lock.
    feeds = [sample_inputs(IN_DIM, 1 + i % 3, seed=i) for i in range(8)]
    failures: list[str] = []

    def worker(x: np.ndarray) -> None:
        for _ in range(25):
            logits = model.run({"input": x})["logits"]
            if not np.allclose(logits, mlp_forward(weights, x), atol=1e-5):
                failures.append(f"wrong result for a batch of {len(x)}")

    threads = [threading.Thread(target=worker, args=(x,)) for x in feeds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
