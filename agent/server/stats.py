"""Per-release inference statistics in the shape of Triton's statistics extension
(`GET /v2/models/{name}/stats`): counts and cumulative nanoseconds of each phase of a
request, as this server measures them:

- `queue`: from the event loop handing the request to the inference pool to a worker
  taking it (a request the loop runs itself, the pool having nothing to do: the moment
  between the two);
- `compute_input`: undoing its Content-Encoding, parsing the body and checking it against
  the model;
- `compute_infer`: the runtime's run (for a batch, the batch's run, as Triton counts it);
- `compute_output`: choosing and encoding the outputs;
- `success`: the sum of the four; `fail`: requests to a loaded release answered with an
  error (a bad request or a failed run), with the time they took.

`inference_count` counts inferences (the rows of a batched input), `execution_count` the
runtime's runs; `batch_stats` counts runs by batch size. Nothing is cached, so the cache
figures are zero.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from satchel.agent.health.stats import ReleaseKey

_PHASES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


class RequestTimes(NamedTuple):
    """Nanoseconds one answered request spent in each phase (a tuple: made per request)."""

    queue_ns: int
    input_ns: int
    infer_ns: int
    output_ns: int

    @property
    def total_ns(self) -> int:
        return self.queue_ns + self.input_ns + self.infer_ns + self.output_ns


@dataclass
class _Release:
    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    counts: dict[str, list[int]] = field(
        default_factory=lambda: {phase: [0, 0] for phase in _PHASES}
    )
    batches: dict[int, list[int]] = field(default_factory=dict)  # size: [count, infer ns]

    def add(self, phase: str, ns: int) -> None:
        pair = self.counts[phase]
        pair[0] += 1
        pair[1] += ns


def _duration(pair: list[int]) -> dict[str, int]:
    return {"count": pair[0], "ns": pair[1]}


class InferenceStats:
    """What each release did, since the server started; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._releases: dict[ReleaseKey, _Release] = {}

    def _of(self, key: ReleaseKey) -> _Release:
        release = self._releases.get(key)
        if release is None:
            release = self._releases[key] = _Release()
        return release

    def executed(self, key: ReleaseKey, batch_size: int, infer_ns: int) -> None:
        """One run of the runtime over `batch_size` rows."""
        with self._lock:
            release = self._of(key)
            release.execution_count += 1
            batch = release.batches.setdefault(batch_size, [0, 0])
            batch[0] += 1
            batch[1] += infer_ns

    def succeeded(self, key: ReleaseKey, times: RequestTimes, inferences: int,
                  now_ms: int) -> None:
        """One request answered, holding `inferences` rows."""
        with self._lock:
            release = self._of(key)
            release.last_inference_ms = now_ms
            release.inference_count += inferences
            release.add("success", times.total_ns)
            release.add("queue", times.queue_ns)
            release.add("compute_input", times.input_ns)
            release.add("compute_infer", times.infer_ns)
            release.add("compute_output", times.output_ns)

    def failed(self, key: ReleaseKey, ns: int, now_ms: int) -> None:
        with self._lock:
            release = self._of(key)
            release.last_inference_ms = now_ms
            release.add("fail", ns)

    def forget(self, keep: set[ReleaseKey]) -> None:
        """Drop the figures of releases not in `keep` (no longer on the device)."""
        with self._lock:
            for key in set(self._releases) - keep:
                del self._releases[key]

    def model_stats(self, key: ReleaseKey) -> dict[str, Any]:
        """One entry of `model_stats`, zeros for a release that answered nothing."""
        with self._lock:
            release = self._releases.get(key) or _Release()
            stats = {phase: _duration(release.counts[phase]) for phase in _PHASES}
            batches = sorted(release.batches.items())
            doc: dict[str, Any] = {
                "name": key.channel,
                "version": key.version,
                "last_inference": release.last_inference_ms,
                "inference_count": release.inference_count,
                "execution_count": release.execution_count,
            }
        zero = {"count": 0, "ns": 0}
        doc["inference_stats"] = {**stats, "cache_hit": zero, "cache_miss": zero}
        doc["batch_stats"] = [
            {"batch_size": size, "compute_input": zero, "compute_output": zero,
             "compute_infer": {"count": count, "ns": ns}}
            for size, (count, ns) in batches
        ]
        return doc
