"""How big the fleet is: devices, bundles, and deployments in each state (what `/metrics`
reports as gauges, read at scrape time so every worker reports the same)."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
import sqlalchemy.orm as so

from satchel.manager.models import Bundle, Deployment, Device


@dataclass(frozen=True)
class FleetCounts:
    devices: int
    bundles: int
    deployments_by_state: list[tuple[str, int]]  # (state, deployments), sorted by state


def count_fleet(session: so.Session) -> FleetCounts:
    """Count the devices, bundles and deployments (by state) in the database."""
    devices = session.scalar(sa.select(sa.func.count()).select_from(Device)) or 0
    bundles = session.scalar(sa.select(sa.func.count()).select_from(Bundle)) or 0
    by_state = session.execute(
        sa.select(Deployment.state, sa.func.count()).group_by(Deployment.state)
    )
    return FleetCounts(devices, bundles, [(s, n) for s, n in sorted(by_state)])
