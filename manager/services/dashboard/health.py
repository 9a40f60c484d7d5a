"""Health over time, for a device's charts.

It comes from device events of kind `health`, one per channel and period, whose figures are a
health summary (`count`, `errors`, `nan` or `nonfinite`, `p95_ms`). Events carry the device's
own time and ride the LAN and the USB stick alike, durably and at most once, so a USB-only
device's history is as complete as a LAN one's. A channel with no such event is charted from
the summary of the newest check-in alone. Rollbacks are the events of kind `rolled_back`;
the counters that made the device roll back (their `stats`) are the last sample of the
release rolled back, so its line ends at the breach even when no `health` event of it was
sent before the rollback.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
import sqlalchemy.orm as so

from satchel.bundles.events import HEALTH, ROLLED_BACK
from satchel.manager.models import Event

ERROR_RATE, NAN_RATE, P95_MS = "error_rate", "nan_rate", "p95_ms"  # the charted figures


@dataclass(frozen=True)
class HealthSample:
    at: datetime
    count: int
    errors: int
    nan: int
    p95_ms: float | None
    version: str | None = None  # the release that served these inferences
    sequence: int | None = None

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
    sequence: int | None = None
    stats: HealthSample | None = None  # the counters the device judged when it rolled back
    to_version: str | None = None  # the release it went back to


@dataclass(frozen=True)
class ReleaseHealth:
    """One release's health samples on a channel, oldest first."""

    version: str | None
    sequence: int | None
    samples: tuple[HealthSample, ...]
    rolled_back: bool  # some rollback on the device names this release


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def health_sample(
    at: datetime, figures: Any, version: str | None = None, sequence: int | None = None
) -> HealthSample | None:
    """A health sample from a health summary (event figures, a check-in's `health` entry, or
    a rollback's `stats`); None when it is not one."""
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
    return HealthSample(
        at, count, errors, nan, None if p95 is None else float(p95), version, sequence
    )


def health_series(
    session: so.Session, device_id: str, limit: int
) -> tuple[dict[str, list[HealthSample]], dict[str, list[RollbackMark]]]:
    """A device's health samples and rollbacks per channel, oldest first, from its newest
    `limit` health and rollback events."""
    samples: dict[str, list[HealthSample]] = defaultdict(list)
    marks: dict[str, list[RollbackMark]] = defaultdict(list)
    rows = session.execute(
        sa.select(
            Event.kind,
            Event.channel,
            Event.version,
            Event.sequence,
            Event.reason,
            Event.figures,
            Event.occurred_at,
        )
        .where(Event.device_id == device_id, Event.kind.in_((HEALTH, ROLLED_BACK)))
        .order_by(Event.occurred_at.desc(), Event.id.desc())
        .limit(limit)
    )
    for r in rows:
        if r.channel is None:
            continue
        if r.kind == ROLLED_BACK:
            figures = r.figures if isinstance(r.figures, dict) else {}
            stats = health_sample(r.occurred_at, figures.get("stats"), r.version, r.sequence)
            back_to = figures.get("to_version")
            marks[r.channel].append(
                RollbackMark(
                    r.occurred_at,
                    r.version,
                    r.reason,
                    r.sequence,
                    stats,
                    back_to if isinstance(back_to, str) else None,
                )
            )
            continue
        sample = health_sample(r.occurred_at, r.figures, r.version, r.sequence)
        if sample is not None:
            samples[r.channel].append(sample)
    for sampled in samples.values():
        sampled.reverse()
    for marked in marks.values():
        marked.reverse()
    return samples, marks


def by_release(
    samples: list[HealthSample],
    rollbacks: list[RollbackMark],
    versions: Mapping[int, str] | None = None,
) -> tuple[ReleaseHealth, ...]:
    """A channel's samples split by release (by sequence, else by version; oldest release
    first), each rollback's counters appended to the release it rolled back. `versions` names
    the sequences the samples do not (the device's reported releases)."""
    Key = tuple[int | None, str | None]

    def key(sequence: int | None, version: str | None) -> Key:
        return (sequence, None) if sequence is not None else (None, version)

    keyed: dict[Key, list[HealthSample]] = defaultdict(list)
    named: dict[Key, str] = {}
    for sequence, version in (versions or {}).items():
        named[key(sequence, None)] = version
    for s in samples:
        keyed[key(s.sequence, s.version)].append(s)
        if s.version:
            named.setdefault(key(s.sequence, s.version), s.version)
    rolled = set()
    for r in rollbacks:
        k = key(r.sequence, r.version)
        rolled.add(k)
        if r.version:
            named[k] = r.version
        if r.stats is not None:
            keyed[k].append(r.stats)
        else:
            keyed.setdefault(k, [])

    def order(k: Key) -> tuple[bool, int, str]:
        return (k[0] is None, k[0] or 0, k[1] or "")

    return tuple(
        ReleaseHealth(
            named.get(k, k[1]),
            k[0],
            tuple(sorted(keyed[k], key=lambda s: s.at)),
            k in rolled,
        )
        for k in sorted(keyed, key=order)
    )


# the judge's reasons (`bundles.health.judge`): "health: nan rate 0.30 > 0.00 over 40 ..."
_BREACH = re.compile(r"(error rate|nan rate|p95 latency) ([0-9.]+)(?: ms)? > ([0-9.]+)")
BREACH_FIGURES = {"error rate": ERROR_RATE, "nan rate": NAN_RATE, "p95 latency": P95_MS}


@dataclass(frozen=True)
class BreachFigure:
    """Which figure broke the policy when a release was rolled back, and how far."""

    figure: str  # ERROR_RATE | NAN_RATE | P95_MS
    value: float  # the device's figure (a fraction, or milliseconds)
    limit: float


def breach_figures(mark: RollbackMark) -> list[BreachFigure]:
    """The figures a rollback's reason names as broken (none for a crash loop or a failed
    smoke test), valued from its counters when it carries them."""
    out = []
    for name, value, limit in _BREACH.findall(mark.reason or ""):
        figure = BREACH_FIGURES[name]
        measured = float(value)
        if mark.stats is not None:
            exact = getattr(mark.stats, figure)
            measured = exact if exact is not None else measured
        out.append(BreachFigure(figure, measured, float(limit)))
    return out
