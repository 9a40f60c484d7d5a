"""Server-side SVG line charts: health over time, one line per release in its own colour,
with rollbacks marked as vertical lines and the breach that caused each one as a ringed,
labelled point.

Pure functions from points to SVG markup: no JavaScript, no external assets, so a chart reads
the same with no internet. Colours come from CSS classes (the dashboard's stylesheet styles
the inline SVG); every marker and point also carries a `<title>` so the value or the reason
is read out on hover and by screen readers, never by colour alone. Every piece of text is
escaped here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from html import escape

PERCENT, MILLISECONDS = "%", "ms"
_TIME_STEPS_S = (  # candidate spacings of the time axis ticks, in seconds
    10,
    15,
    30,
    60,
    120,
    300,
    900,
    1800,
    3600,
    3 * 3600,
    6 * 3600,
    12 * 3600,
    86400,
    2 * 86400,
    7 * 86400,
    14 * 86400,
    30 * 86400,
)
_MIN_SPAN_S = 60  # seconds shown, at least: a single instant is widened to this
_EDGE_SHARE = 0.04  # share of the data's span added at each end, so no point sits on an edge
SERIES_STYLES = 6  # distinct series colours in the stylesheet (`.series-0` .. `.series-5`)


@dataclass(frozen=True)
class ChartSize:
    """Geometry of a chart. The chart is as wide as its container and `height` pixels tall;
    its text keeps its size at any width (the plot stretches, the labels do not)."""

    height: int = 190  # pixels
    top: int = 30  # pixels above the plot: the title
    bottom: int = 24  # pixels below the plot: the time labels
    gutter: float = 12.0  # percent of the width left of the time axis: the value labels
    pad: float = 2.5  # percent of the width left empty at the right end of the time axis
    x_ticks: int = 6  # time labels wanted, at most
    y_ticks: int = 4  # value gridlines wanted


@dataclass(frozen=True)
class Point:
    at: datetime  # timezone-aware
    value: float


@dataclass(frozen=True)
class Series:
    """One line: `label` names it (a release), `style` picks its colour (0..SERIES_STYLES-1)."""

    label: str
    points: Sequence[Point]
    style: int = 0


@dataclass(frozen=True)
class Breach:
    """The figure that broke a limit: a ringed point at (`at`, `value`) labelled `label`."""

    at: datetime  # timezone-aware
    value: float
    label: str


@dataclass(frozen=True)
class Marker:
    """A vertical line at `at` (a rollback), with a short `label` and a longer `detail`."""

    at: datetime  # timezone-aware
    label: str
    detail: str = ""


def format_value(value: float, unit: str) -> str:
    """A value as shown on the chart: fractions as percentages, latencies in ms."""
    if unit == PERCENT:
        pct = value * 100
        return f"{pct:.0f}%" if pct >= 10 or pct == 0 else f"{pct:.2g}%"
    if unit == MILLISECONDS:
        return f"{value:.0f} ms" if value >= 100 else f"{value:.3g} ms"
    return f"{value:.3g}{unit}"


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k that is >= `value` (> 0)."""
    if value <= 0:
        return 1.0
    exponent = math.floor(math.log10(value))
    for base in (1.0, 2.0, 2.5, 5.0, 10.0):
        candidate = base * 10**exponent
        if candidate >= value * (1 - 1e-9):
            return candidate
    return 10.0 ** (exponent + 1)


def _utc(t: datetime) -> datetime:
    return t.astimezone(timezone.utc)


def _time_label(t: datetime, span_s: float) -> str:
    t = _utc(t)
    if span_s <= 600:
        return t.strftime("%H:%M:%S")
    if span_s <= 2 * 86400:
        return t.strftime("%H:%M")
    return t.strftime("%d %b")


def _time_ticks(start: datetime, end: datetime, wanted: int) -> list[datetime]:
    span = (end - start).total_seconds()
    step = next((s for s in _TIME_STEPS_S if span / s <= wanted), _TIME_STEPS_S[-1])
    first = math.ceil(start.timestamp() / step) * step
    ticks = []
    t = first
    while t <= end.timestamp() + 1e-6:
        ticks.append(datetime.fromtimestamp(t, timezone.utc))
        t += step
    return ticks


