"""TFLite models of the kinds devices meet, written without TensorFlow.

Each maker writes a `.tflite` file with the `tflite` package's flatbuffer
builders and returns its path: dynamic input shapes, float16 weights behind a
DEQUANTIZE (what TFLite's fp16 post-training quantization produces), fully
quantized int8 and uint8 models, a model with two SignatureDefs over two
subgraphs, and one that uses a CUSTOM operator no runtime knows.

Makers take the weights (or the constant they compute with), so a caller makes
a "broken" release by passing altered weights; `float_forward` and the other
`*_forward` functions are the numpy references to compare a run against.

Dynamic dimensions are written the way the TFLite converter writes them:
`shape` holds 1 where `shape_signature` holds -1.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np

from satchel.manager.modelgen import activation_params, int32_bias, symmetric_int8
from satchel.manager.tflite_writer import (
    ADD,
    DEQUANTIZE,
    FLOAT16,
    FLOAT32,
    FULLY_CONNECTED,
    INT8,
    INT32,
    QUANTIZE,
    SUM,
    UINT8,
    OpDef,
    Signature,
    Subgraph,
    TensorDef,
    write_model,
)

Weights = dict[str, np.ndarray]  # "w1" [in, hidden], "b1" [hidden], "w2" [hidden, out], "b2" [out]
Kind = Literal["float", "fp16", "int8", "uint8"]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
SERVING_DEFAULT = "serving_default"
CUSTOM_OP_NAME = "SatchelMysteryOp"
_CALIBRATION_SAMPLES = 256  # rows used to pick activation ranges when the caller gives none

# Operator versions the runtimes register for these type combinations (see TFLite's
# op_version.cc): DEQUANTIZE from float16 is v3; int8 FULLY_CONNECTED v1 runs everywhere.
_FP16_DEQUANTIZE = 3


# --- weights and numpy references ---------------------------------------------------------


def make_weights(in_dim: int = 8, hidden: int = 16, out_dim: int = 4, seed: int = 0) -> Weights:
    """Deterministic He-initialised two-layer MLP weights (float32), small non-zero biases."""
    rng = np.random.default_rng(seed)
    return {
        "w1": (rng.standard_normal((in_dim, hidden)) * math.sqrt(2.0 / in_dim)).astype(np.float32),
        "b1": (rng.standard_normal(hidden) * 0.1).astype(np.float32),
        "w2": (rng.standard_normal((hidden, out_dim)) * math.sqrt(2.0 / hidden)).astype(np.float32),
        "b2": (rng.standard_normal(out_dim) * 0.1).astype(np.float32),
    }


def sample_inputs(in_dim: int, n: int, seed: int = 0) -> np.ndarray:
    """`n` deterministic standard-normal float32 rows of width `in_dim`."""
    return np.random.default_rng(seed).standard_normal((n, in_dim)).astype(np.float32)


def encode_forward(weights: Weights, x: np.ndarray) -> np.ndarray:
    """The first layer alone: relu(x @ w1 + b1), computed in float64, as float32."""
    hidden = np.maximum(np.asarray(x, np.float64) @ weights["w1"] + weights["b1"], 0.0)
    return hidden.astype(np.float32)


def float_forward(weights: Weights, x: np.ndarray) -> np.ndarray:
    """The float reference of every MLP kind: relu(x @ w1 + b1) @ w2 + b2."""
    hidden = encode_forward(weights, x).astype(np.float64)
    return (hidden @ weights["w2"] + weights["b2"]).astype(np.float32)


def flattened_forward(weights: Weights, x: np.ndarray) -> np.ndarray:
    """`float_forward` as TFLite's builtin FULLY_CONNECTED sees any input: the values
    flattened, cut into size // in_dim whole rows of in_dim, the remainder ignored."""
    in_dim = weights["w1"].shape[0]
    flat = np.asarray(x).reshape(-1)
    rows = flat.size // in_dim
    return float_forward(weights, flat[: rows * in_dim].reshape(rows, in_dim))


def dynamic_reduce_forward(offset: float, x: np.ndarray) -> dict[str, np.ndarray]:
    """The reference of `tflite_dynamic_reduce`: "shifted" = x + offset, "total" = row sums."""
    shifted = np.asarray(x, np.float64) + offset
    return {"shifted": shifted.astype(np.float32), "total": shifted.sum(axis=1).astype(np.float32)}


