"""Test and demo models: a thin re-export of `manager.modelgen` and `manager.quantize`.

Tests import from here so that they read as "the test models"; the makers
themselves live in the manager, where the admin-side demo uses them too.
"""

from __future__ import annotations

from satchel.manager.modelgen import (
    INPUT_NAME,
    OUTPUT_NAME,
    Weights,
    make_mlp_weights,
    mlp_forward,
    onnx_mlp,
    sample_inputs,
    tflite_mlp,
    train_mlp,
)
from satchel.manager.quantize import QuantizeError, QuantizeReport, quantize_onnx

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "QuantizeError",
    "QuantizeReport",
    "Weights",
    "make_mlp_weights",
    "mlp_forward",
    "onnx_mlp",
    "quantize_onnx",
    "sample_inputs",
    "tflite_mlp",
    "train_mlp",
]
