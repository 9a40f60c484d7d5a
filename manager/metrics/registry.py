"""The manager's counters and latency histogram, kept by prometheus_client.

Each app owns one `Metrics` (its own registry, so two apps in one process, as in the tests,
count apart). Under `satchel serve` every worker process writes its values to files in the
multiprocess directory (`multiproc.py`), and a scrape, whichever worker answers it, adds up
every worker's: one series per counter, rising monotonically, for `rate()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics

# `*_created` series would double every family and no rule of ours reads them
disable_created_metrics()

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # seconds
REQUEST_DURATION = "satchel_http_request_duration_seconds"


@dataclass(frozen=True)
class CounterSpec:
    """A counter family: its name (with `_total`), what it counts, its label names."""

    name: str
    help: str
    labels: tuple[str, ...] = ()


# Every counter the manager keeps; `Metrics.inc` takes one of these names.
COUNTERS = (
    CounterSpec("satchel_http_requests_total",
                "HTTP requests answered, by method, route and status code.",
                ("method", "endpoint", "code")),
    CounterSpec("satchel_checkins_total", "Device check-ins recorded, by transport.", ("via",)),
    CounterSpec("satchel_checkins_fast_total",
                "Check-ins of unchanged devices recorded on the fast path, by transport.",
                ("via",)),
    CounterSpec("satchel_events_recorded_total",
                "Device events (downloaded, activated, rolled back, ...) recorded."),
    CounterSpec("satchel_enrollments_total", "Devices enrolled."),
    CounterSpec("satchel_bundle_downloads_total", "Bundle downloads started (Range included)."),
)


class Metrics:
    """The counters and the request-latency histogram of one manager app; thread-safe."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._counters = {
            spec.name: Counter(spec.name, spec.help, spec.labels, registry=self.registry)
            for spec in COUNTERS
        }
        self._duration = Histogram(
            REQUEST_DURATION, "Time to answer an HTTP request, by route, in seconds.",
            ("endpoint",), buckets=LATENCY_BUCKETS_S, registry=self.registry,
        )
        # the series already used, by (counter name, label values...) or endpoint: the hot
        # path (every check-in) then costs a dict lookup and the value's own lock
        self._children: dict[Any, Any] = {}

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        """Add `amount` to the counter `name` (one of COUNTERS) for `labels`."""
        key = (name, *labels.values())
        child = self._children.get(key)
        if child is None:  # once per series: prometheus_client's labels() checks and locks
            counter = self._counters[name]
            child = self._children[key] = counter.labels(**labels) if labels else counter
        child.inc(amount)

    def observe(self, seconds: float, endpoint: str) -> None:
        """Count one request to `endpoint` that took `seconds` in the latency histogram."""
        child = self._children.get(endpoint)
        if child is None:
            child = self._children[endpoint] = self._duration.labels(endpoint=endpoint)
        child.observe(seconds)
