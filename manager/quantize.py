"""INT8 quantization of ONNX models, with a report of what it cost in agreement.

Dynamic quantization (weights int8, activations quantized at run time) needs
no data; static quantization (QDQ, activations calibrated) uses sample inputs.
Either way the quantized model is compared with the float one on samples:
the calibration inputs when given, otherwise generated ones.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.runtimes import LoadedModel, ModelRuntimeError, TensorSpec, get_runtime
from agent.runtimes.base import first_line
from bundles.durable import atomic_write_bytes

_GENERATED_SAMPLES = 64  # rows compared when no calibration inputs are given
_CALIBRATION_BATCH = 32  # rows per calibration feed


class QuantizeError(Exception):
    """Quantization failed or its inputs are unusable; the message says why in one line."""


@dataclass(frozen=True)
class QuantizeReport:
    """Sizes of both models and how closely the int8 model's first output follows the float one."""

    mode: str  # "dynamic" or "static"
    float_bytes: int
    int8_bytes: int
    ratio: float  # float_bytes / int8_bytes
    samples: int  # rows compared
    max_abs_error: float
    mean_cosine: float  # mean over rows of cosine similarity, in [-1, 1]
    top1_agreement: float  # share of rows whose argmax is the same, in [0, 1]

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready values."""
        return asdict(self)


def quantize_onnx(
    src: Path, dst: Path, calibration: Mapping[str, np.ndarray] | None = None
) -> QuantizeReport:
    """Quantize the ONNX model `src` to INT8 and write it to `dst`.

    Without `calibration`: dynamic quantization (int8 weights). With it (one
    array per model input, keyed by input name, first axis = samples): static
    QDQ quantization, per-tensor, calibrated on those inputs. `dst` is written
    atomically and only when quantization succeeded.
    Raises QuantizeError.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise QuantizeError(f"model file not found: {src}")
    try:
        runtime = get_runtime("onnxruntime")
        float_model = runtime.load(src)
        specs = list(float_model.inputs)
        float_model.close()
    except ModelRuntimeError as e:
        raise QuantizeError(str(e)) from e
    samples = _checked_samples(specs, calibration) if calibration else _generated_samples(specs)
    mode = "static" if calibration else "dynamic"

    with tempfile.TemporaryDirectory(prefix="satchel-quantize-") as tmp:
        quantized = Path(tmp) / "int8.onnx"
        try:
            with _without_preprocessing_hint():
                if calibration:
                    _quantize_static(src, quantized, samples)
                else:
                    _quantize_dynamic(src, quantized)
        except Exception as e:  # onnxruntime.quantization raises anything from onnx to numpy
            raise QuantizeError(f"{mode} quantization of {src.name} failed: {first_line(e)}") from e
        report = _compare(src, quantized, samples, mode)
        try:
            atomic_write_bytes(dst, quantized.read_bytes())
        except OSError as e:
            raise QuantizeError(f"cannot write {dst}: {e.strerror or e}") from e
    return report


