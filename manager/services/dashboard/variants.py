"""A channel's variants on the device page: which one the device runs now and why, each one's
state (ready, dropped at install, disabled by its health), its p95 on that device, and the time
spent in each, as the device's last status said (`agent/variants/status.py`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

STATES = ("ready", "dropped", "disabled")


@dataclass(frozen=True)
class VariantRow:
    name: str
    state: str  # one of STATES ("?" for anything else a device says)
    reason: str
    p95_ms: float | None
    seconds: float | None  # time the device spent in it
    share: float | None  # of the time spent in all of them
    current: bool


@dataclass(frozen=True)
class VariantsView:
    current: str
    reason: str
    rows: tuple[VariantRow, ...]


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else None


def variants_view(status: Mapping[str, Any] | None, channel: str) -> VariantsView | None:
    """The channel's variants in a device's last status, or None (no variants, an older
    agent). Never raises on what a device sent."""
    reported = ((status or {}).get("channels") or {}).get(channel)
    if not isinstance(reported, dict) or not isinstance(reported.get("variants"), dict):
        return None
    current = str(reported.get("variant") or "")
    seconds = reported.get("variant_seconds")
    seconds = seconds if isinstance(seconds, dict) else {}
    total = sum(v for v in (_num(x) for x in seconds.values()) if v is not None)
    rows = []
    for name, entry in list(reported["variants"].items())[:64]:
        entry = entry if isinstance(entry, dict) else {}
        spent = _num(seconds.get(name))
        state = entry.get("state")
        rows.append(VariantRow(
            name=str(name)[:64],
            state=state if state in STATES else "?",
            reason=str(entry.get("reason") or "")[:300],
            p95_ms=_num(entry.get("p95_ms")),
            seconds=spent,
            share=(spent / total) if spent is not None and total > 0 else None,
            current=name == current,
        ))
    return VariantsView(current=current[:64], reason=str(reported.get("variant_reason") or "")
                        [:300], rows=tuple(rows))
