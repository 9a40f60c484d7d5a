"""Tokens: an admin issues enrollment tokens for devices, or further admin tokens."""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify

from manager.api import bp
from manager.api.common import json_body, now
from manager.app import state
from manager.auth import ADMIN, ENROLL, requires
from manager.errors import InvalidRequestError
from manager.services import tokens


@bp.post("/tokens")
@requires(ADMIN)
def create_token() -> Response:
    """Body: {"kind": "enroll", "device_class": C?, "ttl_s": S?} or {"kind": "admin",
    "name": N?}. The token is in the answer only."""
    body = json_body()
    if not isinstance(body, dict) or body.get("kind") not in (ADMIN, ENROLL):
        raise InvalidRequestError('\'kind\' must be "admin" or "enroll"')
    cfg = state().config
    t = now()

    def work(s: Any) -> dict[str, Any]:
        if body["kind"] == ADMIN:
            name = body.get("name") or ""
            if not isinstance(name, str):
                raise InvalidRequestError("'name' must be a string")
            return tokens.create_admin_token(s, name).to_dict()
        ttl = body.get("ttl_s", cfg.enroll_token_ttl_s)
        if not isinstance(ttl, (int, float)) or isinstance(ttl, bool):
            raise InvalidRequestError("'ttl_s' must be a number of seconds")
        return tokens.create_enrollment_token(s, t, float(ttl), body.get("device_class")).to_dict()

    response = jsonify(state().db.run(work))
    response.status_code = 201
    return response
