"""How big the fleet is and how it fares: devices, their channels' states, when they were last
seen, bundles, deployments by state and the waves that halted (what `/metrics` reports as
gauges, read at scrape time so every worker reports the same)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
import sqlalchemy.orm as so

from satchel.bundles.timeutil import now
from satchel.manager.models import Bundle, Deployment, Device, DeviceChannel
from satchel.manager.services.deployments.states import HALTED

# Windows of the "not seen for" gauge: (label, seconds); a device never seen counts in all.
NOT_SEEN_WINDOWS = (("5m", 300), ("1h", 3600), ("24h", 86400), ("7d", 7 * 86400))


@dataclass(frozen=True)
class FleetCounts:
    devices: int
    bundles: int
    deployments_by_state: list[tuple[str, int]]  # (state, deployments), sorted by state
    # (channel, state, devices), sorted
    channels_by_state: list[tuple[str, str, int]] = field(default_factory=list)
    # (window, devices not seen within it), in NOT_SEEN_WINDOWS order
    not_seen: list[tuple[str, int]] = field(default_factory=list)
    # (deployment id, wave number from 1) of each halted deployment
    halted_waves: list[tuple[int, int]] = field(default_factory=list)


def count_fleet(session: so.Session, at: datetime | None = None) -> FleetCounts:
    """Count the devices (by channel state, by last contact before `at`), bundles and
    deployments (by state) in the database, and list the halted waves."""
    devices = session.scalar(sa.select(sa.func.count()).select_from(Device)) or 0
    bundles = session.scalar(sa.select(sa.func.count()).select_from(Bundle)) or 0
    by_state = session.execute(
        sa.select(Deployment.state, sa.func.count()).group_by(Deployment.state)
    )
    channels = session.execute(
        sa.select(DeviceChannel.channel, DeviceChannel.state, sa.func.count())
        .group_by(DeviceChannel.channel, DeviceChannel.state)
    )
    at = at or now()
    windows = [
        sa.func.count().filter(
            sa.or_(Device.last_seen_at.is_(None), Device.last_seen_at < at - timedelta(seconds=s))
        )
        for _, s in NOT_SEEN_WINDOWS
    ]
    not_seen = session.execute(sa.select(*windows).select_from(Device)).one()
    halted = session.execute(
        sa.select(Deployment.id, Deployment.current_wave).where(Deployment.state == HALTED)
    )
    return FleetCounts(
        devices,
        bundles,
        [(s, n) for s, n in sorted(by_state)],
        [(c, s or "unknown", n) for c, s, n in sorted(channels)],
        [(label, n or 0) for (label, _), n in zip(NOT_SEEN_WINDOWS, not_seen, strict=True)],
        [(d, wave + 1) for d, wave in sorted(halted)],
    )
