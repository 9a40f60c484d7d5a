"""Sample feeds for smoke tests: which arrays of a samples file make which model feeds, and
running a model over them in real (dequantized) values.

The model's declared input shapes decide (SPEC "Samples"). For each input:
- an array whose shape fits the declared shape (dynamic dimensions free) is ONE feed, used
  for every feed when other inputs hold several (a scalar sample rate, an initial state);
- an array with one more leading axis holds several feeds stacked on that axis;
- an array of the declared rank whose first axis does not fit a declared batch of 1 holds one
  feed per row, fed as `[i:i+1]` (the layout of earlier releases, which keeps working).

Quantized int8/uint8 tensors are quantized on the way in (unless the samples already hold the
integers) and dequantized on the way out, so a float reference model and its int8 version are
compared in the same units. Used by `satchel bundle build`, `satchel model quantize` and the
smoke test on the device.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from satchel.agent.runtimes.base import LoadedModel, TensorSpec, dequantize, quantize
from satchel.agent.runtimes.errors import InferenceError

ONE, STACKED, ROWS = "one", "stacked", "rows"  # how an input's array makes feeds


def _fits(declared: Sequence[int], shape: Sequence[int]) -> bool:
    return len(declared) == len(shape) and all(
        want in (-1, got) for want, got in zip(declared, shape, strict=True)
    )


def _layout(spec: TensorSpec, array: np.ndarray) -> tuple[str, int]:
    """How `array` makes feeds of input `spec`, and how many. Raises InferenceError."""
    shape, declared = tuple(array.shape), tuple(spec.shape)
    if _fits(declared, shape):
        return ONE, 1
    if len(shape) == len(declared) + 1 and _fits(declared, shape[1:]):
        return STACKED, shape[0]
    if declared and declared[0] == 1 and len(shape) == len(declared) and _fits(
        declared[1:], shape[1:]
    ):
        return ROWS, shape[0]
    raise InferenceError(
        f"samples for input {spec.name!r} have shape {list(shape)}, which is neither one feed "
        f"of the declared shape {list(declared)} (-1 = any size) nor several stacked on a new "
        f"first axis, [N, {', '.join(str(d) for d in declared)}]"
    )


@dataclass(frozen=True)
class FeedPlan:
    """The feeds a samples file makes for a model: `count` feeds, each input by its layout."""

    count: int
    layouts: dict[str, str]  # input name -> ONE | STACKED | ROWS

    def raw_feed(self, samples: Mapping[str, np.ndarray], index: int) -> dict[str, np.ndarray]:
        """The arrays of feed `index`, as stored (not yet encoded for the model)."""
        feed = {}
        for name, layout in self.layouts.items():
            array = np.asarray(samples[name])
            if layout == ONE:
                feed[name] = array
            elif layout == STACKED:
                feed[name] = array[index]
            else:
                feed[name] = array[index : index + 1]
        return feed


def plan_feeds(specs: Sequence[TensorSpec], samples: Mapping[str, np.ndarray]) -> FeedPlan:
    """Decide the feeds `samples` make for inputs `specs`.

    Raises InferenceError (one line) when the samples do not name exactly the model's inputs,
    an array fits no layout, inputs disagree on the number of feeds, or there is no feed.
    """
    names = {s.name for s in specs}
    if set(samples) != names:
        raise InferenceError(
            f"samples hold inputs {sorted(samples)}, the model expects {sorted(names)}"
        )
    layouts: dict[str, str] = {}
    counts: dict[str, int] = {}
    for spec in specs:
        layout, count = _layout(spec, np.asarray(samples[spec.name]))
        layouts[spec.name] = layout
        if layout != ONE:
            counts[spec.name] = count
    distinct = sorted(set(counts.values()))
    if len(distinct) > 1:
        listed = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        raise InferenceError(f"sample inputs hold different numbers of feeds ({listed})")
    count = distinct[0] if distinct else 1
    if count < 1:
        raise InferenceError("the samples hold no feed (an array has 0 along its first axis)")
    return FeedPlan(count, layouts)


def sample_count(specs: Sequence[TensorSpec], samples: Mapping[str, np.ndarray]) -> int:
    """Number of feeds `samples` make for inputs `specs`. Raises InferenceError."""
    return plan_feeds(specs, samples).count


def encode(value: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """A sample value as the input tensor takes it: quantized for a quantized tensor (unless
    already integers), else cast to its dtype. Raises InferenceError for an unknown dtype."""
    value = np.asarray(value)
    try:
        if spec.quantization is not None and not np.issubdtype(value.dtype, np.integer):
            return quantize(value, spec)
        return np.asarray(value, dtype=spec.dtype)
    except (KeyError, TypeError, ValueError) as e:
        raise InferenceError(f"input {spec.name!r}: cannot feed {value.dtype} as {spec.datatype}")\
            from e


def real_values(value: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """What an encoded input means in real numbers (for a float reference model)."""
    if spec.quantization is not None and np.issubdtype(np.asarray(value).dtype, np.integer):
        return dequantize(value, spec)
    return np.asarray(value)


def _decode(value: np.ndarray, spec: TensorSpec | None) -> np.ndarray:
    if spec is not None and spec.quantization is not None:
        return dequantize(value, spec)
    return value


def encoded_feeds(
    model: LoadedModel, samples: Mapping[str, np.ndarray]
) -> list[dict[str, np.ndarray]]:
    """Every feed of `samples`, encoded for `model`'s inputs. Raises InferenceError."""
    plan = plan_feeds(model.inputs, samples)
    specs = {s.name: s for s in model.inputs}
    return [
        {name: encode(a, specs[name]) for name, a in plan.raw_feed(samples, i).items()}
        for i in range(plan.count)
    ]


