"""The pure-Python model makers and INT8 quantization, checked with the real runtimes."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import tflite

from satchel.agent.runtimes import dequantize, get_runtime, quantize
from tests.factory.model_makers import (
    QuantizeError,
    make_mlp_weights,
    mlp_forward,
    onnx_mlp,
    quantize_onnx,
    sample_inputs,
    tflite_mlp,
    train_mlp,
)


@pytest.fixture(scope="module")
def weights() -> dict[str, np.ndarray]:
    return make_mlp_weights()  # the 64 -> 128 -> 10 default


@pytest.fixture(scope="module")
def float_onnx(tmp_path_factory: pytest.TempPathFactory, weights) -> Path:
    return onnx_mlp(weights, tmp_path_factory.mktemp("float") / "mlp.onnx")


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    model = get_runtime("onnxruntime").load(path)
    try:
        return model.run({"input": x})["logits"]
    finally:
        model.close()


def test_mlp_weights_are_deterministic_per_seed():
    first, again, other = make_mlp_weights(seed=3), make_mlp_weights(seed=3), make_mlp_weights()
    assert {k: v.shape for k, v in first.items()} == {
        "w1": (64, 128),
        "b1": (128,),
        "w2": (128, 10),
        "b2": (10,),
    }
    assert all(v.dtype == np.float32 for v in first.values())
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not np.array_equal(first["w1"], other["w1"])


def test_sample_inputs_are_deterministic_float32():
    x = sample_inputs(16, 4, seed=5)
    assert x.shape == (4, 16) and x.dtype == np.float32
    assert np.array_equal(x, sample_inputs(16, 4, seed=5))


def test_train_mlp_learns_the_clusters_quickly():
    start = time.perf_counter()
    weights, x, y = train_mlp(seed=1)
    elapsed = time.perf_counter() - start
    accuracy = float(np.mean(mlp_forward(weights, x).argmax(axis=1) == y))
    assert accuracy > 0.9
    assert elapsed < 2.0
    assert x.shape == (2000, 16) and x.dtype == np.float32 and y.dtype == np.int64
    assert weights["w2"].shape == (32, 4)


def test_onnx_mlp_matches_numpy_forward(float_onnx, weights):
    x = sample_inputs(64, 32, seed=1)
    np.testing.assert_allclose(run_onnx(float_onnx, x), mlp_forward(weights, x), atol=1e-5)


def test_onnx_mlp_pins_ir_and_opset_the_runtime_accepts(float_onnx):
    model = onnx.load(float_onnx)
    onnx.checker.check_model(model)
    assert model.ir_version == 9
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    (graph_input,) = model.graph.input
    assert graph_input.name == "input"
    assert graph_input.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [o.name for o in model.graph.output] == ["logits"]


def test_nan_model_returns_nan_for_negative_first_feature(tmp_path, weights):
    path = onnx_mlp(weights, tmp_path / "nan.onnx", nan_for_negative_first_feature=True)
    x = sample_inputs(64, 64, seed=2)
    negative = x[:, 0] < 0
    assert 0 < negative.sum() < len(x)

    logits = run_onnx(path, x)

    assert np.isnan(logits[negative]).all()
    np.testing.assert_allclose(logits[~negative], mlp_forward(weights, x[~negative]), atol=1e-5)


def test_slow_model_adds_work_but_gives_the_same_logits(tmp_path, weights):
    # How slow it really is belongs to benchmarks, not unit tests (shared, noisy machines):
    # here we check that the extra work is in the graph and does not change the answer.
    slow = onnx_mlp(weights, tmp_path / "slow.onnx", slow_ms=60)
    fast = onnx_mlp(weights, tmp_path / "fast.onnx")
    x = sample_inputs(64, 1, seed=3)
    model = get_runtime("onnxruntime").load(slow)
    logits = model.run({"input": x})["logits"]
    model.close()
    np.testing.assert_allclose(logits, mlp_forward(weights, x), atol=1e-5)

    def matmuls(path: Path) -> int:
        return sum(n.op_type == "MatMul" for n in onnx.load(str(path)).graph.node)

    assert matmuls(slow) > matmuls(fast)


def test_tflite_model_has_the_structure_runtimes_require(tmp_path, weights):
    path = tflite_mlp(weights, tmp_path / "mlp.tflite", int8=True)
    data = path.read_bytes()
    assert data[4:8] == b"TFL3"
    model = tflite.Model.GetRootAs(data, 0)
    assert model.Version() == 3
    assert model.Buffers(0).DataLength() == 0
    code = model.OperatorCodes(0)
    assert code.BuiltinCode() == tflite.BuiltinOperator.FULLY_CONNECTED
    assert code.DeprecatedBuiltinCode() == tflite.BuiltinOperator.FULLY_CONNECTED
    graph = model.Subgraphs(0)
    first, second = graph.Operators(0), graph.Operators(1)
    options = tflite.FullyConnectedOptions()
    options.Init(first.BuiltinOptions().Bytes, first.BuiltinOptions().Pos)
    assert options.FusedActivationFunction() == tflite.ActivationFunctionType.RELU
    options.Init(second.BuiltinOptions().Bytes, second.BuiltinOptions().Pos)
    assert options.FusedActivationFunction() == tflite.ActivationFunctionType.NONE
    for i in range(graph.TensorsLength()):
        tensor = graph.Tensors(i)
        assert tensor.Type() in (tflite.TensorType.INT8, tflite.TensorType.INT32)
        assert tensor.Quantization().ScaleLength() == 1, tensor.Name()


def test_tflite_float_model_matches_numpy_forward(tmp_path, weights):
    model = get_runtime("tflite").load(tflite_mlp(weights, tmp_path / "mlp.tflite"))
    x = sample_inputs(64, 1, seed=4)
    np.testing.assert_allclose(
        model.run({"input": x})["logits"], mlp_forward(weights, x), atol=1e-5
    )


def test_tflite_int8_model_runs_in_litert_and_agrees_with_float(tmp_path, weights):
    float_path = tflite_mlp(weights, tmp_path / "float.tflite")
    int8_path = tflite_mlp(weights, tmp_path / "int8.tflite", int8=True)
    int8_model = get_runtime("tflite").load(int8_path)
    x = sample_inputs(64, 64, seed=5)

    raw = int8_model.run({"input": quantize(x, int8_model.inputs[0])})["logits"]
    logits = dequantize(raw, int8_model.outputs[0])

    reference = mlp_forward(weights, x)
    assert raw.dtype == np.int8
    assert np.abs(logits - reference).max() < 0.05 * np.ptp(reference)
    assert np.mean(logits.argmax(axis=1) == reference.argmax(axis=1)) >= 0.9
    assert int8_path.stat().st_size < float_path.stat().st_size / 3


def test_quantize_dynamic_shrinks_model_and_agrees(tmp_path, float_onnx):
    dst = tmp_path / "dynamic.onnx"
    report = quantize_onnx(float_onnx, dst)

    assert report.mode == "dynamic"
    assert report.int8_bytes == dst.stat().st_size
    assert report.float_bytes == float_onnx.stat().st_size
    assert report.ratio > 3.0
    assert report.samples == 64
    assert report.max_abs_error < 0.2
    assert report.mean_cosine > 0.999
    assert report.top1_agreement >= 0.95
    x = sample_inputs(64, 8, seed=6)
    np.testing.assert_allclose(run_onnx(dst, x), run_onnx(float_onnx, x), atol=0.2)


def test_quantize_static_with_calibration(tmp_path, float_onnx):
    dst = tmp_path / "static.onnx"
    calibration = {"input": sample_inputs(64, 200, seed=7)}
    report = quantize_onnx(float_onnx, dst, calibration)

    assert report.mode == "static"
    assert report.samples == 200
    assert report.ratio > 2.5
    assert report.max_abs_error < 0.3
    assert report.mean_cosine > 0.999
    assert report.top1_agreement >= 0.95
    ops = {node.op_type for node in onnx.load(dst).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_quantize_refuses_calibration_for_another_input_and_writes_nothing(tmp_path, float_onnx):
    dst = tmp_path / "out.onnx"
    with pytest.raises(QuantizeError, match=r"calibration inputs \['image'\] do not match"):
        quantize_onnx(float_onnx, dst, {"image": sample_inputs(64, 10)})
    assert not dst.exists()


def test_quantize_corrupt_model_raises_quantize_error_and_writes_nothing(tmp_path):
    src, dst = tmp_path / "corrupt.onnx", tmp_path / "out.onnx"
    src.write_bytes(b"not an onnx model")
    with pytest.raises(QuantizeError, match="cannot load corrupt.onnx"):
        quantize_onnx(src, dst)
    assert not dst.exists()
