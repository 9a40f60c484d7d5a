"""The variants' metric families for the server's `GET /metrics` (`agent/server/metrics.py`
asks for them with a snapshot taken at each scrape)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from satchel.agent.server.registry import ChannelSlot


@dataclass(frozen=True)
class VariantInfo:
    """One channel's variants at a scrape."""

    channel: str
    current: str
    variants: tuple[str, ...]
    usable: frozenset[str]
    switches: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (from, to) -> n
    seconds: Mapping[str, float] = field(default_factory=dict)  # time spent in each
    inferences: Mapping[str, int] = field(default_factory=dict)


def variant_infos(slots: Mapping[str, ChannelSlot]) -> list[VariantInfo]:
    """What the serving releases with variants say now."""
    found = []
    for channel, slot in sorted(slots.items()):
        vs = slot.active.variants
        if vs is None:
            continue
        found.append(VariantInfo(
            channel=channel, current=vs.current.variant, variants=vs.spec.names,
            usable=frozenset(vs.usable()), switches=dict(vs.switches), seconds=vs.time_in(),
            inferences={n: h.inferences for n, h in vs.health.items()},
        ))
    return found


def families(infos: Sequence[VariantInfo]) -> Iterator[Metric]:
    from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

    current = GaugeMetricFamily(
        "satchel_agent_variant", "1 for the variant a channel's device state chose, 0 others.",
        labels=("channel", "variant"))
    usable = GaugeMetricFamily(
        "satchel_agent_variant_usable",
        "1 for a variant that may answer (loaded, not dropped or disabled).",
        labels=("channel", "variant"))
    switches = CounterMetricFamily(
        "satchel_agent_variant_switches", "Switches of variant by the device's state.",
        labels=("channel", "from", "to"))
    seconds = CounterMetricFamily(
        "satchel_agent_variant_seconds", "Seconds each variant was the chosen one.",
        labels=("channel", "variant"))
    inferences = CounterMetricFamily(
        "satchel_agent_variant_inferences", "Inferences each variant answered.",
        labels=("channel", "variant"))
    for info in infos:
        for name in info.variants:
            labels = [info.channel, name]
            current.add_metric(labels, int(name == info.current))
            usable.add_metric(labels, int(name in info.usable))
            seconds.add_metric(labels, info.seconds.get(name, 0.0))
            inferences.add_metric(labels, info.inferences.get(name, 0))
        for (before, after), n in sorted(info.switches.items()):
            switches.add_metric([info.channel, before, after], n)
    yield from (current, usable, switches, seconds, inferences)


def example() -> list[Any]:
    """One channel with two variants, for docs/OPERATIONS.md's generated table."""
    return [VariantInfo("vision", "lite", ("full", "lite"), frozenset({"full", "lite"}),
                        {("full", "lite"): 1}, {"full": 1.0, "lite": 1.0}, {"full": 1, "lite": 1})]
