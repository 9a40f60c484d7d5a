"""Inference health: counters per channel and release.

Every inference the server runs is recorded here: count, runtime errors, outputs holding
NaN or Inf, inputs holding NaN or Inf, and a latency histogram. `HealthBook` keeps lifetime
totals per release (what the probation judge and `/metrics` read) and per-minute deltas not
yet written to the health store. The judge itself is `bundles.health.judge`, shared with the
manager; `HealthStats.figures` is what it is given.

A NaN or Inf output is blamed on the model only when every input was finite: a client that
sends NaN gets NaN back, and that must not roll back a good release. Such inferences are
counted apart (`nonfinite_inputs`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from satchel.bundles.health import P95_DECIMALS, HealthFigures
from satchel.bundles.manifest import HealthPolicy

# Upper bounds of the latency histogram buckets, in milliseconds; one more bucket above the
# last bound catches everything slower. Fixed, so stored buckets from any release add up.
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0,
    1000.0, 2500.0, 5000.0, 10000.0,
)
MINUTE_S = 60  # seconds in a health bucket


@dataclass(frozen=True, order=True)
class ReleaseKey:
    """Which release of which channel an inference ran on."""

    channel: str
    version: str
    sequence: int


def _empty_buckets() -> list[int]:
    return [0] * (len(LATENCY_BUCKETS_MS) + 1)


def _bucket_index(latency_ms: float) -> int:
    for index, bound in enumerate(LATENCY_BUCKETS_MS):
        if latency_ms <= bound:
            return index
    return len(LATENCY_BUCKETS_MS)


@dataclass
class HealthStats:
    """Additive health counters of one release over some span of time."""

    count: int = 0  # inferences run, failed ones included
    errors: int = 0  # inferences the runtime failed
    nonfinite: int = 0  # inferences with a NaN or Inf in an output from finite inputs
    latency_ms_sum: float = 0.0  # milliseconds, summed over every inference
    latency_buckets: list[int] = field(default_factory=_empty_buckets)  # per bucket, not cumulative
    nonfinite_inputs: int = 0  # inferences with a NaN or Inf in an input (the client's fault)

    def record(
        self, latency_ms: float, *, error: bool, nonfinite: bool, nonfinite_input: bool = False
    ) -> None:
        """Count one inference. `nonfinite` is ignored when `nonfinite_input` is set: NaN in,
        NaN out says nothing about the model."""
        self.count += 1
        self.errors += error
        self.nonfinite += nonfinite and not nonfinite_input
        self.nonfinite_inputs += nonfinite_input
        self.latency_ms_sum += latency_ms
        self.latency_buckets[_bucket_index(latency_ms)] += 1

    def merge(self, other: HealthStats) -> None:
        self.count += other.count
        self.errors += other.errors
        self.nonfinite += other.nonfinite
        self.nonfinite_inputs += other.nonfinite_inputs
        self.latency_ms_sum += other.latency_ms_sum
        for index, n in enumerate(other.latency_buckets):
            self.latency_buckets[index] += n

    def copy(self) -> HealthStats:
        return HealthStats(
            self.count, self.errors, self.nonfinite, self.latency_ms_sum,
            list(self.latency_buckets), self.nonfinite_inputs,
        )

    def figures(self, *, crash_restarts: int = 0) -> HealthFigures:
        """These counters as the health judge (and a check-in's health summary) take them;
        p95 rounded as reported, so device and manager judge the very same number."""
        p95 = self.latency_quantile_ms(0.95)
        return HealthFigures(
            inferences=self.count,
            errors=self.errors,
            nan=self.nonfinite,
            p95_latency_ms=None if p95 is None else round(p95, P95_DECIMALS),
            crash_restarts=crash_restarts,
            nonfinite_inputs=self.nonfinite_inputs,
        )

    def latency_quantile_ms(self, q: float) -> float | None:
        """The q-quantile of latency in ms, interpolated inside its bucket as Prometheus'
        `histogram_quantile` does; None without samples. Above the last bound it answers
        the last bound, a lower limit."""
        if not self.count:
            return None
        rank = q * self.count
        seen = 0
        lower = 0.0
        for index, n in enumerate(self.latency_buckets):
            if index == len(LATENCY_BUCKETS_MS):
                return LATENCY_BUCKETS_MS[-1]
            upper = LATENCY_BUCKETS_MS[index]
            if n and seen + n >= rank:
                return lower + (upper - lower) * (rank - seen) / n
            seen += n
            lower = upper
        return LATENCY_BUCKETS_MS[-1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "errors": self.errors,
            "nonfinite": self.nonfinite,
            "latency_ms_sum": round(self.latency_ms_sum, 3),
            "latency_buckets": list(self.latency_buckets),
            "nonfinite_inputs": self.nonfinite_inputs,
        }

    @classmethod
    def from_dict(cls, d: Any) -> HealthStats:
        """Parse what `to_dict` wrote (`nonfinite_inputs` may be absent: history written
        before it was counted). Raises ValueError when it is not that shape."""
        if not isinstance(d, dict):
            raise ValueError("health stats must be an object")
        buckets = d.get("latency_buckets")
        if not isinstance(buckets, list) or len(buckets) != len(LATENCY_BUCKETS_MS) + 1:
            raise ValueError("health stats have a latency histogram of the wrong size")
        inputs = d.get("nonfinite_inputs", 0)
        counts = [d.get("count"), d.get("errors"), d.get("nonfinite"), inputs, *buckets]
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts):
            raise ValueError("health stats counts must be non-negative integers")
        total = d.get("latency_ms_sum")
        if not isinstance(total, (int, float)) or isinstance(total, bool) or total < 0:
            raise ValueError("health stats latency sum must be a non-negative number")
        return cls(d["count"], d["errors"], d["nonfinite"], float(total), list(buckets), inputs)


Deltas = dict[tuple[ReleaseKey, int], HealthStats]  # (release, minute start in epoch s) -> stats


class HealthBook:
    """Thread-safe health counters: lifetime totals per release, and per-minute deltas
    waiting to be stored. One lock; a record is a few additions under it."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._totals: dict[ReleaseKey, HealthStats] = {}
        self._pending: Deltas = {}

    def record(
        self, key: ReleaseKey, latency_ms: float, *, error: bool, nonfinite: bool,
        nonfinite_input: bool = False,
    ) -> None:
        """Count one inference of `key` (see `HealthStats.record`)."""
        minute = int(self._clock() // MINUTE_S) * MINUTE_S
        with self._lock:
            total = self._totals.get(key)
            if total is None:
                total = self._totals[key] = HealthStats()
            total.record(
                latency_ms, error=error, nonfinite=nonfinite, nonfinite_input=nonfinite_input
            )
            pending = self._pending.get((key, minute))
            if pending is None:
                pending = self._pending[(key, minute)] = HealthStats()
            pending.record(
                latency_ms, error=error, nonfinite=nonfinite, nonfinite_input=nonfinite_input
            )

    def seed(self, key: ReleaseKey, stored: HealthStats) -> None:
        """Start a release's totals from what was stored before this process started;
        a no-op when the release already has totals."""
        with self._lock:
            if key not in self._totals:
                self._totals[key] = stored.copy()

    def totals(self, key: ReleaseKey) -> HealthStats:
        """A copy of a release's totals (empty when it has none)."""
        with self._lock:
            total = self._totals.get(key)
            return total.copy() if total else HealthStats()

    def all_totals(self) -> dict[ReleaseKey, HealthStats]:
        with self._lock:
            return {key: stats.copy() for key, stats in self._totals.items()}

    def forget(self, keep: set[ReleaseKey]) -> None:
        """Drop the totals of releases not in `keep` (pending deltas stay until drained)."""
        with self._lock:
            for key in [k for k in self._totals if k not in keep]:
                del self._totals[key]

    def drain(self) -> Deltas:
        """Take the per-minute deltas recorded since the last drain."""
        with self._lock:
            pending, self._pending = self._pending, {}
        return pending

    def restore(self, deltas: Mapping[tuple[ReleaseKey, int], HealthStats]) -> None:
        """Put drained deltas back, e.g. when storing them failed."""
        with self._lock:
            for slot, stats in deltas.items():
                pending = self._pending.get(slot)
                if pending is None:
                    self._pending[slot] = stats.copy()
                else:
                    pending.merge(stats)


def has_nonfinite(arrays: Mapping[str, Any]) -> bool:
    """True when any floating-point array (an input or an output) holds a NaN or an Inf."""
    import numpy as np

    for array in arrays.values():
        a = np.asarray(array)
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            return True
    return False


def probation_end(policy: HealthPolicy, activated_at: float) -> float:
    """When (epoch seconds) the probation of a release activated at `activated_at` ends."""
    return activated_at + policy.probation_s
