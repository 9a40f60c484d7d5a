"""The fleet overview and one device's page, with its health charts."""

from __future__ import annotations

from flask import abort, render_template, request

from satchel.bundles.timeutil import now
from satchel.manager.services.dashboard.device import device_page
from satchel.manager.services.dashboard.fleet import FleetQuery, fleet_overview
from satchel.manager.services.dashboard.states import ATTENTION, DEVICE_STATES
from satchel.manager.web import bp
from satchel.manager.web.common import page_arg, run, thresholds
from satchel.manager.web.config import web_config
from satchel.manager.web.device_charts import DEFAULT_WINDOW, WINDOWS, health_charts, legend


@bp.get("/")
def fleet() -> str:
    """Counts by state, the devices that need attention, and the fleet, worst first:
    searched by id, class or tag (`q`), filtered by `state`, paged (`page`, `per_page`)."""
    web = web_config()
    wanted = request.args.get("state") or None
    if wanted is not None and wanted not in DEVICE_STATES:
        abort(400, f"unknown device state {wanted[:40]!r}")
    per_page = page_arg("per_page") if "per_page" in request.args else web.page_size
    per_page = min(per_page, max(web.page_sizes))  # any size up to the largest offered
    query = FleetQuery(request.args.get("q", ""), wanted, page_arg(), per_page)
    t, th = now(), thresholds()
    overview = run(lambda s: fleet_overview(s, t, th, query, attention_limit=web.attention_shown))
    return render_template(
        "fleet.html",
        overview=overview,
        states=DEVICE_STATES,
        attention_states=ATTENTION,
        thresholds=th,
        page_sizes=sorted({*web.page_sizes, overview.page_size}),
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
    window = request.args.get("window", DEFAULT_WINDOW)
    if window not in WINDOWS:
        window = DEFAULT_WINDOW
    return render_template(
        "device.html",
        page=page,
        charts={c.name: health_charts(c, window) for c in page.channels},
        legends={c.name: legend(c) for c in page.channels},
        windows=WINDOWS,
        window=window,
    )
