"""Small demo and test models, made in pure Python: no TensorFlow, no PyTorch.

A two-layer MLP (dense, ReLU, dense) is trained or initialised in numpy and
written as ONNX (with `onnx.helper`) or TFLite (with the `tflite` package's
flatbuffer schema builders), float32 or int8. Two deliberately bad ONNX
variants serve the agent's safety nets: one whose outputs turn NaN for some
inputs (health rollback), one that is slow on purpose (latency budgets).

onnx, tflite and flatbuffers are imported only by the writers that need them (each takes
about half a second to import), so training and the numpy forward pass load numpy alone.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from satchel.manager.tflite_writer import (
    FLOAT32,
    FULLY_CONNECTED,
    INT8,
    INT32,
    OpDef,
    Subgraph,
    TensorDef,
    write_model,
)

Weights = dict[str, np.ndarray]  # "w1" [in, hidden], "b1" [hidden], "w2" [hidden, out], "b2" [out]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_IR_VERSION = 9  # onnxruntime 1.31 loads IR <= 13; onnx 1.23 would stamp 14
DEFAULT_OPSET = 17  # onnx 1.23 would stamp 28, which onnxruntime 1.31 rejects
_SLOW_MATRIX_SIZE = 256  # side of the square MatMuls that make the slow model slow
_CALIBRATION_SAMPLES = 256  # inputs used to pick int8 activation ranges by default


def sample_inputs(in_dim: int, n: int, seed: int = 0) -> np.ndarray:
    """`n` deterministic standard-normal float32 input rows of width `in_dim`."""
    return np.random.default_rng(seed).standard_normal((n, in_dim)).astype(np.float32)


def make_mlp_weights(
    in_dim: int = 64, hidden: int = 128, out_dim: int = 10, seed: int = 0
) -> Weights:
    """Deterministic He-initialised MLP weights (float32), with small non-zero biases."""
    rng = np.random.default_rng(seed)
    return {
        "w1": (rng.standard_normal((in_dim, hidden)) * math.sqrt(2.0 / in_dim)).astype(np.float32),
        "b1": (rng.standard_normal(hidden) * 0.1).astype(np.float32),
        "w2": (rng.standard_normal((hidden, out_dim)) * math.sqrt(2.0 / hidden)).astype(np.float32),
        "b2": (rng.standard_normal(out_dim) * 0.1).astype(np.float32),
    }


def mlp_forward(weights: Weights, x: np.ndarray) -> np.ndarray:
    """The float reference: logits = relu(x @ w1 + b1) @ w2 + b2, computed in float64."""
    hidden = np.maximum(np.asarray(x, np.float64) @ weights["w1"] + weights["b1"], 0.0)
    return (hidden @ weights["w2"] + weights["b2"]).astype(np.float32)


def train_mlp(
    n_samples: int = 2000,
    in_dim: int = 16,
    hidden: int = 32,
    classes: int = 4,
    epochs: int = 30,
    seed: int = 0,
    learning_rate: float = 0.01,
    batch_size: int = 64,
) -> tuple[Weights, np.ndarray, np.ndarray]:
    """Train a small classifier on synthetic Gaussian clusters, with Adam, in numpy.

    Returns (weights, X float32 [n, in_dim], y int64 [n]). Deterministic for a seed.
    """
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((classes, in_dim)) * 1.5
    y = rng.integers(0, classes, n_samples)
    x = (centers[y] + rng.standard_normal((n_samples, in_dim))).astype(np.float32)
    params = {
        k: v.astype(np.float64) for k, v in make_mlp_weights(in_dim, hidden, classes, seed).items()
    }
    adam = _Adam(params, learning_rate)
    for _ in range(epochs):
        order = rng.permutation(n_samples)
        for start in range(0, n_samples, batch_size):
            batch = order[start : start + batch_size]
            adam.step(_cross_entropy_gradients(params, x[batch], y[batch]))
    weights = {k: v.astype(np.float32) for k, v in params.items()}
    return weights, x, y.astype(np.int64)


def _cross_entropy_gradients(
    params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray
) -> dict[str, np.ndarray]:
    """Gradients of the mean softmax cross-entropy of the MLP on one batch."""
    pre = x @ params["w1"] + params["b1"]
    hidden = np.maximum(pre, 0.0)
    logits = hidden @ params["w2"] + params["b2"]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    d_logits = probs
    d_logits[np.arange(len(y)), y] -= 1.0
    d_logits /= len(y)
    d_hidden = (d_logits @ params["w2"].T) * (pre > 0)
    return {
        "w1": x.T @ d_hidden,
        "b1": d_hidden.sum(axis=0),
        "w2": hidden.T @ d_logits,
        "b2": d_logits.sum(axis=0),
    }


class _Adam:
    """Adam with the usual defaults, updating the parameter arrays in place."""

    def __init__(self, params: dict[str, np.ndarray], learning_rate: float) -> None:
        self.params = params
        self.learning_rate = learning_rate
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.t = 0

    def step(self, grads: dict[str, np.ndarray], b1: float = 0.9, b2: float = 0.999) -> None:
        self.t += 1
        for k, g in grads.items():
            self.m[k] = b1 * self.m[k] + (1 - b1) * g
            self.v[k] = b2 * self.v[k] + (1 - b2) * g * g
            m_hat = self.m[k] / (1 - b1**self.t)
            v_hat = self.v[k] / (1 - b2**self.t)
            self.params[k] -= self.learning_rate * m_hat / (np.sqrt(v_hat) + 1e-8)


# --- ONNX ---------------------------------------------------------------------------------


def onnx_mlp(
    weights: Weights,
    path: Path,
    *,
    ir_version: int = DEFAULT_IR_VERSION,
    opset: int = DEFAULT_OPSET,
    nan_for_negative_first_feature: bool = False,
    slow_ms: float = 0,
) -> Path:
    """Write a float32 ONNX MLP: input "input" [batch, in_dim] -> output "logits".

    `nan_for_negative_first_feature` makes every logit NaN for rows whose first
    feature is negative (the other rows are unchanged). `slow_ms` > 0 adds a
    chain of MatMuls, sized by timing this machine, that takes about that long
    per inference and leaves the logits unchanged. Returns `path`.
    Raises OSError when the file cannot be written.
    """
    from onnx import TensorProto, helper, numpy_helper

    in_dim, out_dim = weights["w1"].shape[0], weights["w2"].shape[1]
    initializers = [
        numpy_helper.from_array(np.asarray(weights[k], np.float32), name=k)
        for k in ("w1", "b1", "w2", "b2")
    ]
    nodes = [
        helper.make_node("MatMul", [INPUT_NAME, "w1"], ["fc1"]),
        helper.make_node("Add", ["fc1", "b1"], ["fc1_bias"]),
        helper.make_node("Relu", ["fc1_bias"], ["hidden"]),
        helper.make_node("MatMul", ["hidden", "w2"], ["fc2"]),
        helper.make_node("Add", ["fc2", "b2"], ["clean_logits"]),
    ]
    logits = "clean_logits"
    if nan_for_negative_first_feature:
        logits = _add_nan_trap(nodes, initializers, logits)
    if slow_ms > 0:
        logits = _add_slow_chain(nodes, initializers, logits, slow_ms)
    nodes.append(helper.make_node("Identity", [logits], [OUTPUT_NAME]))

    graph = helper.make_graph(
        nodes,
        "satchel_mlp",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", in_dim])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", out_dim])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        producer_name="satchel.modelgen",
        ir_version=ir_version,
        opset_imports=[helper.make_opsetid("", opset)],
    )
    path = Path(path)
    path.write_bytes(model.SerializeToString())
    return path


def onnx_matmul_stack(path: Path, layers: int, width: int, *, seed: int = 3,
                      opset: int = DEFAULT_OPSET) -> Path:
    """Write a float32 ONNX stack of `layers` MatMul + ReLU with square `width` x `width`
    weights, each its own initializer of the same size (the many-like-layers family: no
    tensor is a large share of the weights): input "input" [batch, width] -> "logits".
    Returns `path`. Raises OSError when the file cannot be written."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, initializers, previous = [], [], INPUT_NAME
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / math.sqrt(width)).astype(np.float32)
        initializers.append(numpy_helper.from_array(w, name=f"w{i}"))
        out = OUTPUT_NAME if i == layers - 1 else f"relu{i}"
        nodes += [helper.make_node("MatMul", [previous, f"w{i}"], [f"mm{i}"]),
                  helper.make_node("Relu", [f"mm{i}"], [out])]
        previous = out
    graph = helper.make_graph(
        nodes, "satchel_matmul_stack",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", width])],
        initializer=initializers,
    )
    model = helper.make_model(graph, producer_name="satchel.modelgen",
                              ir_version=DEFAULT_IR_VERSION,
                              opset_imports=[helper.make_opsetid("", opset)])
    path = Path(path)
    path.write_bytes(model.SerializeToString())
    return path