# --- makers -------------------------------------------------------------------------------


def tflite_mlp_variant(
    path: Path,
    weights: Weights,
    *,
    kind: Kind = "float",
    dynamic_batch: bool = True,
    calibration: np.ndarray | None = None,
    signature: str | None = None,
) -> Path:
    """Write a two-layer MLP (FULLY_CONNECTED with fused ReLU, then FULLY_CONNECTED):
    input "input" [batch, in_dim] -> output "logits" [batch, out_dim].

    `kind`: "float" (float32 throughout), "fp16" (float16 weight buffers, each
    through a DEQUANTIZE to float32), "int8" (int8 in and out, int32 biases),
    "uint8" (uint8 in and out around an int8 body, joined by QUANTIZE ops, as
    the converter writes uint8 I/O). Quantized kinds pick activation ranges on
    `calibration` (default: 256 `sample_inputs` rows). `dynamic_batch` writes
    the batch dimension as -1. `signature` adds one SignatureDef of that name
    over the graph (input "features", output "scores"). Returns `path`.
    Raises OSError when the file cannot be written.
    """
    in_dim = weights["w1"].shape[0]
    if kind in ("int8", "uint8"):
        if calibration is None:
            calibration = sample_inputs(in_dim, _CALIBRATION_SAMPLES)
        graph = _quantized_mlp(weights, calibration, dynamic_batch, uint8_io=kind == "uint8")
    else:
        graph = _float_mlp(weights, dynamic_batch, fp16=kind == "fp16")
    signatures = []
    if signature is not None:
        signatures.append(
            Signature(signature, 0, {"features": graph.inputs[0]}, {"scores": graph.outputs[0]})
        )
    return write_model(path, [graph], signatures)


def tflite_dynamic_shape(path: Path, weights: Weights, *, dynamic_features: bool = False) -> Path:
    """Write a float MLP whose input is [-1, in_dim] (or [-1, -1] with `dynamic_features`).

    With `dynamic_features`, allocating at the placeholder shape [1, 1] fails inside
    the XNNPACK delegate (the FULLY_CONNECTED weights want in_dim columns): the
    model only runs once its input is resized to a real feed. Returns `path`.
    Raises OSError when the file cannot be written.
    """
    in_dim = weights["w1"].shape[0]
    return tflite_mlp_declared_input(path, weights, (-1, -1) if dynamic_features else (-1, in_dim))


def tflite_mlp_declared_input(path: Path, weights: Weights, input_shape: tuple[int, ...]) -> Path:
    """Write the float MLP with its input declared as `input_shape` (-1: dynamic).

    FULLY_CONNECTED flattens its input into rows of in_dim values. The builtin
    kernel reads size // in_dim whole rows (`flattened_forward`); the XNNPACK
    delegate refuses a size that is not a multiple of in_dim ("failed to
    reshape"), so e.g. a static [1, 12] input over in_dim 8 runs only without it.
    Returns `path`. Raises OSError when the file cannot be written.
    """
    graph = _float_mlp(weights, dynamic_batch=True, fp16=False)
    graph.tensors[graph.inputs[0]] = _replace_shape(graph.tensors[graph.inputs[0]], input_shape)
    return write_model(path, [graph])


def tflite_dynamic_reduce(path: Path, offset: float = 0.5) -> Path:
    """Write a model over a fully dynamic [-1, -1] float input "values":
    "shifted" = values + offset (ADD of a scalar), "total" = SUM of "shifted" over axis 1.

    `offset` plays the weights' part (see `dynamic_reduce_forward`). Returns `path`.
    Raises OSError when the file cannot be written.
    """
    tensors = [
        TensorDef("values", (-1, -1), FLOAT32),
        TensorDef("offset", (), FLOAT32, np.array(offset, np.float32)),
        TensorDef("shifted", (-1, -1), FLOAT32),
        TensorDef("axis", (1,), INT32, np.array([1], np.int32)),
        TensorDef("total", (-1,), FLOAT32),
    ]
    ops = [OpDef(ADD, (0, 1), (2,)), OpDef(SUM, (2, 3), (4,))]
    return write_model(path, [Subgraph("main", tensors, (0,), (2, 4), ops)])


