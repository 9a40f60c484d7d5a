"""What the device reports: its status, the health of every active release and its queued
events, in the check-in body that both transports carry (the LAN check-in, and the `checkin`
of a USB report).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from satchel.agent.health.stats import HealthStats, ReleaseKey
from satchel.agent.health.store import HEALTH_DIR, HealthStore
from satchel.agent.install.facts import agent_version
from satchel.agent.state import DeviceState
from satchel.bundles.timeutil import format_time, utcnow

TotalsSource = Callable[[ReleaseKey], HealthStats]  # health counters of one release


def stored_totals(state_dir: Path) -> TotalsSource:
    """Health counters from the durable health history (when the service is not the one
    asking: `satchel-agent usb` run by a technician)."""
    return HealthStore(Path(state_dir) / HEALTH_DIR).totals


def health_summary(state: DeviceState, totals: TotalsSource) -> dict[str, dict[str, Any]]:
    """Per channel, the health counters of its active release (the API's `health`):
    count, errors, nan, p95_ms. Raises StateCorruptError."""
    summary: dict[str, dict[str, Any]] = {}
    for channel in state.channels():
        record = state.record(channel)
        if record is None:
            continue
        stats = totals(ReleaseKey(channel, record.active.version, record.active.sequence))
        p95 = stats.latency_quantile_ms(0.95)
        summary[channel] = {
            "count": stats.count,
            "errors": stats.errors,
            "nan": stats.nonfinite,
            "p95_ms": None if p95 is None else round(p95, 3),
        }
    return summary


def checkin_body(
    state: DeviceState,
    events: list[dict[str, Any]],
    health: Mapping[str, Any],
    trust_root_version: int,
) -> dict[str, Any]:
    """The check-in body (also the `checkin` of a USB report). Raises NotInitializedError,
    StateCorruptError."""
    return {
        "agent_version": agent_version(),
        "accepts": ["delta"],  # delta bundles (docs/DELTAS.md): offered only to agents saying so
        "sent_at": format_time(utcnow()),
        "trust_root_version": trust_root_version,
        "status": state.status(),
        "health": dict(health),
        "events": events,
    }
