"""`GET /metrics`: the answering worker's counters and the fleet's gauges, as Prometheus text."""

from __future__ import annotations

import os

from flask import Blueprint, Response

from satchel.manager.context import state
from satchel.manager.metrics.exposition import CONTENT_TYPE, Gauges, render
from satchel.manager.services.fleet_counts import FleetCounts, count_fleet

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics_view() -> Response:
    st = state()
    gauges = fleet_gauges(st.db.run(count_fleet))
    text = render(st.metrics.snapshot(), gauges, worker=str(os.getpid()))
    return Response(text, mimetype=CONTENT_TYPE)


def fleet_gauges(fleet: FleetCounts) -> Gauges:
    """The fleet's size as gauges: devices, bundles, and deployments by state."""
    return {
        "satchel_devices": [((), fleet.devices)],
        "satchel_bundles": [((), fleet.bundles)],
        "satchel_deployments": [((("state", s),), n) for s, n in fleet.deployments_by_state],
    }
