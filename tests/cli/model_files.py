"""The CLI tests' model files: one float MLP as ONNX and TFLite, its INT8 forms, a model that
disagrees with it, and sample files with and without its input."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

IN_DIM = 64  # width of the test models' single input


@dataclass(frozen=True)
class Models:
    """Test models and sample files, made once per session (read-only for tests)."""

    float_onnx: Path  # float32 MLP 64 -> 128 -> 10
    int8_onnx: Path  # the same, dynamic INT8
    other_onnx: Path  # float32 MLP with different weights: disagrees with float_onnx
    float_tflite: Path  # the same float MLP as TFLite
    int8_tflite: Path  # the same MLP as int8 TFLite
    samples: Path  # INPUTS.npz: {"input": [16, 64] float32}
    wrong_samples: Path  # INPUTS.npz without the model's input