def time_range(
    points: Sequence[Point],
    markers: Sequence[Marker],
    window_s: float | None = None,
) -> tuple[datetime, datetime] | None:
    """The time axis: it follows the data. Without `window_s`, the span from the first to the
    last point or marker, with a small margin (a minute at least); with it, the `window_s`
    seconds that end at the newest point or marker. None when there is nothing to show."""
    times = [p.at for p in points] + [m.at for m in markers]
    if not times:
        return None
    start, end = min(times), max(times)
    if window_s is not None:
        return end - timedelta(seconds=window_s), end + timedelta(seconds=window_s * _EDGE_SHARE)
    span = (end - start).total_seconds()
    if span < _MIN_SPAN_S:
        pad = timedelta(seconds=(_MIN_SPAN_S - span) / 2)
        return start - pad, end + pad
    margin = timedelta(seconds=span * _EDGE_SHARE)
    return start - margin, end + margin


def in_span(points: Sequence[Point], span: tuple[datetime, datetime] | None) -> list[Point]:
    """The points inside `span` (all of them when it is None)."""
    if span is None:
        return list(points)
    return [p for p in points if span[0] <= p.at <= span[1]]


def line_chart(
    chart_id: str,
    title: str,
    points: Sequence[Point] = (),
    *,
    unit: str,
    series: Sequence[Series] = (),
    markers: Sequence[Marker] = (),
    breaches: Sequence[Breach] = (),
    limit: float | None = None,
    span: tuple[datetime, datetime] | None = None,
    size: ChartSize | None = None,
) -> str:
    """SVG markup of a line chart over time: `points` as one line, or several `series` (one
    per release, each in its colour).

    `markers` are drawn as labelled vertical lines (rollbacks), `breaches` as ringed,
    labelled points (the figure that caused a rollback), `limit` as a dashed horizontal line
    (the health policy's threshold). `span` fixes the time axis (so several charts of one
    device line up; points outside it are left out); by default it follows the data.
    `chart_id` must be unique in the page (it names the SVG's title for screen readers).

    Text is placed in pixels and percentages of the width; the series is drawn in a nested
    SVG stretched to the plot (strokes and dots keep their size: non-scaling strokes).
    """
    size = size or ChartSize()
    lines = list(series) or ([Series("", points)] if points else [])
    lines = [
        Series(s.label, sorted(in_span(s.points, span), key=lambda p: p.at), s.style) for s in lines
    ]
    everything = [p for s in lines for p in s.points]
    span = span or time_range(everything + [Point(b.at, b.value) for b in breaches], markers)
    breaches = [b for b in breaches if span is None or span[0] <= b.at <= span[1]]
    top, plot_h = size.top, size.height - size.top - size.bottom
    ident = escape(chart_id, quote=True)
    out = [
        f'<svg class="chart" width="100%" height="{size.height}" role="img" '
        f'aria-labelledby="{ident}-title {ident}-desc">',
        f'<title id="{ident}-title">{escape(title)}</title>',
        f'<desc id="{ident}-desc">{escape(_summary(title, lines, markers, breaches, unit))}</desc>',
        f'<text class="chart-title" x="8" y="18">{escape(title)}</text>',
        f'<rect class="plot" x="{size.gutter:.1f}%" y="{top}" width="{100 - size.gutter:.1f}%" '
        f'height="{plot_h}"/>',
    ]
    values = [p.value for p in everything] + [b.value for b in breaches]
    top_value = max(values + ([limit] if limit is not None else []) + [0.0])
    if unit == PERCENT:
        top_value = min(max(top_value, 0.01), 1.0)
    step = nice_ceiling(top_value * 1.1 / size.y_ticks) if top_value > 0 else 0.25
    ticks = max(1, math.ceil(top_value * 1.1 / step - 1e-9)) if top_value > 0 else 4
    if unit == PERCENT and step * ticks > 1.0:
        step, ticks = 0.25, 4
    y_max = step * ticks

    def y_px(value: float) -> float:
        return top + plot_h - min(max(value, 0.0) / y_max, 1.0) * plot_h

    for i in range(0, ticks + 1):
        value = step * i
        y = y_px(value)
        out.append(
            f'<line class="grid" x1="{size.gutter:.1f}%" y1="{y:.1f}" x2="100%" y2="{y:.1f}"/>'
        )
        out.append(
            f'<text class="axis-label y-label" x="{size.gutter:.1f}%" dx="-5" y="{y + 4:.1f}" '
            f'text-anchor="end">{escape(format_value(value, unit))}</text>'
        )
    if span is None or not everything:
        out.append(
            f'<text class="chart-empty" x="50%" y="{top + plot_h / 2 + 4:.1f}" '
            'text-anchor="middle">No health samples yet</text>'
        )
    if span is None:
        out.append("</svg>")
        return "".join(out)
    start, end = span
    total_s = max((end - start).total_seconds(), 1.0)

    width = 100 - size.gutter - 2 * size.pad

    def x_pct(t: datetime) -> float:
        return size.gutter + size.pad + (t - start).total_seconds() / total_s * width

    for tick in _time_ticks(start, end, size.x_ticks):
        x = x_pct(tick)
        anchor = "end" if x > 94 else "middle"
        out.append(
            f'<line class="tick" x1="{x:.2f}%" y1="{top + plot_h}" x2="{x:.2f}%" '
            f'y2="{top + plot_h + 4}"/>'
            f'<text class="axis-label" x="{x:.2f}%" y="{size.height - 6}" '
            f'text-anchor="{anchor}">{escape(_time_label(tick, total_s))}</text>'
        )
    if limit is not None and limit <= y_max:
        y = y_px(limit)
        label = f"limit {format_value(limit, unit)}"
        out.append(
            f'<line class="limit" x1="{size.gutter:.1f}%" y1="{y:.1f}" x2="100%" y2="{y:.1f}">'
            f"<title>{escape(label)}</title></line>"
            f'<text class="limit-label" x="{size.gutter:.1f}%" dx="4" y="{y - 4:.1f}">'
            f"{escape(label)}</text>"
        )
    for m in sorted(markers, key=lambda m: m.at):
        x = x_pct(m.at)
        when = _utc(m.at).strftime("%Y-%m-%d %H:%M:%S UTC")
        tip = f"{m.label} at {when}" + (f": {m.detail}" if m.detail else "")
        anchor, dx = ("end", -4) if x > 75 else ("start", 4)
        out.append(
            f'<g class="marker rollback-marker"><title>{escape(tip)}</title>'
            f'<line x1="{x:.2f}%" y1="{top}" x2="{x:.2f}%" y2="{top + plot_h}"/>'
            f'<text x="{x:.2f}%" dx="{dx}" y="{top + 12}" text-anchor="{anchor}">'
            f"{escape(m.label)}</text></g>"
        )
    if everything or breaches:
        out.append(
            f'<svg x="0" y="{top}" width="100%" height="{plot_h}" viewBox="0 0 1000 1000" '
            'preserveAspectRatio="none" overflow="visible">'
        )

        def xy(at: datetime, value: float) -> str:
            y = 1000 - min(max(value, 0.0) / y_max, 1.0) * 1000
            return f"{x_pct(at) * 10:.1f} {y:.1f}"

        for line in lines:
            style = line.style % SERIES_STYLES
            name = f"{line.label}: " if line.label else ""
            out.append(f'<g class="series-{style}" data-series="{escape(line.label, quote=True)}">')
            if len(line.points) > 1:
                coords = " ".join(xy(p.at, p.value) for p in line.points)
                out.append(
                    f'<polyline class="series" points="{coords}">'
                    f"<title>{escape(line.label)}</title></polyline>"
                )
            for p in line.points:
                when = _utc(p.at).strftime("%Y-%m-%d %H:%M:%S UTC")
                out.append(
                    f'<path class="point" d="M{xy(p.at, p.value)} h0"><title>{escape(name)}'
                    f"{escape(when)}: {escape(format_value(p.value, unit))}</title></path>"
                )
            out.append("</g>")
        for b in breaches:
            out.append(
                f'<path class="breach-ring" d="M{xy(b.at, b.value)} h0">'
                f"<title>{escape(b.label)}</title></path>"
            )
        out.append("</svg>")
    for b in breaches:
        x = x_pct(b.at)
        y = max(y_px(b.value) - 10, top + 26)
        anchor, dx = ("end", -8) if x > 60 else ("start", 8)
        out.append(
            f'<text class="breach-label" x="{x:.2f}%" dx="{dx}" y="{y:.1f}" '
            f'text-anchor="{anchor}">{escape(b.label)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def _summary(
    title: str,
    lines: Sequence[Series],
    markers: Sequence[Marker],
    breaches: Sequence[Breach],
    unit: str,
) -> str:
    parts = []
    for line in lines:
        if not line.points:
            continue
        last = line.points[-1]
        peak = max(p.value for p in line.points)
        name = f"{line.label}: " if line.label else ""
        parts.append(
            f"{name}{len(line.points)} samples, latest {format_value(last.value, unit)}, "
            f"highest {format_value(peak, unit)}"
        )
    text = f"{title}: " + ("; ".join(parts) if parts else "no samples") + "."
    if markers:
        text += f" {len(markers)} rollback(s) marked."
    for b in breaches:
        text += f" {b.label}."
    return text
