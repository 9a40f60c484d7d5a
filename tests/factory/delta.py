"""Models for delta bundles: an MLP and a "fine-tuned" copy whose last layer (weights and
bias, a fifth of the weights here) was retrained, in float32 and requantized to INT8."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.factory.model_makers import make_mlp_weights, onnx_mlp, quantize_onnx

IN_DIM, HIDDEN, OUT_DIM = 64, 512, 32  # w2 + b2: 20% of the weights


@dataclass(frozen=True)
class ModelPair:
    """A model file before and after fine-tuning, and what kind it is."""

    kind: str  # "float32" or "int8"
    old: Path
    new: Path


def fine_tuned(weights: dict[str, np.ndarray], seed: int = 11) -> dict[str, np.ndarray]:
    """`weights` with the last layer nudged as a short fine-tuning run would."""
    rng = np.random.default_rng(seed)
    out = dict(weights)
    for k in ("w2", "b2"):
        w = weights[k]
        out[k] = (w + rng.standard_normal(w.shape) * 0.02 * float(np.abs(w).mean())).astype(
            np.float32
        )
    return out


def model_pairs(directory: Path) -> dict[str, ModelPair]:
    """The float32 pair and its INT8 requantization (dynamic), written into `directory`."""
    weights = make_mlp_weights(IN_DIM, HIDDEN, OUT_DIM, seed=21)
    old = onnx_mlp(weights, directory / "old.onnx")
    new = onnx_mlp(fine_tuned(weights), directory / "new.onnx")
    quantize_onnx(old, directory / "old-int8.onnx")
    quantize_onnx(new, directory / "new-int8.onnx")
    return {
        "float32": ModelPair("float32", old, new),
        "int8": ModelPair("int8", directory / "old-int8.onnx", directory / "new-int8.onnx"),
    }
