"""The TFLite adapter against the model kinds devices meet: dynamic shapes, fp16 weights,
int8 and uint8 models, several SignatureDefs, custom ops, and the XNNPACK fallback.

Every model is written by `tests.catalogue.tflite_kinds` and run in a real ai-edge-litert
interpreter, through `get_runtime("tflite").load`.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from satchel.agent.runtimes import (
    InferenceError,
    ModelLoadError,
    TensorSpec,
    dequantize,
    get_runtime,
    quantize,
)
from satchel.agent.runtimes.tflite import TFLiteAdapter, TFLiteModel
from tests.catalogue import tflite_kinds as kinds
from tests.factory.model_makers import onnx_mlp

IN_DIM, HIDDEN, OUT_DIM = 8, 16, 4


@pytest.fixture(scope="module")
def weights() -> kinds.Weights:
    return kinds.make_weights(IN_DIM, HIDDEN, OUT_DIM, seed=11)


def load(path: Path, signature: str | None = None) -> TFLiteModel:
    model = get_runtime("tflite").load(path, signature=signature)
    assert isinstance(model, TFLiteModel)
    return model


def rows(n: int, seed: int = 1, width: int = IN_DIM) -> np.ndarray:
    return kinds.sample_inputs(width, n, seed=seed)


def run_real(model: TFLiteModel, x: np.ndarray) -> np.ndarray:
    """Run one-input, one-output `model` on real values, quantizing around it when it is."""
    spec, out = model.inputs[0], model.outputs[0]
    feed = quantize(x, spec) if spec.quantization else x
    result = model.run({spec.name: feed})[out.name]
    return dequantize(result, out) if out.quantization else result


def tolerance(model: TFLiteModel, kind: str) -> float:
    """What each kind may differ from the float reference by."""
    if kind == "float":
        return 1e-5
    if kind == "fp16":
        return 2e-3  # float16 weights keep about 3 decimal digits
    quantization = model.outputs[0].quantization
    assert quantization is not None
    return 4 * quantization["scale"]  # a few output steps of int8 rounding


def assert_one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# --- the catalogue's kinds, loaded and checked against numpy --------------------------------


@pytest.mark.parametrize("kind", ["float", "fp16", "int8", "uint8"])
def test_every_kind_loads_and_matches_the_float_reference_at_several_batch_sizes(
    tmp_path, weights, kind
):
    model = load(kinds.tflite_mlp_variant(tmp_path / f"{kind}.tflite", weights, kind=kind))
    for n in (1, 5, 2):
        x = rows(n, seed=n)
        got = run_real(model, x)
        assert got.shape == (n, OUT_DIM)
        np.testing.assert_allclose(
            got, kinds.float_forward(weights, x), atol=tolerance(model, kind), rtol=0
        )


@pytest.mark.parametrize(
    ("kind", "datatype"),
    [("float", "FP32"), ("fp16", "FP32"), ("int8", "INT8"), ("uint8", "UINT8")],
)
def test_every_kind_describes_its_tensors_with_a_dynamic_batch(tmp_path, weights, kind, datatype):
    model = load(kinds.tflite_mlp_variant(tmp_path / f"{kind}.tflite", weights, kind=kind))
    [spec] = model.inputs
    assert (spec.name, spec.datatype, spec.shape) == ("input", datatype, (-1, IN_DIM))
    assert [o.shape for o in model.outputs] == [(-1, OUT_DIM)]
    assert (spec.quantization is not None) == (kind in ("int8", "uint8"))


def test_uint8_tensors_carry_zero_points_128_above_int8(tmp_path, weights):
    int8 = load(kinds.tflite_int8(tmp_path / "i8.tflite", weights))
    uint8 = load(kinds.tflite_uint8(tmp_path / "u8.tflite", weights))
    for a, b in ((int8.inputs[0], uint8.inputs[0]), (int8.outputs[0], uint8.outputs[0])):
        assert a.quantization is not None and b.quantization is not None
        assert b.quantization["zero_point"] == a.quantization["zero_point"] + 128
        assert b.quantization["scale"] == pytest.approx(a.quantization["scale"])


@pytest.mark.parametrize("kind", ["float", "fp16", "int8", "uint8"])
def test_altered_weights_make_a_model_far_from_the_original_reference(tmp_path, weights, kind):
    broken = {**weights, "w2": -weights["w2"]}
    model = load(kinds.tflite_mlp_variant(tmp_path / "broken.tflite", broken, kind=kind))
    x = rows(6)
    got = run_real(model, x)
    np.testing.assert_allclose(
        got, kinds.float_forward(broken, x), atol=tolerance(model, kind), rtol=0
    )
    assert np.abs(got - kinds.float_forward(weights, x)).max() > 0.5


# --- dynamic input shapes -------------------------------------------------------------------


def test_catalogue_dynamic_model_does_fail_when_allocated_at_its_placeholder_shape(
    tmp_path, weights
):
    """The trap the adapter must avoid, shown on the bare interpreter."""
    from ai_edge_litert.interpreter import Interpreter

    path = kinds.tflite_dynamic_shape(tmp_path / "dyn.tflite", weights, dynamic_features=True)
    interpreter = Interpreter(model_path=str(path))
    with pytest.raises(RuntimeError, match="XNNPack delegate failed to reshape"):
        interpreter.allocate_tensors()


def test_dynamic_input_shape_model_loads_and_runs_at_two_sizes(tmp_path, weights):
    path = kinds.tflite_dynamic_shape(tmp_path / "dyn.tflite", weights, dynamic_features=True)
    model = load(path)
    assert model.inputs == [TensorSpec("input", "FP32", (-1, -1))]
    for n in (3, 7, 3):
        x = rows(n, seed=n)
        np.testing.assert_allclose(
            model.run({"input": x})["logits"], kinds.float_forward(weights, x), atol=1e-5
        )
    assert model.default_delegates  # resized before allocating: XNNPACK never failed


def test_dynamic_batch_model_loads_and_runs_at_two_batch_sizes(tmp_path, weights):
    model = load(kinds.tflite_dynamic_shape(tmp_path / "dyn.tflite", weights))
    assert model.inputs[0].shape == (-1, IN_DIM)
    for n in (1, 9):
        x = rows(n, seed=n)
        np.testing.assert_allclose(
            model.run({"input": x})["logits"], kinds.float_forward(weights, x), atol=1e-5
        )


def test_fully_dynamic_model_accepts_any_width_and_height(tmp_path):
    model = load(kinds.tflite_dynamic_reduce(tmp_path / "reduce.tflite", offset=0.25))
    assert [s.shape for s in model.inputs] == [(-1, -1)]
    assert {s.name: s.shape for s in model.outputs} == {"shifted": (-1, -1), "total": (-1,)}
    rng = np.random.default_rng(0)
    for shape in ((2, 5), (4, 3), (1, 1), (2, 5)):
        x = rng.standard_normal(shape).astype(np.float32)
        got = model.run({"values": x})
        want = kinds.dynamic_reduce_forward(0.25, x)
        assert set(got) == set(want)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], atol=1e-5)


def test_dynamic_model_still_checks_its_fixed_dimensions_and_rank(tmp_path, weights):
    model = load(kinds.tflite_dynamic_shape(tmp_path / "dyn.tflite", weights))
    with pytest.raises(InferenceError, match=r"must have shape \[-1, 8\], got \[2, 5\]") as e:
        model.run({"input": rows(2, width=5)})
    assert_one_line(e)
    with pytest.raises(InferenceError, match="must have shape"):
        model.run({"input": rows(2).reshape(2, 2, 4)})
    x = rows(2)  # the refusals left the model usable
    np.testing.assert_allclose(
        model.run({"input": x})["logits"], kinds.float_forward(weights, x), atol=1e-5
    )


def test_first_run_of_a_dynamic_model_prints_nothing_on_native_stderr(tmp_path, weights, capfd):
    path = kinds.tflite_dynamic_shape(tmp_path / "dyn.tflite", weights, dynamic_features=True)
    capfd.readouterr()
    model = load(path)
    model.run({"input": rows(3)})  # allocation, and the XNNPACK banner, happen here
    model.run({"input": rows(4)})
    assert capfd.readouterr().err == ""


# --- the XNNPACK fallback -------------------------------------------------------------------


def test_static_model_xnnpack_cannot_prepare_is_loaded_without_default_delegates(
    tmp_path, weights, capfd
):
    # A [1, 12] input over 8-wide weights: XNNPACK refuses 12 values, the builtin kernel
    # reads one row of 8 and ignores the rest.
    path = kinds.tflite_mlp_declared_input(tmp_path / "odd.tflite", weights, (1, 12))
    capfd.readouterr()
    model = load(path)
    assert not model.default_delegates
    x = rows(1, width=12)
    got = model.run({"input": x})["logits"]
    np.testing.assert_allclose(got, kinds.flattened_forward(weights, x), atol=1e-5)
    assert capfd.readouterr().err == ""


def test_feed_xnnpack_cannot_reshape_to_is_retried_once_without_default_delegates(
    tmp_path, weights, capfd
):
    path = kinds.tflite_dynamic_shape(tmp_path / "dyn.tflite", weights, dynamic_features=True)
    model = load(path)
    x = rows(2)
    np.testing.assert_allclose(
        model.run({"input": x})["logits"], kinds.float_forward(weights, x), atol=1e-5
    )
    assert model.default_delegates
    capfd.readouterr()

    odd = rows(1, width=12)
    got = model.run({"input": odd})["logits"]

    np.testing.assert_allclose(got, kinds.flattened_forward(weights, odd), atol=1e-5)
    assert not model.default_delegates
    assert capfd.readouterr().err == ""
    for n in (3, 1):  # the model keeps the builtin kernels, and stays right
        x = rows(n, seed=n)
        np.testing.assert_allclose(
            model.run({"input": x})["logits"], kinds.float_forward(weights, x), atol=1e-5
        )


# --- signatures -----------------------------------------------------------------------------


def test_two_signature_model_runs_serving_default_when_none_is_chosen(tmp_path, weights):
    model = load(kinds.tflite_two_signatures(tmp_path / "two.tflite", weights))
    assert model.signature == "serving_default"
    assert model.signatures() == ["serving_default", "encode"]
    assert model.inputs == [TensorSpec("features", "FP32", (-1, IN_DIM))]
    assert model.outputs == [TensorSpec("scores", "FP32", (-1, OUT_DIM))]
    for n in (2, 5):
        x = rows(n, seed=n)
        np.testing.assert_allclose(
            model.run({"features": x})["scores"], kinds.float_forward(weights, x), atol=1e-5
        )


def test_named_signature_runs_its_own_subgraph_by_its_own_names(tmp_path, weights):
    model = load(kinds.tflite_two_signatures(tmp_path / "two.tflite", weights), signature="encode")
    assert model.signature == "encode"
    assert model.inputs == [TensorSpec("features", "FP32", (-1, IN_DIM))]
    assert model.outputs == [TensorSpec("embedding", "FP32", (-1, HIDDEN))]
    for n in (4, 1):
        x = rows(n, seed=n)
        got = model.run({"features": x})
        assert list(got) == ["embedding"]
        np.testing.assert_allclose(got["embedding"], kinds.encode_forward(weights, x), atol=1e-5)


def test_signature_feeds_use_signature_names_not_tensor_names(tmp_path, weights):
    model = load(kinds.tflite_two_signatures(tmp_path / "two.tflite", weights))
    with pytest.raises(InferenceError, match="unknown input 'serving_default_features:0'") as e:
        model.run({"serving_default_features:0": rows(1)})
    assert_one_line(e)


def test_single_signature_is_used_without_being_named(tmp_path, weights):
    path = kinds.tflite_mlp_variant(tmp_path / "one.tflite", weights, signature="predict")
    model = load(path)
    assert (model.signature, model.signatures()) == ("predict", ["predict"])
    x = rows(3)
    np.testing.assert_allclose(
        model.run({"features": x})["scores"], kinds.float_forward(weights, x), atol=1e-5
    )


def test_quantized_signature_reports_scale_and_zero_point_from_the_runner(tmp_path, weights):
    path = kinds.tflite_mlp_variant(
        tmp_path / "q.tflite", weights, kind="int8", signature="serving_default"
    )
    model = load(path)
    [spec], [out] = model.inputs, model.outputs
    assert (spec.name, spec.datatype, out.name, out.datatype) == (
        "features",
        "INT8",
        "scores",
        "INT8",
    )
    assert spec.quantization is not None and out.quantization is not None
    x = rows(4)
    np.testing.assert_allclose(
        run_real(model, x), kinds.float_forward(weights, x), atol=tolerance(model, "int8")
    )


def test_several_signatures_without_serving_default_are_refused_naming_them(tmp_path, weights):
    path = kinds.tflite_two_signatures(
        tmp_path / "two.tflite", weights, keys=("classify", "encode")
    )
    with pytest.raises(ModelLoadError) as e:
        load(path)
    message = assert_one_line(e)
    assert "two.tflite" in message and "classify, encode" in message and "choose" in message
    assert load(path, signature="classify").outputs[0].name == "scores"


def test_unknown_signature_is_refused_listing_the_known_ones(tmp_path, weights):
    path = kinds.tflite_two_signatures(tmp_path / "two.tflite", weights)
    with pytest.raises(ModelLoadError, match="no signature 'decode'") as e:
        load(path, signature="decode")
    assert "serving_default, encode" in assert_one_line(e)


def test_signature_asked_of_a_model_without_signatures_is_refused(tmp_path, weights):
    path = kinds.tflite_mlp_variant(tmp_path / "plain.tflite", weights)
    with pytest.raises(ModelLoadError, match="has no signature 'serving_default'") as e:
        load(path, signature="serving_default")
    assert "it has no signatures" in assert_one_line(e)
    model = load(path)
    assert (model.signature, model.signatures()) == (None, [])


def test_adapter_lists_signatures_of_a_model_it_would_not_load_unchosen(tmp_path, weights):
    path = kinds.tflite_two_signatures(
        tmp_path / "two.tflite", weights, keys=("classify", "encode")
    )
    assert TFLiteAdapter().signatures(path) == ["classify", "encode"]
    plain = kinds.tflite_mlp_variant(tmp_path / "plain.tflite", weights)
    assert TFLiteAdapter().signatures(plain) == []
    with pytest.raises(ModelLoadError, match="model file not found"):
        TFLiteAdapter().signatures(tmp_path / "missing.tflite")


def test_onnx_model_refuses_a_signature(tmp_path):
    path = onnx_mlp(kinds.make_weights(), tmp_path / "m.onnx")
    with pytest.raises(ModelLoadError, match="onnx models have no signatures") as e:
        get_runtime("onnxruntime").load(path, signature="serving_default")
    assert_one_line(e)


def test_signature_runner_serves_concurrent_callers_at_different_batch_sizes(tmp_path, weights):
    model = load(kinds.tflite_two_signatures(tmp_path / "two.tflite", weights))
    failures: list[str] = []

    def worker(n: int) -> None:
        for _ in range(20):
            x = rows(n, seed=n)
            got = model.run({"features": x})["scores"]
            if not np.allclose(got, kinds.float_forward(weights, x), atol=1e-5):
                failures.append(f"batch {n}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in (1, 2, 3, 4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


# --- custom ops -----------------------------------------------------------------------------


@pytest.mark.parametrize("dynamic_batch", [False, True], ids=["static", "dynamic"])
def test_custom_op_is_refused_at_load_in_one_line(tmp_path, capfd, dynamic_batch):
    path = kinds.tflite_custom_op(tmp_path / "custom.tflite", dynamic_batch=dynamic_batch)
    capfd.readouterr()
    with pytest.raises(ModelLoadError) as e:
        load(path)
    message = assert_one_line(e)
    assert message.startswith("tflite cannot load custom.tflite:")
    assert kinds.CUSTOM_OP_NAME in message
    assert capfd.readouterr().err == ""
