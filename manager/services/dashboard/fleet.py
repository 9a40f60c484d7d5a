"""The fleet overview: counts of devices by state, the devices that need attention first, and
one page of the fleet, worst first."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy.orm as so

from satchel.manager.services.dashboard.classify import (
    classify,
    device_row,
    gather,
    health_policies,
)
from satchel.manager.services.dashboard.states import DEVICE_STATES, RANK, DeviceRow, Thresholds


@dataclass(frozen=True)
class FleetOverview:
    total: int
    counts: dict[str, int]  # every state of DEVICE_STATES, in that order
    attention: tuple[DeviceRow, ...]  # the worst devices first, at most the limit asked
    attention_total: int
    rows: tuple[DeviceRow, ...]  # one page of the fleet, worst first
    page: int  # 1-based
    pages: int
    state: str | None  # the state the rows are filtered by


def fleet_overview(
    session: so.Session,
    now: datetime,
    thresholds: Thresholds,
    *,
    state: str | None = None,
    page: int = 1,
    page_size: int = 100,
    attention_limit: int = 50,
) -> FleetOverview:
    """Counts of devices by state, the devices that need attention first, and one page of
    the fleet (optionally only devices in `state`), worst first then by id.

    A `page` past the end gives the last page. Raises nothing of its own.
    """
    facts = gather(session, now, thresholds)
    policies = health_policies(session)
    rows = []
    for f in facts.values():
        judged, why = classify(f, policies, thresholds, now)
        rows.append(device_row(f, judged, why))
    rows.sort(key=lambda r: (RANK[r.state], r.device_id))
    counts = {s: 0 for s in DEVICE_STATES}
    for r in rows:
        counts[r.state] += 1
    attention = [r for r in rows if r.needs_attention]
    shown = [r for r in rows if state is None or r.state == state]
    pages = max(1, -(-len(shown) // page_size))
    page = min(max(1, page), pages)
    start = (page - 1) * page_size
    return FleetOverview(
        total=len(rows),
        counts=counts,
        attention=tuple(attention[:attention_limit]),
        attention_total=len(attention),
        rows=tuple(shown[start : start + page_size]),
        page=page,
        pages=pages,
        state=state,
    )
