"""The counters and latency histograms of one manager process, safe to update from any
request thread."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # seconds

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Snapshot:
    """The registry's values at one instant, copied, so rendering them needs no lock."""

    started: float  # when the process started, Unix time in seconds
    counters: dict[str, dict[Labels, float]]
    histograms: dict[Labels, list[float]]  # labels -> a count per bucket, then sum and count


class Metrics:
    """Thread-safe counters and latency histograms of one manager process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self.counters: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        self.histograms: dict[Labels, list[float]] = {}  # labels -> bucket counts + [sum, count]

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self.counters[name][key] += amount

    def observe(self, seconds: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            h = self.histograms.setdefault(key, [0.0] * (len(LATENCY_BUCKETS_S) + 2))
            for i, bound in enumerate(LATENCY_BUCKETS_S):
                if seconds <= bound:
                    h[i] += 1
            h[-2] += seconds
            h[-1] += 1

    def snapshot(self) -> Snapshot:
        """A consistent copy of every counter and histogram."""
        with self._lock:
            return Snapshot(
                started=self.started,
                counters={name: dict(series) for name, series in self.counters.items()},
                histograms={labels: list(h) for labels, h in self.histograms.items()},
            )