def tflite_fp16_weights(path: Path, weights: Weights, *, dynamic_batch: bool = True) -> Path:
    """Write the MLP with float16 weight buffers behind DEQUANTIZE ops (fp16 PTQ's layout).

    Returns `path`. Raises OSError when the file cannot be written.
    """
    return tflite_mlp_variant(path, weights, kind="fp16", dynamic_batch=dynamic_batch)


def tflite_int8(
    path: Path,
    weights: Weights,
    *,
    calibration: np.ndarray | None = None,
    dynamic_batch: bool = True,
) -> Path:
    """Write the MLP fully quantized to int8 (int8 input and output, per-tensor scales).

    Returns `path`. Raises OSError when the file cannot be written.
    """
    return tflite_mlp_variant(
        path, weights, kind="int8", calibration=calibration, dynamic_batch=dynamic_batch
    )


def tflite_uint8(
    path: Path,
    weights: Weights,
    *,
    calibration: np.ndarray | None = None,
    dynamic_batch: bool = True,
) -> Path:
    """Write the MLP with uint8 input and output (zero points shifted by 128) around int8 ops.

    Returns `path`. Raises OSError when the file cannot be written.
    """
    return tflite_mlp_variant(
        path, weights, kind="uint8", calibration=calibration, dynamic_batch=dynamic_batch
    )


def tflite_two_signatures(
    path: Path,
    weights: Weights,
    *,
    keys: tuple[str, str] = (SERVING_DEFAULT, "encode"),
) -> Path:
    """Write a model with two SignatureDefs over two subgraphs, as the converter names them.

    `keys[0]` (subgraph 0): input "features" -> output "scores" (`float_forward`).
    `keys[1]` (subgraph 1): input "features" -> output "embedding" (`encode_forward`).
    The tensors inside are named like the converter's ("serving_default_features:0",
    "StatefulPartitionedCall:0"), not like the signature's keys. Returns `path`.
    Raises OSError when the file cannot be written.
    """
    full = _float_mlp(weights, dynamic_batch=True, fp16=False)
    full.tensors[full.inputs[0]] = _rename(full.tensors[full.inputs[0]], f"{keys[0]}_features:0")
    full.tensors[full.outputs[0]] = _rename(
        full.tensors[full.outputs[0]], "StatefulPartitionedCall:0"
    )
    in_dim, hidden = weights["w1"].shape
    encoder = Subgraph(
        keys[1],
        [
            TensorDef(f"{keys[1]}_features:0", (-1, in_dim), FLOAT32),
            TensorDef("encode/fc/weights", (hidden, in_dim), FLOAT32, _f32(weights["w1"].T)),
            TensorDef("encode/fc/bias", (hidden,), FLOAT32, _f32(weights["b1"])),
            TensorDef("StatefulPartitionedCall_1:0", (-1, hidden), FLOAT32),
        ],
        (0,),
        (3,),
        [OpDef(FULLY_CONNECTED, (0, 1, 2), (3,), relu=True)],
    )
    signatures = [
        Signature(keys[0], 0, {"features": full.inputs[0]}, {"scores": full.outputs[0]}),
        Signature(keys[1], 1, {"features": 0}, {"embedding": 3}),
    ]
    return write_model(path, [full, encoder], signatures)


def tflite_custom_op(
    path: Path, op_name: str = CUSTOM_OP_NAME, *, dynamic_batch: bool = False
) -> Path:
    """Write a [1, 4] float model (or [-1, 4] with `dynamic_batch`) whose only operator
    is the CUSTOM op `op_name`.

    No runtime registers it, so loading must be refused. Returns `path`.
    Raises OSError when the file cannot be written.
    """
    batch = -1 if dynamic_batch else 1
    tensors = [TensorDef("input", (batch, 4), FLOAT32), TensorDef("output", (batch, 4), FLOAT32)]
    ops = [OpDef(op_name, (0,), (1,))]
    return write_model(path, [Subgraph("main", tensors, (0,), (1,), ops)])


def _f32(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.float32)


def _rename(tensor: TensorDef, name: str) -> TensorDef:
    return TensorDef(name, tensor.shape, tensor.type, tensor.data, tensor.quant)


def _replace_shape(tensor: TensorDef, shape: tuple[int, ...]) -> TensorDef:
    return TensorDef(tensor.name, shape, tensor.type, tensor.data, tensor.quant)


