"""The runtime adapter interface shared by the agent and the manager.

A runtime adapter loads a model file with one ML runtime and hands back a
`LoadedModel` that describes its tensors in KServe v2 terms and runs feeds.
Nothing here imports an ML runtime.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from satchel.agent.runtimes.accel import CPU, Acceleration
from satchel.agent.runtimes.errors import InferenceError

# KServe v2 / Open Inference Protocol datatype names and their numpy dtypes.
DATATYPE_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
NUMPY_TO_DATATYPE: dict[np.dtype[Any], str] = {v: k for k, v in DATATYPE_TO_NUMPY.items()}


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output.

    `datatype` is a KServe v2 name ("FP32", "INT8", ...); `shape` uses -1 for a
    dynamic dimension; `quantization` is {"scale": float, "zero_point": int}
    for a quantized (int8/uint8) TFLite tensor, else None.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    quantization: dict[str, Any] | None = None

    @property
    def dtype(self) -> np.dtype[Any]:
        """The numpy dtype of this tensor. Raises KeyError for a datatype numpy lacks."""
        return DATATYPE_TO_NUMPY[self.datatype]


class LoadedModel(Protocol):
    """A model loaded into a runtime, ready to run. `run` is safe for concurrent callers."""

    runtime: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one inference; return every output by name. Raises InferenceError."""
        ...

    def close(self) -> None:
        """Release the runtime's resources; later `run` calls raise InferenceError."""
        ...


class RuntimeAdapter(Protocol):
    """One ML runtime (onnxruntime, tflite) behind a uniform face."""

    name: str

    def available(self) -> bool:
        """True when the runtime can be imported and used on this machine."""
        ...

    def version(self) -> str | None:
        """The installed runtime package's version, or None when unavailable."""
        ...

    def load(
        self, path: Path, *, threads: int | None = None, signature: str | None = None,
        acceleration: Acceleration = CPU,
    ) -> LoadedModel:
        """Load a model file; `signature` names the TFLite SignatureDef to run;
        `acceleration` the execution providers or delegates to run it on.

        Raises RuntimeUnavailableError, ModelLoadError.
        """
        ...


def check_feeds(
    specs: Sequence[TensorSpec],
    feeds: Mapping[str, np.ndarray],
    *,
    flexible_batch: bool = False,
) -> None:
    """Check feed names, datatypes and shapes against the model's inputs.

    Dimensions declared -1 accept any size; with `flexible_batch` the first
    dimension does too (the runtime resizes it). Raises InferenceError.
    """
    expected = {spec.name for spec in specs}
    unknown = sorted(set(feeds) - expected)
    if unknown:
        raise InferenceError(f"unknown input {unknown[0]!r}; the model expects {sorted(expected)}")
    for spec in specs:
        if spec.name not in feeds:
            raise InferenceError(f"missing input {spec.name!r}")
        array = np.asarray(feeds[spec.name])
        # strings travel as object arrays (what onnxruntime takes for tensor(string))
        got = "BYTES" if array.dtype == object else (
            NUMPY_TO_DATATYPE.get(array.dtype) or str(array.dtype))  # str() only when needed
        if got != spec.datatype:
            raise InferenceError(f"input {spec.name!r} must be {spec.datatype}, got {got}")
        if not _shape_matches(spec.shape, array.shape, flexible_batch):
            raise InferenceError(
                f"input {spec.name!r} must have shape {list(spec.shape)}, got {list(array.shape)}"
            )


def _shape_matches(
    declared: tuple[int, ...], actual: tuple[int, ...], flexible_batch: bool
) -> bool:
    if len(declared) != len(actual):
        return False
    for axis, (want, got) in enumerate(zip(declared, actual, strict=True)):
        if want == -1 or (flexible_batch and axis == 0):
            continue
        if want != got:
            return False
    return True


def quantize(values: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Turn real values into the integer encoding of a quantized tensor.

    Raises ValueError when `spec` carries no quantization parameters.
    """
    if spec.quantization is None:
        raise ValueError(f"tensor {spec.name!r} is not quantized")
    info = np.iinfo(spec.dtype)
    scale, zero_point = spec.quantization["scale"], spec.quantization["zero_point"]
    encoded = np.round(np.asarray(values, dtype=np.float64) / scale) + zero_point
    return np.clip(encoded, info.min, info.max).astype(spec.dtype)


def dequantize(values: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Turn a quantized tensor's integers back into float32 real values.

    Raises ValueError when `spec` carries no quantization parameters.
    """
    if spec.quantization is None:
        raise ValueError(f"tensor {spec.name!r} is not quantized")
    scale, zero_point = spec.quantization["scale"], spec.quantization["zero_point"]
    return ((np.asarray(values, dtype=np.float64) - zero_point) * scale).astype(np.float32)


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's text, for one-line messages."""
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__
