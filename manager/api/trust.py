"""The trust root: its summary, the current root.json and every earlier version."""

from __future__ import annotations

from flask import Response, jsonify, request

from satchel.manager.api import bp
from satchel.manager.api.common import row_id
from satchel.manager.api.guard import requires
from satchel.manager.context import state
from satchel.manager.errors import InvalidRequestError, NoTrustRootError
from satchel.manager.services import trust
from satchel.manager.services.credentials import ADMIN, DEVICE

JSON = "application/json"


@bp.get("/trust")
@requires(ADMIN, DEVICE)
def trust_summary() -> Response:
    return jsonify(state().db.run(trust.summary))


@bp.get("/trust/root.json")
@requires(ADMIN, DEVICE)
def trust_root() -> Response:
    data = state().db.run(trust.current_document)
    if data is None:
        raise NoTrustRootError("no trust root imported yet")
    return Response(data, mimetype=JSON)


@bp.get("/trust/roots/<int:version>.json")
@requires(ADMIN, DEVICE)
def trust_root_version(version: int) -> Response:
    row_id(version, "trust root version")
    return Response(state().db.run(lambda s: trust.root_document(s, version)), mimetype=JSON)


@bp.post("/trust")
@requires(ADMIN)
def import_trust_root() -> Response:
    """Import a root.json (raw body): the first one, or the next rotation."""
    data = request.get_data(cache=False)
    if not data:
        raise InvalidRequestError("send the root.json document as the request body")
    result = state().db.run(lambda s: trust.import_roots(s, [data]))
    return jsonify({"version": result.root.version, "added": list(result.added)})
