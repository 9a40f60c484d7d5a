"""`GET /metrics`: the manager's counters (every worker's), the fleet's gauges, build info and
process metrics, as Prometheus text."""

from __future__ import annotations

from flask import Blueprint, Response

from satchel.manager.context import state
from satchel.manager.metrics.exposition import CONTENT_TYPE, render
from satchel.manager.services.fleet_counts import count_fleet

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics_view() -> Response:
    st = state()
    body = render(st.metrics, st.db.run(count_fleet))
    return Response(body, content_type=CONTENT_TYPE)
