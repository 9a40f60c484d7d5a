"""USB sticks through the API, for `satchel --url URL usb export|import`: the manager works
out a plan's assignments (the admin signs the plan on their own machine: signing keys never
reach the manager), and records the device reports read from a stick."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask import Response, jsonify, request

from satchel.bundles.timeutil import now
from satchel.manager import usb
from satchel.manager.api import bp
from satchel.manager.api.common import json_body, row_id
from satchel.manager.api.guard import requires
from satchel.manager.context import state
from satchel.manager.errors import (
    InvalidRequestError,
    NoTrustRootError,
    ReportRefusedError,
    RequestTooLargeError,
)
from satchel.manager.services import trust
from satchel.manager.services.credentials import ADMIN


@bp.post("/usb/plan")
@requires(ADMIN)
def usb_plan() -> Response:
    """Body: {"deployment_id": N} (optional; default every active deployment). Answer: the
    trust root versions and the assignments of a plan, unsigned."""
    body = json_body(required=False)
    if not isinstance(body, dict):
        raise InvalidRequestError('body must be {"deployment_id": N} or empty')
    deployment_id = body.get("deployment_id")
    if deployment_id is not None:
        if not isinstance(deployment_id, int) or isinstance(deployment_id, bool):
            raise InvalidRequestError("'deployment_id' must be an integer")
        row_id(deployment_id, "deployment")
    t = now()

    def work(s: Any) -> dict[str, Any]:
        version = trust.current_version(s)
        if version is None:
            raise NoTrustRootError("no trust root imported yet")
        assignments = usb.plan_assignments(s, t, deployment_id)
        return {
            "trust_root_version": version,
            "trust_root_versions": [v for v, _ in trust.history(s)],
            "assignments": [a.to_dict() for a in assignments],
        }

    return jsonify(state().db.run(work))


@bp.post("/usb/reports")
@requires(ADMIN)
def usb_report() -> Response:
    """Record one device report from a stick (raw body: the report file; query `path`: where
    it lay on the stick, `reports/<device_id>/<report_id>.json`). 201 recorded, 200 imported
    before, 422 refused."""
    rel = request.args.get("path", "")
    if not rel:
        raise InvalidRequestError("query parameter path (reports/DEVICE/REPORT.json) is required")
    st = state()
    limit = st.config.max_report_bytes
    if request.content_length is not None and request.content_length > limit:
        raise RequestTooLargeError(f"a report is larger than {limit} bytes")
    data = request.stream.read(limit + 1)
    if len(data) > limit:
        raise ReportRefusedError(f"larger than {limit} bytes")
    t = now()
    try:
        recorded = st.db.run(
            lambda s: usb.record_report(s, rel, data, t, st.config.max_events_per_checkin)
        )
    except sa.exc.IntegrityError:
        recorded = False  # imported at the same moment by another request
    response = jsonify({"path": rel, "recorded": recorded})
    response.status_code = 201 if recorded else 200
    return response
