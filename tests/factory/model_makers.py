"""Model files for tests: small MLPs written as ONNX or TFLite, their weights, sample inputs
and reference outputs, and dynamic INT8 quantization.

A thin re-export of `manager.modelgen` and `manager.quantize`, so that tests read as "the test
models"; the makers themselves live in the manager, where the admin-side demo uses them too.
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