@contextlib.contextmanager
def _without_preprocessing_hint() -> Iterator[None]:
    """Drop onnxruntime's "consider pre-processing" root-logger warning, which every
    run prints and which names a tool a Satchel user has no reason to run."""

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Please consider")

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _quantize_dynamic(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(src, dst, weight_type=QuantType.QInt8)


def _quantize_static(src: Path, dst: Path, samples: dict[str, np.ndarray]) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds: Iterator[dict[str, np.ndarray]] = _batches(samples, _CALIBRATION_BATCH)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    quantize_static(
        src,
        dst,
        _Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=False,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
    )


def _batches(samples: dict[str, np.ndarray], size: int) -> Iterator[dict[str, np.ndarray]]:
    rows = len(next(iter(samples.values())))
    for start in range(0, rows, size):
        yield {name: array[start : start + size] for name, array in samples.items()}


def _checked_samples(
    specs: list[TensorSpec], calibration: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The calibration arrays, checked against the model's inputs. Raises QuantizeError."""
    expected = {spec.name for spec in specs}
    if set(calibration) != expected:
        raise QuantizeError(
            f"calibration inputs {sorted(calibration)} do not match the model's {sorted(expected)}"
        )
    samples = {}
    for spec in specs:
        array = np.asarray(calibration[spec.name])
        if array.dtype != spec.dtype:
            array = array.astype(spec.dtype)
        samples[spec.name] = array
    rows = {len(array) for array in samples.values()}
    if len(rows) != 1 or 0 in rows:
        raise QuantizeError("calibration arrays must all hold the same, non-zero number of rows")
    return samples


def _generated_samples(specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """Standard-normal rows for every float input; dynamic dims beyond the batch become 1.

    Raises QuantizeError for non-float inputs, which need real calibration data.
    """
    rng = np.random.default_rng(0)
    samples = {}
    for spec in specs:
        if spec.datatype not in ("FP32", "FP16", "FP64"):
            raise QuantizeError(
                f"cannot invent samples for {spec.datatype} input {spec.name!r};"
                " pass calibration inputs"
            )
        if not spec.shape:
            raise QuantizeError(f"cannot invent samples for scalar input {spec.name!r}")
        batch_shape = spec.shape[1:] if spec.shape[0] == -1 else spec.shape
        shape = [_GENERATED_SAMPLES] if spec.shape[0] == -1 else []
        shape += [dim if dim > 0 else 1 for dim in batch_shape]
        samples[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return samples


def _compare(
    float_path: Path, int8_path: Path, samples: dict[str, np.ndarray], mode: str
) -> QuantizeReport:
    """Run both models on the samples and measure agreement of their first outputs."""
    runtime = get_runtime("onnxruntime")
    try:
        reference = _first_output(runtime.load(float_path), samples)
        candidate = _first_output(runtime.load(int8_path), samples)
    except ModelRuntimeError as e:
        raise QuantizeError(f"cannot compare the quantized model with the float one: {e}") from e
    metrics = agreement(reference, candidate)
    float_bytes, int8_bytes = float_path.stat().st_size, int8_path.stat().st_size
    return QuantizeReport(
        mode=mode,
        float_bytes=float_bytes,
        int8_bytes=int8_bytes,
        ratio=float_bytes / int8_bytes,
        samples=len(reference),
        **metrics,
    )


def _first_output(model: LoadedModel, samples: dict[str, np.ndarray]) -> np.ndarray:
    """Run the model once on all samples and close it. Raises ModelRuntimeError."""
    try:
        return np.asarray(model.run(samples)[model.outputs[0].name], np.float64)
    finally:
        model.close()


def agreement(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Max abs error, mean per-row cosine similarity and top-1 agreement of two outputs.

    Rows are the first axis; each row is flattened. Raises ValueError on shape mismatch.
    """
    reference = np.asarray(reference, np.float64)
    candidate = np.asarray(candidate, np.float64)
    if reference.shape != candidate.shape:
        raise ValueError(f"output shapes differ: {reference.shape} vs {candidate.shape}")
    rows = reference.reshape(len(reference), -1) if reference.ndim else reference.reshape(1, 1)
    other = candidate.reshape(rows.shape)
    norms = np.linalg.norm(rows, axis=1) * np.linalg.norm(other, axis=1)
    both_zero = ~rows.any(axis=1) & ~other.any(axis=1)
    cosine = np.where(
        norms == 0,
        both_zero.astype(np.float64),
        np.sum(rows * other, axis=1) / np.where(norms == 0, 1.0, norms),
    )
    return {
        "max_abs_error": float(np.max(np.abs(rows - other))),
        "mean_cosine": float(np.mean(cosine)),
        "top1_agreement": float(np.mean(rows.argmax(axis=1) == other.argmax(axis=1))),
    }
