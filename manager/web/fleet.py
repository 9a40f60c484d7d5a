"""The fleet overview and one device's page, with its health charts."""

from __future__ import annotations

from flask import abort, render_template, request
from markupsafe import Markup

from satchel.bundles.timeutil import now
from satchel.manager import charts
from satchel.manager.services.dashboard.device import ChannelView, device_page
from satchel.manager.services.dashboard.fleet import fleet_overview
from satchel.manager.services.dashboard.states import ATTENTION, DEVICE_STATES
from satchel.manager.web import bp
from satchel.manager.web.common import page_arg, run, thresholds
from satchel.manager.web.config import web_config


@bp.get("/")
def fleet() -> str:
    """Counts by state, the devices that need attention, and the fleet, worst first."""
    web = web_config()
    wanted = request.args.get("state") or None
    if wanted is not None and wanted not in DEVICE_STATES:
        abort(400, f"unknown device state {wanted[:40]!r}")
    t, th, page = now(), thresholds(), page_arg()
    overview = run(
        lambda s: fleet_overview(
            s,
            t,
            th,
            state=wanted,
            page=page,
            page_size=web.page_size,
            attention_limit=web.attention_shown,
        )
    )
    return render_template(
        "fleet.html",
        overview=overview,
        states=DEVICE_STATES,
        attention_states=ATTENTION,
        thresholds=th,
    )


@bp.get("/devices/<device_id>")
def device(device_id: str) -> str:
    """Identity, state, channels with releases and smoke-test figures, health charts with
    rollbacks marked, events, deployments and USB reports of one device."""
    web = web_config()
    t, th = now(), thresholds()
    page = run(
        lambda s: device_page(
            s,
            device_id,
            t,
            th,
            events=web.events_shown,
            samples=web.samples_read,
            targets=web.targets_shown,
        )
    )
    return render_template(
        "device.html",
        page=page,
        charts={c.name: health_charts(c) for c in page.channels},
    )


def health_charts(channel: ChannelView) -> list[Markup]:
    """p95 latency, error rate and NaN rate of a channel over one shared time axis, with its
    rollbacks marked and the active bundle's limits drawn (a zero limit lies on the axis)."""
    markers = [
        charts.Marker(r.at, "rollback", f"{r.version or ''} {r.reason or ''}".strip())
        for r in channel.rollbacks
    ]
    series = [
        (
            "p95",
            "Latency p95",
            charts.MILLISECONDS,
            "max_p95_latency_ms",
            [charts.Point(s.at, s.p95_ms) for s in channel.samples if s.p95_ms is not None],
        ),
        (
            "errors",
            "Error rate",
            charts.PERCENT,
            "max_error_rate",
            [charts.Point(s.at, s.error_rate) for s in channel.samples if s.error_rate is not None],
        ),
        (
            "nan",
            "NaN/Inf rate",
            charts.PERCENT,
            "max_nan_rate",
            [charts.Point(s.at, s.nan_rate) for s in channel.samples if s.nan_rate is not None],
        ),
    ]
    span = charts.time_range([p for *_head, points in series for p in points], markers)
    out = []
    for key, title, unit, policy_key, points in series:
        limit = channel.policy.get(policy_key)
        svg = charts.line_chart(
            f"chart-{channel.name}-{key}",
            title,
            points,
            unit=unit,
            markers=markers,
            limit=limit if limit else None,
            span=span,
        )
        out.append(Markup(svg))  # safe: charts escapes every text it writes
    return out
