"""Health over time reaches the manager as `health` events: one per serving release and
interval, with exactly what happened since the previous one."""

from __future__ import annotations

from pathlib import Path

from satchel.agent.event_queue import EventQueue
from satchel.agent.health.samples import HealthSampler
from satchel.agent.health.stats import HealthStats, ReleaseKey

V1 = ReleaseKey("vision", "1.0", 1)
V2 = ReleaseKey("vision", "1.1", 2)


def served(n: int, *, errors: int = 0, nan: int = 0, latency_ms: float = 2.0) -> HealthStats:
    stats = HealthStats()
    for i in range(n):
        stats.record(latency_ms, error=i < errors, nonfinite=i < nan)
    return stats


def test_first_sample_after_start_sets_the_baseline_and_queues_nothing(tmp_path: Path) -> None:
    totals = {V1: served(100)}
    sampler = HealthSampler(lambda: totals, EventQueue(tmp_path))

    assert sampler.sample() == 0
    assert EventQueue(tmp_path).pending() == []


def test_sample_holds_only_what_happened_since_the_previous_one(tmp_path: Path) -> None:
    totals = {V1: served(100)}
    queue = EventQueue(tmp_path)
    sampler = HealthSampler(lambda: totals, queue)
    later = served(100)
    later.merge(served(50, errors=5, nan=2, latency_ms=40.0))
    totals = {V1: later}

    assert sampler.sample() == 1

    [event] = EventQueue(tmp_path).pending()
    assert event["kind"] == "health"
    assert (event["channel"], event["version"], event["sequence"]) == ("vision", "1.0", 1)
    figures = event["figures"]
    assert (figures["count"], figures["errors"], figures["nan"]) == (50, 5, 2)
    assert figures["p95_ms"] > 20  # the new inferences took 40 ms, the old ones 2 ms


def test_idle_release_queues_nothing_and_a_new_release_is_sampled(tmp_path: Path) -> None:
    totals = {V1: served(10)}
    sampler = HealthSampler(lambda: totals, EventQueue(tmp_path))
    totals = {V1: served(10), V2: served(7, errors=1)}

    assert sampler.sample() == 1

    [event] = EventQueue(tmp_path).pending()
    assert event["version"] == "1.1" and event["figures"]["count"] == 7
    assert sampler.sample() == 0  # nothing new since
