"""Prometheus text exposition (format 0.0.4) of the inference server's counters.

Pure formatting: the server takes a `MetricsSnapshot` and this module turns it into the text
`GET /metrics` answers. Latencies are exported in seconds, as Prometheus convention asks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from satchel.agent.health.stats import LATENCY_BUCKETS_MS, HealthStats, ReleaseKey

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


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


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _release_labels(key: ReleaseKey) -> dict[str, str]:
    return {"channel": key.channel, "version": key.version, "sequence": str(key.sequence)}


class _Text:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, labels: Mapping[str, str], value: float) -> None:
        text = str(value) if isinstance(value, int) else repr(float(value))
        self.lines.append(f"{name}{_labels(**labels)} {text}")


def _histogram(text: _Text, name: str, releases: Mapping[ReleaseKey, HealthStats]) -> None:
    text.family(name, "histogram", "Model run time per inference, in seconds.")
    for key, stats in sorted(releases.items()):
        labels = _release_labels(key)
        cumulative = 0
        for bound, n in zip(LATENCY_BUCKETS_MS, stats.latency_buckets, strict=False):
            cumulative += n
            text.sample(f"{name}_bucket", {**labels, "le": f"{bound / 1000:g}"}, cumulative)
        text.sample(f"{name}_bucket", {**labels, "le": "+Inf"}, stats.count)
        text.sample(f"{name}_sum", labels, stats.latency_ms_sum / 1000)
        text.sample(f"{name}_count", labels, stats.count)


def render(snapshot: MetricsSnapshot) -> str:
    """The snapshot as Prometheus text, ending with a newline."""
    text = _Text()
    text.family("satchel_http_requests_total", "counter", "HTTP requests by endpoint and status.")
    for (endpoint, status), n in sorted(snapshot.http_requests.items()):
        text.sample("satchel_http_requests_total", {"endpoint": endpoint, "code": str(status)}, n)
    releases = snapshot.releases
    for name, field, help_text in (
        ("satchel_inferences_total", "count", "Inferences run, failed ones included."),
        ("satchel_inference_errors_total", "errors", "Inferences the runtime failed."),
        ("satchel_inference_nonfinite_total", "nonfinite", "Inferences with NaN/Inf outputs."),
        ("satchel_inference_nonfinite_inputs_total", "nonfinite_inputs",
         "Inferences fed NaN/Inf inputs (the client's fault, not the model's)."),
    ):
        text.family(name, "counter", help_text)
        for key, stats in sorted(releases.items()):
            text.sample(name, _release_labels(key), getattr(stats, field))
    _histogram(text, "satchel_inference_latency_seconds", releases)
    channels = sorted(snapshot.channels, key=lambda c: c.channel)
    text.family("satchel_model_active", "gauge", "1 for the release each channel serves.")
    for c in channels:
        if c.version is not None:
            labels = {"channel": c.channel, "version": c.version, "sequence": str(c.sequence)}
            text.sample("satchel_model_active", labels, 1)
    text.family("satchel_model_on_probation", "gauge", "1 while the serving release is judged.")
    for c in channels:
        text.sample("satchel_model_on_probation", {"channel": c.channel}, int(c.on_probation))
    text.family("satchel_model_swaps_total", "counter", "Releases swapped in.")
    for c in channels:
        text.sample("satchel_model_swaps_total", {"channel": c.channel}, c.swaps)
    text.family("satchel_model_rollbacks_total", "counter", "Swaps back to an older release.")
    for c in channels:
        text.sample("satchel_model_rollbacks_total", {"channel": c.channel}, c.rollbacks)
    return "\n".join(text.lines) + "\n"
