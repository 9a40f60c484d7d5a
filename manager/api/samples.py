"""Captures (hard examples) over the API: a device uploads the field inputs it kept; the admin
lists them and exports one channel and release as the `.npz` `bundle build --samples` reads."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import sqlalchemy as sa
from flask import Response, jsonify, request

from satchel.bundles.timeutil import now
from satchel.manager.api import bp
from satchel.manager.api.common import int_arg
from satchel.manager.api.guard import current_principal, requires
from satchel.manager.context import state
from satchel.manager.errors import InvalidRequestError, RequestTooLargeError
from satchel.manager.services import samples
from satchel.manager.services.credentials import ADMIN, DEVICE

SHA_HEADER = "X-Satchel-Sample-SHA256"
LAN, USB = "lan", "usb"  # as devices.last_via: a device's own upload, or an admin's from a stick


@bp.post("/devices/<device_id>/samples")
@requires(DEVICE, ADMIN)
def upload_sample(device_id: str) -> Response:
    """Store one capture file (raw body, application/octet-stream) of this device: 201 stored,
    200 stored before (by sha256), 400 not a valid capture, 413 over `max_sample_bytes`.
    An admin may store one on a device's behalf (`satchel --url URL usb import`)."""
    principal = current_principal()
    principal.check_device(device_id)
    st = state()
    limit = st.config.max_sample_bytes
    if request.content_length is not None and request.content_length > limit:
        raise RequestTooLargeError(f"a capture file is at most {limit} bytes")
    data = request.stream.read(limit + 1)
    capture = samples.check_upload(data, request.headers.get(SHA_HEADER), limit)
    via = USB if principal.is_admin else LAN
    t = now()
    keep = st.config.max_samples_per_device
    try:
        stored = st.db.run(lambda s: samples.store(s, device_id, data, capture, via, t, keep))
    except sa.exc.IntegrityError:  # the same capture stored at the same moment by another call
        stored = samples.Stored(hashlib.sha256(data).hexdigest(), created=False)
    response = jsonify({"sha256": stored.sha256, "stored": stored.created,
                        "dropped": stored.dropped})
    response.status_code = 201 if stored.created else 200
    return response


def _filters() -> dict[str, Any]:
    return {
        "channel": request.args.get("channel") or None,
        "version": request.args.get("version") or None,
        "reasons": request.args.getlist("reason"),
        "devices": request.args.getlist("device"),
    }


@bp.get("/samples")
@requires(ADMIN)
def list_samples() -> Response:
    """Stored captures, oldest first (without their bytes). Query: channel, version, reason
    and device (both repeatable), limit."""
    limit = int_arg("limit", 1000, 1, samples.MAX_LIST)
    f = _filters()
    return jsonify({"samples": state().db.run(lambda s: samples.list_samples(s, limit=limit, **f))})


@bp.get("/samples/export")
@requires(ADMIN)
def export_samples() -> Response:
    """One channel and release's captures stacked for `bundle build --samples`: `{"npz":
    base64 of the .npz, "meta": per-row meta}`. Query: channel and version (required),
    reason and device (repeatable)."""
    f = _filters()
    if f["channel"] is None or f["version"] is None:
        raise InvalidRequestError("query parameters channel and version are required")

    def work(s: Any) -> dict[str, Any]:
        found = samples.export(s, f["channel"], f["version"], f["reasons"], f["devices"])
        return {"npz": base64.b64encode(found.npz_bytes()).decode("ascii"),
                "meta": found.sidecar()}

    return jsonify(state().db.run(work))
