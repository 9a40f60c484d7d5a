"""Health over time for the manager: every interval, one `health` event per serving release
with what happened since the previous sample (count, errors, NaN/Inf outputs blamed on the
model, inferences fed NaN/Inf by their client, p95 latency).

The events ride the durable queue like any other, so they reach the manager over the LAN or
on a USB stick alike, and the dashboard draws its health charts from them. Deltas are taken
between snapshots of the server's lifetime totals, so they are exact whatever the health
store's bucket size; the first snapshot after a start only sets the baseline.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

from satchel.agent.event_queue import EventQueue
from satchel.agent.health.stats import HealthStats, ReleaseKey
from satchel.bundles.events import HEALTH

log = logging.getLogger(__name__)

TotalsSnapshot = Callable[[], Mapping[ReleaseKey, HealthStats]]


def stats_since(now: HealthStats, before: HealthStats | None) -> HealthStats:
    """What `now` counted since `before` (both lifetime totals of one release)."""
    if before is None:
        return now.copy()
    return HealthStats(
        count=now.count - before.count,
        errors=now.errors - before.errors,
        nonfinite=now.nonfinite - before.nonfinite,
        latency_ms_sum=now.latency_ms_sum - before.latency_ms_sum,
        latency_buckets=[
            a - b for a, b in zip(now.latency_buckets, before.latency_buckets, strict=True)
        ],
        nonfinite_inputs=now.nonfinite_inputs - before.nonfinite_inputs,
    )


class HealthSampler:
    """Queues one `health` event per release that served since the last sample."""

    def __init__(self, totals: TotalsSnapshot, events: EventQueue) -> None:
        self._totals = totals
        self._events = events
        self._last: dict[ReleaseKey, HealthStats] = dict(totals())

    def sample(self) -> int:
        """Queue the samples due now; return how many were queued."""
        current = dict(self._totals())
        queued = 0
        for key, stats in sorted(current.items(), key=lambda kv: (kv[0].channel, kv[0].sequence)):
            delta = stats_since(stats, self._last.get(key))
            if delta.count <= 0:
                continue
            p95 = delta.latency_quantile_ms(0.95)
            self._events.append(
                HEALTH,
                channel=key.channel,
                version=key.version,
                sequence=key.sequence,
                figures={
                    "count": delta.count,
                    "errors": delta.errors,
                    "nan": delta.nonfinite,
                    "nonfinite_inputs": delta.nonfinite_inputs,
                    "p95_ms": None if p95 is None else round(p95, 4),
                },
            )
            queued += 1
        self._last = current
        return queued

    def run(self, interval_s: float, stop: threading.Event) -> None:
        """Sample every `interval_s` seconds until `stop` is set."""
        while not stop.wait(interval_s):
            try:
                self.sample()
            except Exception:  # a full disk must not end the service; the next round retries
                log.exception("queueing health samples failed")
