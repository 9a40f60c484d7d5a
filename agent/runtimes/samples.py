"""Run a model over smoke-test samples, one sample at a time, in real (dequantized) values.

Samples are stored as real values (float32 for float inputs) with the sample index on the
first axis. Quantized int8/uint8 tensors are quantized on the way in and dequantized on the
way out, so a float reference model and its int8 version are compared in the same units.
Used by `satchel bundle build` on the build host and by the smoke test on the device.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from agent.runtimes.base import LoadedModel, TensorSpec, dequantize, quantize
from agent.runtimes.errors import InferenceError


def sample_count(samples: Mapping[str, np.ndarray]) -> int:
    """Number of samples (first axis, equal across inputs). Raises InferenceError."""
    counts = {int(np.asarray(a).shape[0]) if np.asarray(a).ndim else 1 for a in samples.values()}
    if len(counts) != 1:
        raise InferenceError("sample inputs do not all have the same number of samples")
    return counts.pop()


def _encode(value: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if spec.quantization is not None and not np.issubdtype(value.dtype, np.integer):
        return quantize(value, spec)
    return np.asarray(value, dtype=spec.dtype)


def _decode(value: np.ndarray, spec: TensorSpec | None) -> np.ndarray:
    if spec is not None and spec.quantization is not None:
        return dequantize(value, spec)
    return value


def feed_for(
    model: LoadedModel, samples: Mapping[str, np.ndarray], index: int
) -> dict[str, np.ndarray]:
    """The feed for sample `index` (batch of one), encoded for the model's input tensors.

    Raises InferenceError if the samples do not name exactly the model's inputs.
    """
    names = {s.name for s in model.inputs}
    if set(samples) != names:
        raise InferenceError(
            f"samples hold inputs {sorted(samples)}, the model expects {sorted(names)}"
        )
    return {
        s.name: _encode(np.asarray(samples[s.name])[index : index + 1], s) for s in model.inputs
    }


def run_samples(
    model: LoadedModel, samples: Mapping[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], list[float]]:
    """Run every sample through `model`; return outputs stacked per output name (real values)
    and the latency of each run in milliseconds.

    Raises InferenceError (wrong inputs, runtime failure).
    """
    specs = {s.name: s for s in model.outputs}
    stacked: dict[str, list[np.ndarray]] = {}
    latencies: list[float] = []
    for i in range(sample_count(samples)):
        feed = feed_for(model, samples, i)
        start = time.perf_counter()
        out = model.run(feed)
        latencies.append((time.perf_counter() - start) * 1000.0)
        for name, value in out.items():
            stacked.setdefault(name, []).append(_decode(np.asarray(value), specs.get(name)))
    return {k: np.concatenate(v, axis=0) for k, v in stacked.items()}, latencies


def time_runs(
    model: LoadedModel, feed: dict[str, np.ndarray], warmup: int, runs: int
) -> list[float]:
    """Latency in milliseconds of `runs` runs of `feed` after `warmup` untimed ones."""
    for _ in range(warmup):
        model.run(feed)
    latencies: list[float] = []
    for _ in range(runs):
        start = time.perf_counter()
        model.run(feed)
        latencies.append((time.perf_counter() - start) * 1000.0)
    return latencies