def _add_nan_trap(nodes: list[Any], initializers: list[Any], logits: str) -> str:
    """Multiply logits by sqrt(-1 if first feature < 0 else 1): NaN rows, others untouched."""
    from onnx import helper, numpy_helper

    constants: dict[str, np.ndarray] = {
        "nan_starts": np.array([0], np.int64),
        "nan_ends": np.array([1], np.int64),
        "nan_axes": np.array([1], np.int64),
        "nan_zero": np.array(0.0, np.float32),
        "nan_minus_one": np.array(-1.0, np.float32),
        "nan_one": np.array(1.0, np.float32),
    }
    initializers.extend(numpy_helper.from_array(v, name=k) for k, v in constants.items())
    nodes.extend(
        [
            helper.make_node(
                "Slice", [INPUT_NAME, "nan_starts", "nan_ends", "nan_axes"], ["first_feature"]
            ),
            helper.make_node("Less", ["first_feature", "nan_zero"], ["is_negative"]),
            helper.make_node("Where", ["is_negative", "nan_minus_one", "nan_one"], ["radicand"]),
            helper.make_node("Sqrt", ["radicand"], ["nan_factor"]),
            helper.make_node("Mul", [logits, "nan_factor"], ["trapped_logits"]),
        ]
    )
    return "trapped_logits"


