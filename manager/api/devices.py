"""Devices: enrollment, check-in, the fleet list, one device's detail, tags and events."""

from __future__ import annotations

from typing import Any

from flask import Response, g, jsonify, request

from satchel.bundles.timeutil import now
from satchel.manager.api import bp
from satchel.manager.api.common import int_arg, json_body
from satchel.manager.api.guard import current_principal, requires
from satchel.manager.checkin import framing
from satchel.manager.checkin.lan import checkin_lan
from satchel.manager.context import state
from satchel.manager.errors import InvalidRequestError
from satchel.manager.services import devices, trust
from satchel.manager.services.credentials import ADMIN, DEVICE, Principal, bearer_token
from satchel.manager.services.devices import Identity


def _created(payload: dict[str, Any]) -> Response:
    response = jsonify(payload)
    response.status_code = 201
    return response


@bp.post("/enroll")
def enroll() -> Response:
    """Trade a one-time enrollment token (as the bearer token) for a device credential."""
    token = bearer_token(request.headers.get("Authorization"))
    ident = Identity.from_dict(json_body())
    st = state()
    t = now()
    result = st.db.run(lambda s: devices.enroll(s, token, ident, t))
    trust_version = st.db.run(lambda s: trust.current_version(s))
    st.metrics.inc("satchel_enrollments_total")
    return _created(
        {
            "device_id": result.device.id,
            "token": result.token,
            "checkin_url": f"/api/v1/devices/{result.device.id}/checkin",
            "poll_interval_s": st.config.poll_interval_s,
            "trust": {
                "version": trust_version,
                "root_url": "/api/v1/trust/root.json",
                "version_url": "/api/v1/trust/roots/{version}.json",
            },
        }
    )


@bp.post(framing.RULE)
def device_checkin(device_id: str) -> Response:
    """Report state, health and events; learn what to install and when to call again.

    The hot path: unchanged check-ins are mostly answered before Flask (`checkin/route.py`);
    the credential is checked by the same statement or transaction that records the
    check-in (device credentials only; see `checkin_lan`)."""
    token = bearer_token(request.headers.get("Authorization"))
    st = state()
    body = json_body()
    t = now()
    cfg = st.config
    fast = cfg.checkin_fast_path and not request.environ.get(framing.FAST_PATH_TRIED)
    result = checkin_lan(st.db, token, device_id, body, t, cfg.max_events_per_checkin, fast)
    g.principal = Principal(DEVICE, device_id=device_id)
    framing.count(st.metrics, result)
    return jsonify(framing.answer(cfg, result, t))


@bp.get("/devices")
@requires(ADMIN)
def list_devices() -> Response:
    device_class = request.args.get("device_class")
    tag = request.args.get("tag")
    limit = int_arg("limit", 1000, 1, 10_000)
    offset = int_arg("offset", 0, 0, 10**9)

    def work(s: Any) -> dict[str, Any]:
        found = devices.list_devices(s, device_class, tag, limit, offset)
        return {"devices": [devices.summary(d) for d in found], "total": devices.count_devices(s)}

    return jsonify(state().db.run(work))


@bp.post("/devices")
@requires(ADMIN)
def register_device() -> Response:
    """Register a USB-only device by its public key (no LAN credential is issued)."""
    ident = Identity.from_dict(json_body())
    t = now()
    out = state().db.run(lambda s: devices.summary(devices.register(s, ident, t)))
    return _created(out)


@bp.get("/devices/<device_id>")
@requires(ADMIN, DEVICE)
def show_device(device_id: str) -> Response:
    """Query `events`: how many recent events to include (default 50)."""
    current_principal().check_device(device_id)
    events = int_arg("events", 50, 0, 10_000)
    return jsonify(state().db.run(lambda s: devices.detail(s, device_id, events)))


@bp.delete("/devices/<device_id>")
@requires(ADMIN)
def remove_device(device_id: str) -> Response:
    state().db.run(lambda s: devices.remove(s, device_id))
    return Response(status=204)


@bp.get("/devices/<device_id>/events")
@requires(ADMIN, DEVICE)
def device_events(device_id: str) -> Response:
    current_principal().check_device(device_id)
    limit = int_arg("limit", 100, 1, 10_000)

    def work(s: Any) -> dict[str, Any]:
        devices.get(s, device_id)
        return {
            "events": [devices.event_dict(e) for e in devices.recent_events(s, device_id, limit)]
        }

    return jsonify(state().db.run(work))


@bp.patch("/devices/<device_id>/tags")
@requires(ADMIN)
def device_tags(device_id: str) -> Response:
    body = json_body()
    add = body.get("add", []) if isinstance(body, dict) else None
    remove = body.get("remove", []) if isinstance(body, dict) else None
    if not isinstance(add, list) or not isinstance(remove, list):
        raise InvalidRequestError('body must be {"add": [TAG...], "remove": [TAG...]}')
    tags = state().db.run(lambda s: devices.set_tags(s, device_id, add, remove))
    return jsonify({"device_id": device_id, "tags": tags})