def feed_for(
    model: LoadedModel, samples: Mapping[str, np.ndarray], index: int
) -> dict[str, np.ndarray]:
    """Feed `index` of `samples`, encoded for `model`. Raises InferenceError."""
    plan = plan_feeds(model.inputs, samples)
    specs = {s.name: s for s in model.inputs}
    return {name: encode(a, specs[name]) for name, a in plan.raw_feed(samples, index).items()}


def stored_samples(
    specs: Sequence[TensorSpec], feeds: Sequence[Mapping[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """The samples file of `feeds` (already encoded): an input equal in every feed is stored
    once (one feed), the others stacked on a new first axis. Raises InferenceError when an
    input changes shape between feeds."""
    stored: dict[str, np.ndarray] = {}
    for spec in specs:
        arrays = [np.asarray(f[spec.name]) for f in feeds]
        first = arrays[0]
        if all(a.shape == first.shape and np.array_equal(a, first) for a in arrays[1:]):
            stored[spec.name] = first
            continue
        if any(a.shape != first.shape for a in arrays):
            raise InferenceError(f"input {spec.name!r} changes shape between sample feeds")
        stored[spec.name] = np.stack(arrays)
    return stored


def run_feeds(
    model: LoadedModel, feeds: Sequence[Mapping[str, np.ndarray]]
) -> tuple[dict[str, np.ndarray], list[float]]:
    """Run `feeds` (encoded) through `model`; return each output stacked on a new first axis
    (one index per feed, real values) and the latency of each run in milliseconds.

    Raises InferenceError (runtime failure, or an output whose shape changes between feeds).
    """
    specs = {s.name: s for s in model.outputs}
    stacked: dict[str, list[np.ndarray]] = {}
    latencies: list[float] = []
    for feed in feeds:
        start = time.perf_counter()
        out = model.run(dict(feed))
        latencies.append((time.perf_counter() - start) * 1000.0)
        for name, value in out.items():
            stacked.setdefault(name, []).append(_decode(np.asarray(value), specs.get(name)))
    result: dict[str, np.ndarray] = {}
    for name, values in stacked.items():
        if any(v.shape != values[0].shape for v in values):
            raise InferenceError(
                f"output {name!r} changes shape between sample feeds; give samples of one shape"
            )
        result[name] = np.stack(values)
    return result, latencies


def run_samples(
    model: LoadedModel, samples: Mapping[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], list[float]]:
    """Run every feed of `samples` through `model` (see `run_feeds`). Raises InferenceError."""
    return run_feeds(model, encoded_feeds(model, samples))


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


def generate_samples(
    specs: Sequence[TensorSpec], count: int, seed: int = 0, dynamic_size: int = 32
) -> dict[str, np.ndarray]:
    """`count` feeds of made-up inputs that respect each input's declared shape and dtype:
    standard normal floats, integers 0..7 (0..255 for uint8), random booleans, the full range
    of a quantized tensor. The first dynamic dimension of an input is its batch: 1 (also a
    state's batch, as in [2, -1, 128]); later ones are lengths: `dynamic_size` (a sequence, an
    audio window); so are an image's height and width (two or more dynamic dimensions past
    the first in an input of rank 3 or more, as in [-1, 3, -1, -1] or [1, -1, -1, 3]).
    Stored in the model's own input dtype, stacked on a new first axis."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        dynamic = [axis for axis, d in enumerate(spec.shape) if d < 0]
        inner = [axis for axis in dynamic if axis > 0]
        spatial = len(spec.shape) >= 3 and len(inner) >= 2
        batch = None if spatial and 0 not in dynamic else (dynamic[0] if dynamic else None)
        dims = [
            d if d >= 0 else (1 if axis == batch else dynamic_size)
            for axis, d in enumerate(spec.shape)
        ]
        out[spec.name] = _random(spec, (count, *dims), rng)
    return out


def _random(spec: TensorSpec, shape: tuple[int, ...], rng: np.random.Generator) -> Any:
    dtype = spec.dtype
    if spec.quantization is not None:
        return quantize(rng.standard_normal(shape), spec)
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(bool)
    if dtype == np.uint8:
        return rng.integers(0, 256, shape).astype(dtype)
    return rng.integers(0, 8, shape).astype(dtype)
