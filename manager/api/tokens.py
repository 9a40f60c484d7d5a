"""Tokens: an admin issues enrollment tokens for devices, or further admin tokens, and lists
the admin tokens with their expiry and last use."""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify

from satchel.bundles.timeutil import now
from satchel.manager.api import bp
from satchel.manager.api.common import int_arg, json_body, row_id
from satchel.manager.api.guard import requires
from satchel.manager.context import state
from satchel.manager.errors import InvalidRequestError
from satchel.manager.services import tokens
from satchel.manager.services.credentials import ADMIN, ENROLL

MAX_LISTED = 10_000  # admin tokens in one answer


@bp.get("/tokens")
@requires(ADMIN)
def list_tokens() -> Response:
    """Admin tokens (never their secrets), valid ones first, newest first."""
    limit = int_arg("limit", 1000, 1, MAX_LISTED)
    t = now()
    found = state().db.run(lambda s: tokens.list_admin_tokens(s, t, limit))
    return jsonify({"admin_tokens": [v.to_dict() for v in found]})


@bp.post("/tokens")
@requires(ADMIN)
def create_token() -> Response:
    """Body: {"kind": "enroll", "device_class": C?, "ttl_s": S?} or {"kind": "admin",
    "name": N?, "ttl_s": S?} (an admin token without ttl_s lasts until revoked). The token
    is in the answer only."""
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
            ttl = _seconds(body.get("ttl_s"))
            return tokens.create_admin_token(s, name, now=t, ttl_s=ttl).to_dict()
        lifetime = _seconds(body.get("ttl_s", cfg.enroll_token_ttl_s))
        if lifetime is None:
            raise InvalidRequestError("'ttl_s' must be a number of seconds")
        device_class = body.get("device_class")
        return tokens.create_enrollment_token(s, t, lifetime, device_class).to_dict()

    response = jsonify(state().db.run(work))
    response.status_code = 201
    return response


@bp.post("/tokens/<int:token_id>/revoke")
@requires(ADMIN)
def revoke_token(token_id: int) -> Response:
    """Revoke an admin token at once (it answers 401 from then on); revoking twice is fine."""
    row_id(token_id, "admin token")
    t = now()
    state().db.run(lambda s: tokens.revoke_admin_token(s, token_id, t))
    return Response(status=204)


def _seconds(value: Any) -> float | None:
    """`ttl_s` of the body: a number, or absent. Raises InvalidRequestError."""
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise InvalidRequestError("'ttl_s' must be a number of seconds")
    try:
        return float(value)
    except OverflowError as e:  # an integer beyond any float: far beyond any lifetime
        raise InvalidRequestError("'ttl_s' is out of range") from e