def _add_slow_chain(nodes: list[Any], initializers: list[Any], logits: str, slow_ms: float) -> str:
    """Add a chain of square MatMuls that depends on the input, so it cannot be folded
    away at load time, and whose result is added to the logits times zero.

    The chain multiplies a matrix of ones by ones/n, which stays exactly ones
    in float32 (n is a power of two), so the logits stay bit-identical.
    """
    from onnx import helper, numpy_helper

    n = _SLOW_MATRIX_SIZE
    steps = max(1, round(slow_ms / 1000.0 / _matmul_seconds(n)))
    constants: dict[str, np.ndarray] = {
        "slow_starts": np.array([0, 0], np.int64),
        "slow_ends": np.array([1, 1], np.int64),
        "slow_zero": np.array(0.0, np.float32),
        "slow_one": np.array(1.0, np.float32),
        "slow_shape": np.array([n, n], np.int64),
        "slow_weight": np.full((n, n), 1.0 / n, np.float32),
    }
    initializers.extend(numpy_helper.from_array(v, name=k) for k, v in constants.items())
    nodes.extend(
        [
            helper.make_node("Slice", [INPUT_NAME, "slow_starts", "slow_ends"], ["slow_seed"]),
            helper.make_node("Mul", ["slow_seed", "slow_zero"], ["slow_seed_zero"]),
            helper.make_node("Add", ["slow_seed_zero", "slow_one"], ["slow_seed_one"]),
            helper.make_node("Expand", ["slow_seed_one", "slow_shape"], ["slow_0"]),
        ]
    )
    for step in range(steps):
        nodes.append(
            helper.make_node("MatMul", [f"slow_{step}", "slow_weight"], [f"slow_{step + 1}"])
        )
    nodes.extend(
        [
            helper.make_node("ReduceSum", [f"slow_{steps}"], ["slow_sum"], keepdims=0),
            helper.make_node("Mul", ["slow_sum", "slow_zero"], ["slow_nothing"]),
            helper.make_node("Add", [logits, "slow_nothing"], ["slow_logits"]),
        ]
    )
    return "slow_logits"


def _matmul_seconds(n: int, repeats: int = 5) -> float:
    """Best time of an n x n float32 MatMul on this machine."""
    a = np.ones((n, n), np.float32)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    return max(best, 1e-6)


# --- TFLite -------------------------------------------------------------------------------


