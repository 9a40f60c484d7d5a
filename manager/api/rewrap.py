"""Re-wrap a stored encrypted bundle for more devices with the manager's recipient key
(services/rewrap.py, docs/ENCRYPTION.md)."""

from __future__ import annotations

from flask import Response, jsonify

from satchel.bundles.timeutil import now
from satchel.manager.api import bp
from satchel.manager.api.common import json_body
from satchel.manager.api.guard import requires
from satchel.manager.context import state
from satchel.manager.errors import InvalidRequestError
from satchel.manager.services import bundles, rewrap
from satchel.manager.services.credentials import ADMIN


@bp.post("/bundles/<sha256>/rewrap")
@requires(ADMIN)
def rewrap_bundle(sha256: str) -> Response:
    """Body `{"to": ["device:ID" | "class:CLASS" | "all-enrolled", ...]}`. The path may also
    name the bundle NAME:VERSION or by a unique prefix (8+ hex). Answers the bundle's summary
    with its new sha256, `previous_sha256`, `added`, `already` and `recipients`."""
    st = state()
    body = json_body()
    targets = body.get("to") if isinstance(body, dict) else None
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise InvalidRequestError('the body is {"to": ["device:ID" | "class:CLASS" | '
                                  '"all-enrolled", ...]}')
    t = now()
    with st.db.transaction() as s:  # no retry: a retried re-wrap would wrap anew
        done = rewrap.rewrap_stored(s, st.store, st.config, bundles.get_by_ref(s, sha256),
                                    targets, t)
    if done.replaced is not None:
        st.store.delete(done.replaced)  # after the commit: no offer names it any more
    return jsonify(done.result)
