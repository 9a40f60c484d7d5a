"""Jinja filters and globals of the dashboard: times, rates, sizes, state labels."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from flask.blueprints import BlueprintSetupState

from satchel.bundles.timeutil import now
from satchel.manager.services.dashboard.figures import flatten_figures
from satchel.manager.web import bp, csrf
from satchel.manager.web.badges import badge_of

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def _as_time(t: datetime | str) -> datetime | None:
    if isinstance(t, datetime):
        return t
    try:
        return datetime.fromisoformat(t)
    except ValueError:
        return None


@bp.app_template_filter("when")
def when(t: datetime | str | None) -> str:
    """A UTC timestamp to the minute: 2026-03-02 12:00 UTC."""
    if t is None:
        return "-"
    parsed = _as_time(t)
    if parsed is None:
        return str(t)
    return parsed.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


@bp.app_template_filter("ago")
def ago(t: datetime | str | None) -> str:
    """How long ago `t` was, roughly: "just now", "5 min ago", "3 h ago", "12 days ago"."""
    if t is None:
        return "never"
    parsed = _as_time(t)
    if parsed is None:
        return str(t)
    seconds = (now() - parsed).total_seconds()
    if seconds < 0:
        return "in the future"
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 2 * 86400:
        return f"{int(seconds // 3600)} h ago"
    return f"{int(seconds // 86400)} days ago"


@bp.app_template_filter("pct")
def pct(value: float | None, digits: int = 1) -> str:
    """A fraction as a percentage."""
    if value is None:
        return "-"
    return f"{value * 100:.{digits}f}%"


@bp.app_template_filter("ms")
def ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g} ms" if value < 100 else f"{value:.0f} ms"


@bp.app_template_filter("size")
def size(n: int | None) -> str:
    """Bytes in binary units: 3.4 MiB."""
    if n is None:
        return "-"
    value = float(n)
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


@bp.app_template_filter("label")
def label(state: str | None) -> str:
    """A state's words, from the one badge vocabulary: "rolled-back" -> "Rolled back"."""
    return badge_of(state).label


@bp.app_template_filter("tone")
def tone(state: str | None) -> str:
    """A state's badge tone (a `.tone-*` class of the stylesheet)."""
    return badge_of(state).tone


@bp.app_template_filter("number")
def number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else ("yes" if value else "no")
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@bp.record_once
def _globals(setup: BlueprintSetupState) -> None:
    # a global, not a context variable: imported macros (csrf_field) see globals only
    setup.app.jinja_env.globals["csrf_token"] = csrf.csrf_token


# deployment target states as the progress bars group them, in drawing order
_SEGMENTS = (
    ("succeeded", "ok", ("succeeded",)),
    ("in progress", "info", ("assigned", "downloaded", "verified", "activated")),
    ("failed", "bad", ("failed",)),
    ("waiting", "pending", ("pending",)),
)


@bp.app_template_filter("segments")
def segments(counts: dict[str, int], total: int) -> list[dict[str, Any]]:
    """Progress-bar segments of deployment target counts: label, css class, count, and x
    and width in percent of `total`."""
    out = []
    x = 0.0
    for name, css, states in _SEGMENTS:
        n = sum(counts.get(s, 0) for s in states)
        if n and total:
            width = 100.0 * n / total
            out.append({"label": name, "css": css, "n": n, "x": x, "width": width})
            x += width
    return out


@bp.app_template_filter("figures")
def figures(value: Any) -> list[tuple[str, str]]:
    """An event's figures as (label, value) pairs."""
    return flatten_figures(value)