def tflite_mlp(
    weights: Weights,
    path: Path,
    *,
    int8: bool = False,
    calibration: np.ndarray | None = None,
) -> Path:
    """Write a TFLite MLP: two FULLY_CONNECTED ops (ReLU fused in the first),
    input "input" [1, in_dim] -> output "logits" [1, out_dim].

    With `int8`, every tensor is int8 (biases int32) with per-tensor
    quantization: weights symmetric, activations affine over the ranges seen
    on `calibration` (default: 256 `sample_inputs` rows). Returns `path`.
    Raises OSError when the file cannot be written.
    """
    if int8:
        if calibration is None:
            calibration = sample_inputs(weights["w1"].shape[0], _CALIBRATION_SAMPLES)
        tensors = _int8_tensors(weights, calibration)
    else:
        tensors = _float_tensors(weights)
    ops = [
        OpDef(FULLY_CONNECTED, (0, 1, 2), (3,), relu=True),
        OpDef(FULLY_CONNECTED, (3, 4, 5), (6,)),
    ]
    graph = Subgraph("main", tensors, (0,), (6,), ops)
    return write_model(Path(path), [graph], description="satchel.modelgen MLP")


def _float_tensors(weights: Weights) -> list[TensorDef]:
    in_dim, hidden = weights["w1"].shape
    out_dim = weights["w2"].shape[1]
    f32 = np.float32
    return [
        TensorDef(INPUT_NAME, (1, in_dim), FLOAT32),
        TensorDef("fc1/weights", (hidden, in_dim), FLOAT32, weights["w1"].T.astype(f32)),
        TensorDef("fc1/bias", (hidden,), FLOAT32, weights["b1"].astype(f32)),
        TensorDef("hidden", (1, hidden), FLOAT32),
        TensorDef("fc2/weights", (out_dim, hidden), FLOAT32, weights["w2"].T.astype(f32)),
        TensorDef("fc2/bias", (out_dim,), FLOAT32, weights["b2"].astype(f32)),
        TensorDef(OUTPUT_NAME, (1, out_dim), FLOAT32),
    ]


def _int8_tensors(weights: Weights, calibration: np.ndarray) -> list[TensorDef]:
    in_dim, hidden = weights["w1"].shape
    out_dim = weights["w2"].shape[1]
    x = np.asarray(calibration, np.float64)
    h = np.maximum(x @ weights["w1"] + weights["b1"], 0.0)
    y = h @ weights["w2"] + weights["b2"]
    q_in, q_hidden, q_out = (activation_params(a) for a in (x, h, y))
    w1, s_w1 = symmetric_int8(weights["w1"].T)
    w2, s_w2 = symmetric_int8(weights["w2"].T)
    s_b1, s_b2 = q_in[0] * s_w1, q_hidden[0] * s_w2
    return [
        TensorDef(INPUT_NAME, (1, in_dim), INT8, None, q_in),
        TensorDef("fc1/weights", (hidden, in_dim), INT8, w1, (s_w1, 0)),
        TensorDef("fc1/bias", (hidden,), INT32, int32_bias(weights["b1"], s_b1), (s_b1, 0)),
        TensorDef("hidden", (1, hidden), INT8, None, q_hidden),
        TensorDef("fc2/weights", (out_dim, hidden), INT8, w2, (s_w2, 0)),
        TensorDef("fc2/bias", (out_dim,), INT32, int32_bias(weights["b2"], s_b2), (s_b2, 0)),
        TensorDef(OUTPUT_NAME, (1, out_dim), INT8, None, q_out),
    ]


# --- quantization parameters, shared with the tests' model makers ---------------------


def activation_params(values: np.ndarray) -> tuple[float, int]:
    """Affine int8 (scale, zero_point) covering the values' range, which must include 0."""
    low, high = min(float(values.min()), 0.0), max(float(values.max()), 0.0)
    scale = max((high - low) / 255.0, 1e-8)
    zero_point = int(np.clip(round(-128 - low / scale), -128, 127))
    return scale, zero_point


def symmetric_int8(values: np.ndarray) -> tuple[np.ndarray, float]:
    scale = max(float(np.abs(values).max()) / 127.0, 1e-8)
    return np.clip(np.round(values / scale), -127, 127).astype(np.int8), scale


def int32_bias(values: np.ndarray, scale: float) -> np.ndarray:
    """Biases as int32 at `scale` (the input scale times the weights' scale)."""
    return np.round(np.asarray(values, np.float64) / scale).astype(np.int32)
