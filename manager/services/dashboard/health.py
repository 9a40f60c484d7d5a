"""Health over time, for a device's charts.

It comes from device events of kind `health`, one per channel and period, whose figures are a
health summary (`count`, `errors`, `nan` or `nonfinite`, `p95_ms`). Events carry the device's
own time and ride the LAN and the USB stick alike, durably and at most once, so a USB-only
device's history is as complete as a LAN one's. A channel with no such event is charted from
the summary of the newest check-in alone. Rollbacks are the events of kind `rolled_back`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
import sqlalchemy.orm as so

from satchel.bundles.events import HEALTH, ROLLED_BACK
from satchel.manager.models import Event


@dataclass(frozen=True)
class HealthSample:
    at: datetime
    count: int
    errors: int
    nan: int
    p95_ms: float | None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.count if self.count else None

    @property
    def nan_rate(self) -> float | None:
        return self.nan / self.count if self.count else None


@dataclass(frozen=True)
class RollbackMark:
    at: datetime
    version: str | None
    reason: str | None


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def health_sample(at: datetime, figures: Any) -> HealthSample | None:
    """A health sample from a health summary (event figures or a check-in's `health`
    entry); None when it is not one."""
    if not isinstance(figures, dict):
        return None
    count = _count(figures.get("count"))
    errors = _count(figures.get("errors", 0))
    nan = _count(figures.get("nan", figures.get("nonfinite", 0)))
    p95 = figures.get("p95_ms")
    if count is None or errors is None or nan is None:
        return None
    if isinstance(p95, bool) or not isinstance(p95, (int, float)):
        p95 = None
    return HealthSample(at, count, errors, nan, None if p95 is None else float(p95))


def health_series(
    session: so.Session, device_id: str, limit: int
) -> tuple[dict[str, list[HealthSample]], dict[str, list[RollbackMark]]]:
    """A device's health samples and rollbacks per channel, oldest first, from its newest
    `limit` health and rollback events."""
    samples: dict[str, list[HealthSample]] = defaultdict(list)
    marks: dict[str, list[RollbackMark]] = defaultdict(list)
    rows = session.execute(
        sa.select(
            Event.kind, Event.channel, Event.version, Event.reason, Event.figures, Event.occurred_at
        )
        .where(Event.device_id == device_id, Event.kind.in_((HEALTH, ROLLED_BACK)))
        .order_by(Event.occurred_at.desc(), Event.id.desc())
        .limit(limit)
    )
    for r in rows:
        if r.channel is None:
            continue
        if r.kind == ROLLED_BACK:
            marks[r.channel].append(RollbackMark(r.occurred_at, r.version, r.reason))
            continue
        sample = health_sample(r.occurred_at, r.figures)
        if sample is not None:
            samples[r.channel].append(sample)
    for sampled in samples.values():
        sampled.reverse()
    for marked in marks.values():
        marked.reverse()
    return samples, marks
