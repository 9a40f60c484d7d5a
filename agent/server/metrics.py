"""`GET /metrics` of the inference server: its counters as Prometheus text, through
prometheus_client.

The server keeps its own counters (health per release, requests per endpoint); at each scrape
it hands a `MetricsSnapshot` to `render`, which turns it into metric families beside
`process_*` (memory on a device matters) and `satchel_build_info`, with the label names the
manager uses (`code` for an HTTP status). Latencies are exported in seconds, as Prometheus
convention asks. docs/OPERATIONS.md lists every family.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from satchel.agent.health.stats import LATENCY_BUCKETS_MS, HealthStats, ReleaseKey

if TYPE_CHECKING:  # prometheus_client (~9 MB of memory) is imported at the first scrape
    from prometheus_client.metrics_core import HistogramMetricFamily, Metric

_RELEASE = ("channel", "version", "sequence")


@dataclass(frozen=True)
class ChannelInfo:
    """What one channel is serving right now."""

    channel: str
    version: str | None  # None when nothing of the channel is loaded
    sequence: int | None
    on_probation: bool
    swaps: int  # releases swapped in since the server started
    rollbacks: int  # of those swaps, the ones back to an older release


@dataclass(frozen=True)
class MetricsSnapshot:
    releases: Mapping[ReleaseKey, HealthStats]
    channels: Sequence[ChannelInfo]
    http_requests: Mapping[tuple[str, int], int]  # (endpoint, HTTP status) -> requests
    variants: Sequence[Any] = ()  # agent.variants.metrics.VariantInfo of each channel


def satchel_version() -> str:
    try:
        return importlib.metadata.version("satchel")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0+unknown"


def _release(key: ReleaseKey) -> list[str]:
    return [key.channel, key.version, str(key.sequence)]


def content_type() -> str:
    """The Content-Type of the text `render` returns (prometheus_client's)."""
    from prometheus_client import CONTENT_TYPE_LATEST

    return str(CONTENT_TYPE_LATEST)


def _latency(releases: Mapping[ReleaseKey, HealthStats]) -> HistogramMetricFamily:
    from prometheus_client.metrics_core import HistogramMetricFamily

    family = HistogramMetricFamily("satchel_inference_latency_seconds",
                                   "Model run time per inference, in seconds.", labels=_RELEASE)
    for key, stats in sorted(releases.items()):
        buckets, cumulative = [], 0
        for bound, n in zip(LATENCY_BUCKETS_MS, stats.latency_buckets, strict=False):
            cumulative += n
            buckets.append((f"{bound / 1000:g}", cumulative))
        buckets.append(("+Inf", stats.count))
        family.add_metric(_release(key), buckets, stats.latency_ms_sum / 1000)
    return family


def families(snapshot: MetricsSnapshot) -> Iterator[Metric]:
    """The server's metric families, from `snapshot`."""
    from prometheus_client import ProcessCollector
    from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

    requests = CounterMetricFamily("satchel_http_requests_total",
                                   "HTTP requests answered, by endpoint and status code.",
                                   labels=("endpoint", "code"))
    for (endpoint, status), n in sorted(snapshot.http_requests.items()):
        requests.add_metric([endpoint, str(status)], n)
    yield requests
    releases = snapshot.releases
    for name, field, help_text in (
        ("satchel_inferences_total", "count", "Inferences run, failed ones included."),
        ("satchel_inference_errors_total", "errors", "Inferences the runtime failed."),
        ("satchel_inference_nonfinite_total", "nonfinite",
         "Inferences with NaN/Inf outputs from finite inputs."),
        ("satchel_inference_nonfinite_inputs_total", "nonfinite_inputs",
         "Inferences fed NaN/Inf inputs (the client's fault, not the model's)."),
    ):
        counter = CounterMetricFamily(name, help_text, labels=_RELEASE)
        for key, stats in sorted(releases.items()):
            counter.add_metric(_release(key), getattr(stats, field))
        yield counter
    yield _latency(releases)
    channels = sorted(snapshot.channels, key=lambda c: c.channel)
    active = GaugeMetricFamily("satchel_model_active", "1 for the release each channel serves.",
                               labels=_RELEASE)
    probation = GaugeMetricFamily("satchel_model_on_probation",
                                  "1 while the serving release is judged.", labels=("channel",))
    swaps = CounterMetricFamily("satchel_model_swaps_total", "Releases swapped in.",
                                labels=("channel",))
    rollbacks = CounterMetricFamily("satchel_model_rollbacks_total",
                                    "Swaps back to an older release.", labels=("channel",))
    for c in channels:
        if c.version is not None:
            active.add_metric([c.channel, c.version, str(c.sequence)], 1)
        probation.add_metric([c.channel], int(c.on_probation))
        swaps.add_metric([c.channel], c.swaps)
        rollbacks.add_metric([c.channel], c.rollbacks)
    yield from (active, probation, swaps, rollbacks)
    from satchel.agent.variants.metrics import families as variant_families

    yield from variant_families(snapshot.variants)
    info = GaugeMetricFamily("satchel_build_info", "The Satchel release running; always 1.",
                             labels=("version",))
    info.add_metric([satchel_version()], 1)
    yield info
    yield from ProcessCollector(registry=None).collect()


class _Scrape:
    def __init__(self, snapshot: MetricsSnapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        return families(self.snapshot)


def render(snapshot: MetricsSnapshot) -> str:
    """The snapshot, build info and process metrics as Prometheus text, ending with a
    newline (served under `content_type()`)."""
    from prometheus_client import generate_latest

    return generate_latest(_Scrape(snapshot)).decode("utf-8")
