"""The text `/metrics` answers: the counters (every worker's, added up, under `satchel
serve`), the fleet's gauges read from the database, `satchel_build_info` and `process_*`, in
prometheus_client's text format, under its Content-Type."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from satchel.manager.metrics.multiproc import multiproc_dir
from satchel.manager.metrics.process import ProcessGroupCollector
from satchel.manager.metrics.registry import Metrics
from satchel.manager.services.fleet_counts import FleetCounts

CONTENT_TYPE = CONTENT_TYPE_LATEST


def satchel_version() -> str:
    try:
        return importlib.metadata.version("satchel")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0+unknown"


def build_info(version: str) -> GaugeMetricFamily:
    """`satchel_build_info{version="..."} 1`, as on the agent."""
    info = GaugeMetricFamily("satchel_build_info", "The Satchel release running; always 1.",
                             labels=("version",))
    info.add_metric((version,), 1)
    return info


def fleet_families(fleet: FleetCounts) -> list[Metric]:
    """The fleet's gauges: devices, their channels by state, devices not seen within each
    window, bundles, deployments by state, and the wave each halted deployment stopped at."""
    devices = GaugeMetricFamily("satchel_devices", "Devices enrolled or registered.")
    devices.add_metric((), fleet.devices)
    channels = GaugeMetricFamily(
        "satchel_device_channels", "Devices per channel and channel state (active, "
        "probation, rolled-back, installing, rolling-back), as last reported.",
        labels=("channel", "state"))
    for channel, state, n in fleet.channels_by_state:
        channels.add_metric((channel, state), n)
    not_seen = GaugeMetricFamily(
        "satchel_devices_not_seen", "Devices with no check-in or USB report within the "
        "window (never seen ones included).", labels=("window",))
    for window, n in fleet.not_seen:
        not_seen.add_metric((window,), n)
    bundles = GaugeMetricFamily("satchel_bundles", "Bundles in the store.")
    bundles.add_metric((), fleet.bundles)
    deployments = GaugeMetricFamily("satchel_deployments", "Deployments by state.",
                                    labels=("state",))
    for state, n in fleet.deployments_by_state:
        deployments.add_metric((state,), n)
    halted = GaugeMetricFamily(
        "satchel_wave_halted", "1 for the wave each halted deployment stopped at.",
        labels=("deployment", "wave"))
    for deployment, wave in fleet.halted_waves:
        halted.add_metric((str(deployment), str(wave)), 1)
    return [devices, channels, not_seen, bundles, deployments, halted]


class _Scrape:
    """Every family of one scrape, in order."""

    def __init__(self, parts: Iterable[Collector | Iterable[Metric]]) -> None:
        self.parts = parts

    def collect(self) -> Iterator[Metric]:
        for part in self.parts:
            yield from part.collect() if hasattr(part, "collect") else part


def render(metrics: Metrics, fleet: FleetCounts) -> bytes:
    """The text exposition of the counters, `fleet`, build info and process metrics."""
    shared = multiproc_dir()
    counters: Collector = (
        metrics.registry if shared is None else MultiProcessCollector(None, str(shared))
    )
    scrape = _Scrape([counters, fleet_families(fleet), [build_info(satchel_version())],
                      ProcessGroupCollector()])
    return generate_latest(scrape)
