"""Deployments: create, list, status with every device's progress, pause, resume, abort."""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify, request

from satchel.bundles.timeutil import now
from satchel.manager.api import bp
from satchel.manager.api.common import json_body, row_id
from satchel.manager.api.guard import requires
from satchel.manager.context import state
from satchel.manager.errors import InvalidRequestError
from satchel.manager.services import deployments, rewrap
from satchel.manager.services.credentials import ADMIN
from satchel.manager.services.deployments import Selectors


def _ratio(body: dict[str, Any], key: str, default: float) -> float:
    value = body.get(key, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise InvalidRequestError(f"'{key}' must be a number")
    return float(value)


@bp.post("/deployments")
@requires(ADMIN)
def create_deployment() -> Response:
    """Body: {"bundle": "NAME:VERSION" | sha256, "device_classes": [], "tags": [],
    "devices": [], "waves": "1,10%,50%,100%", "success_ratio": 0.95,
    "max_failure_ratio": 0.1}."""
    body = json_body()
    if not isinstance(body, dict) or not isinstance(body.get("bundle"), str):
        raise InvalidRequestError("'bundle' (NAME:VERSION or sha256) is required")
    cfg = state().config
    waves = body.get("waves", cfg.deploy_default_waves)
    if isinstance(waves, list):
        waves = ",".join(str(w) for w in waves)
    if not isinstance(waves, str):
        raise InvalidRequestError("'waves' must be a string like \"1,10%,100%\" or a list")
    selectors = Selectors.from_dict(body)
    success = _ratio(body, "success_ratio", cfg.deploy_success_ratio)
    failure = _ratio(body, "max_failure_ratio", cfg.deploy_max_failure_ratio)
    t = now()

    st = state()

    def work(s: Any) -> tuple[dict[str, Any], str | None]:
        dep = deployments.create(s, body["bundle"], selectors, waves, success, failure, t)
        replaced = rewrap.for_deployment(s, st.store, cfg, dep, t)  # encrypted: its devices
        return deployments.summary(s, dep), replaced

    out, replaced = st.db.run(work)
    if replaced is not None:
        st.store.delete(replaced)  # after the commit: no offer names it any more
    response = jsonify(out)
    response.status_code = 201
    return response


@bp.get("/deployments")
@requires(ADMIN)
def list_deployments() -> Response:
    wanted = request.args.get("state")
    if wanted is not None and wanted not in deployments.DEPLOYMENT_STATES:
        raise InvalidRequestError(
            f"state must be one of {', '.join(deployments.DEPLOYMENT_STATES)}"
        )

    def work(s: Any) -> dict[str, Any]:
        found = deployments.list_deployments(s, wanted)
        return {"deployments": [deployments.summary(s, d) for d in found]}

    return jsonify(state().db.run(work))


@bp.get("/deployments/<int:deployment_id>")
@requires(ADMIN)
def deployment_status(deployment_id: int) -> Response:
    row_id(deployment_id, "deployment")
    t = now()
    return jsonify(state().db.run(lambda s: deployments.status(s, deployment_id, t)))


def _act(deployment_id: int, action: str) -> Response:
    row_id(deployment_id, "deployment")
    t = now()
    reason = ""
    if action == "abort":
        body = json_body(required=False)
        reason = str(body.get("reason", "")) if isinstance(body, dict) else ""

    def work(s: Any) -> dict[str, Any]:
        return deployments.summary(s, deployments.act(s, deployment_id, action, t, reason))

    return jsonify(state().db.run(work))


@bp.post("/deployments/<int:deployment_id>/pause")
@requires(ADMIN)
def pause_deployment(deployment_id: int) -> Response:
    return _act(deployment_id, "pause")


@bp.post("/deployments/<int:deployment_id>/resume")
@requires(ADMIN)
def resume_deployment(deployment_id: int) -> Response:
    return _act(deployment_id, "resume")


@bp.post("/deployments/<int:deployment_id>/abort")
@requires(ADMIN)
def abort_deployment(deployment_id: int) -> Response:
    return _act(deployment_id, "abort")