def _float_mlp(weights: Weights, dynamic_batch: bool, fp16: bool) -> Subgraph:
    in_dim, hidden = weights["w1"].shape
    out_dim = weights["w2"].shape[1]
    batch = -1 if dynamic_batch else 1
    tensors = [
        TensorDef(INPUT_NAME, (batch, in_dim), FLOAT32),
        TensorDef("fc1/weights", (hidden, in_dim), FLOAT32, _f32(weights["w1"].T)),
        TensorDef("fc1/bias", (hidden,), FLOAT32, _f32(weights["b1"])),
        TensorDef("hidden", (batch, hidden), FLOAT32),
        TensorDef("fc2/weights", (out_dim, hidden), FLOAT32, _f32(weights["w2"].T)),
        TensorDef("fc2/bias", (out_dim,), FLOAT32, _f32(weights["b2"])),
        TensorDef(OUTPUT_NAME, (batch, out_dim), FLOAT32),
    ]
    ops = [
        OpDef(FULLY_CONNECTED, (0, 1, 2), (3,), relu=True),
        OpDef(FULLY_CONNECTED, (3, 4, 5), (6,)),
    ]
    if fp16:
        # Each float32 constant becomes the output of a DEQUANTIZE from a float16 twin.
        for index in (1, 2, 4, 5):
            constant = tensors[index]
            assert constant.data is not None
            half = constant.data.astype(np.float16)
            tensors[index] = TensorDef(constant.name, constant.shape, FLOAT32)
            tensors.append(TensorDef(f"{constant.name}/fp16", constant.shape, FLOAT16, half))
            dequantize = OpDef(DEQUANTIZE, (len(tensors) - 1,), (index,), version=_FP16_DEQUANTIZE)
            ops.insert(0, dequantize)
    return Subgraph("main", tensors, (0,), (6,), ops)


def _quantized_mlp(
    weights: Weights, calibration: np.ndarray, dynamic_batch: bool, *, uint8_io: bool
) -> Subgraph:
    in_dim, hidden = weights["w1"].shape
    out_dim = weights["w2"].shape[1]
    batch = -1 if dynamic_batch else 1
    x = np.asarray(calibration, np.float64)
    h = np.maximum(x @ weights["w1"] + weights["b1"], 0.0)
    y = h @ weights["w2"] + weights["b2"]
    q_in, q_hidden, q_out = (activation_params(a) for a in (x, h, y))
    w1, s_w1 = symmetric_int8(weights["w1"].T)
    w2, s_w2 = symmetric_int8(weights["w2"].T)
    b1 = int32_bias(weights["b1"], q_in[0] * s_w1)
    b2 = int32_bias(weights["b2"], q_hidden[0] * s_w2)
    body_in = "input_int8" if uint8_io else INPUT_NAME
    body_out = "logits_int8" if uint8_io else OUTPUT_NAME
    tensors = [
        TensorDef(body_in, (batch, in_dim), INT8, None, q_in),
        TensorDef("fc1/weights", (hidden, in_dim), INT8, w1, (s_w1, 0)),
        TensorDef("fc1/bias", (hidden,), INT32, b1, (q_in[0] * s_w1, 0)),
        TensorDef("hidden", (batch, hidden), INT8, None, q_hidden),
        TensorDef("fc2/weights", (out_dim, hidden), INT8, w2, (s_w2, 0)),
        TensorDef("fc2/bias", (out_dim,), INT32, b2, (q_hidden[0] * s_w2, 0)),
        TensorDef(body_out, (batch, out_dim), INT8, None, q_out),
    ]
    ops = [
        OpDef(FULLY_CONNECTED, (0, 1, 2), (3,), relu=True),
        OpDef(FULLY_CONNECTED, (3, 4, 5), (6,)),
    ]
    if not uint8_io:
        return Subgraph("main", tensors, (0,), (6,), ops)
    # uint8 shares int8's scale; its zero point sits 128 higher, so QUANTIZE only shifts.
    tensors.append(TensorDef(INPUT_NAME, (batch, in_dim), UINT8, None, (q_in[0], q_in[1] + 128)))
    tensors.append(
        TensorDef(OUTPUT_NAME, (batch, out_dim), UINT8, None, (q_out[0], q_out[1] + 128))
    )
    ops = [OpDef(QUANTIZE, (7,), (0,)), *ops, OpDef(QUANTIZE, (6,), (8,))]
    return Subgraph("main", tensors, (7,), (8,), ops)





