"""A device's health charts: p95 latency, error rate and NaN/Inf rate of a channel over one
shared time axis, one line per release in its own colour (the one rolled back included), each
rollback a vertical line and the figure that caused it a ringed, labelled point."""

from __future__ import annotations

from dataclasses import dataclass

from markupsafe import Markup

from satchel.manager import charts
from satchel.manager.services.dashboard.device import ChannelView
from satchel.manager.services.dashboard.health import (
    ERROR_RATE,
    NAN_RATE,
    P95_MS,
    HealthSample,
    breach_figures,
)

# the windows an admin may pick: query value -> (label, seconds; None: all the data)
WINDOWS: dict[str, tuple[str, float | None]] = {
    "15m": ("15 min", 900.0),
    "1h": ("1 h", 3600.0),
    "24h": ("24 h", 86400.0),
    "7d": ("7 days", 7 * 86400.0),
    "all": ("All", None),
}
DEFAULT_WINDOW = "all"


@dataclass(frozen=True)
class _Figure:
    key: str  # the sample's attribute, and the chart's id suffix
    title: str
    unit: str
    policy_key: str  # the health policy's limit on it
    short: str  # its name in a breach label


FIGURES = (
    _Figure(P95_MS, "Latency p95", charts.MILLISECONDS, "max_p95_latency_ms", "p95"),
    _Figure(ERROR_RATE, "Error rate", charts.PERCENT, "max_error_rate", "errors"),
    _Figure(NAN_RATE, "NaN/Inf rate", charts.PERCENT, "max_nan_rate", "NaN/Inf"),
)


@dataclass(frozen=True)
class Legend:
    label: str  # "1.1.0 (rolled back)"
    style: int  # the series colour, as the charts draw it


def release_label(version: str | None, rolled_back: bool) -> str:
    name = version or "unknown release"
    return f"{name} (rolled back)" if rolled_back else name


def legend(channel: ChannelView) -> list[Legend]:
    return [
        Legend(release_label(r.version, r.rolled_back), i % charts.SERIES_STYLES)
        for i, r in enumerate(channel.release_health)
    ]


def _points(samples: tuple[HealthSample, ...], key: str) -> list[charts.Point]:
    out = []
    for s in samples:
        value = getattr(s, key)
        if value is not None:
            out.append(charts.Point(s.at, value))
    return out


def health_charts(channel: ChannelView, window: str = DEFAULT_WINDOW) -> list[Markup]:
    """The three charts of `channel` over the last `window` of its data (a key of WINDOWS),
    with the active bundle's limits drawn (a zero limit lies on the axis)."""
    window_s = WINDOWS.get(window, WINDOWS[DEFAULT_WINDOW])[1]
    markers = [
        charts.Marker(
            r.at,
            f"rollback {r.version or ''}".strip(),
            f"{r.version or ''} {r.reason or ''}".strip(),
        )
        for r in channel.rollbacks
    ]
    series_of = {
        f.key: [
            charts.Series(
                release_label(r.version, r.rolled_back),
                _points(r.samples, f.key),
                i % charts.SERIES_STYLES,
            )
            for i, r in enumerate(channel.release_health)
        ]
        for f in FIGURES
    }
    everything = [p for lines in series_of.values() for s in lines for p in s.points]
    span = charts.time_range(everything, markers, window_s)
    out = []
    for f in FIGURES:
        breaches = [
            charts.Breach(
                r.at,
                b.value,
                f"{f.short} {_format(b.value, f.unit)} > {_format(b.limit, f.unit)}: "
                f"{r.version or 'release'} rolled back",
            )
            for r in channel.rollbacks
            for b in breach_figures(r)
            if b.figure == f.key
        ]
        limit = channel.policy.get(f.policy_key)
        svg = charts.line_chart(
            f"chart-{channel.name}-{f.key}",
            f.title,
            unit=f.unit,
            series=series_of[f.key],
            markers=markers,
            breaches=breaches,
            limit=limit if limit else None,
            span=span,
        )
        out.append(Markup(svg))  # safe: charts escapes every text it writes
    return out


def _format(value: float, unit: str) -> str:
    return charts.format_value(value, unit)
