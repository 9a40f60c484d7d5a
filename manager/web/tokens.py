"""Tokens: create and revoke admin API tokens and device enrollment tokens.

A new token's secret is shown once, in the answer to the form that made it (never stored,
never put in the session cookie, never cached). Admin tokens are listed with their expiry and
when they were last used.
"""

from __future__ import annotations

from typing import Any

from flask import g, render_template, request
from werkzeug.wrappers import Response

from satchel.bundles.timeutil import now
from satchel.manager.context import state
from satchel.manager.errors import ManagerError
from satchel.manager.services import tokens
from satchel.manager.services.dashboard.tokens import enrollment_tokens, token_counts
from satchel.manager.services.tokens import IssuedToken
from satchel.manager.web import bp, forms
from satchel.manager.web.common import done, refused, run
from satchel.manager.web.config import web_config
from satchel.manager.web.errors import FormError


def _page(
    issued: IssuedToken | None = None, error: str | None = None, status: int = 200
) -> Response:
    limit = web_config().tokens_shown
    t = now()

    def read(s: Any) -> dict[str, Any]:
        return {
            "admin_tokens": tokens.list_admin_tokens(s, t, limit),
            "enrollment_tokens": enrollment_tokens(s, t, limit),
            "counts": token_counts(s, t),
        }

    html = render_template(
        "tokens.html",
        issued=issued,
        error=error,
        default_ttl_h=f"{state().config.enroll_token_ttl_s / 3600:g}",
        **run(read),
    )
    return Response(html, status=status, mimetype="text/html")


@bp.get("/tokens")
def token_list() -> Response:
    return _page()


@bp.post("/tokens/admin")
def admin_token_create() -> Response:
    """Issue an admin API token owned by the logged-in admin, named after what will use it
    and expiring after the days given (never when left empty); show its secret once."""
    t = now()
    try:
        name = forms.text(request.form, "name", tokens.MAX_NAME_CHARS)
        if not name:
            raise FormError("name the token after what will use it")
        ttl_s = forms.days(request.form, "ttl_days")
        username = g.web_user.username
        issued = run(lambda s: tokens.create_admin_token(s, name, username, now=t, ttl_s=ttl_s))
    except ManagerError as e:
        return _page(error=str(e), status=400)
    return _page(issued=issued, status=201)


@bp.post("/tokens/enroll")
def enrollment_token_create() -> Response:
    """Issue a one-time enrollment token, optionally for one device class; show it once."""
    t = now()
    try:
        device_class = forms.text(request.form, "device_class", 64) or None
        ttl_s = forms.hours(request.form, "ttl_hours", state().config.enroll_token_ttl_s)
        issued = run(lambda s: tokens.create_enrollment_token(s, t, ttl_s, device_class))
    except ManagerError as e:
        return _page(error=str(e), status=400)
    return _page(issued=issued, status=201)


@bp.post("/tokens/admin/<int:token_id>/revoke")
def admin_token_revoke(token_id: int) -> Response:
    t = now()
    try:
        run(lambda s: tokens.revoke_admin_token(s, token_id, t))
    except ManagerError as e:
        return refused(e, "web.token_list")
    return done(f"Admin token {token_id} revoked.", "web.token_list")


@bp.post("/tokens/enroll/<int:token_id>/revoke")
def enrollment_token_revoke(token_id: int) -> Response:
    t = now()
    try:
        run(lambda s: tokens.revoke_enrollment_token(s, token_id, t))
    except ManagerError as e:
        return refused(e, "web.token_list")
    return done(f"Enrollment token {token_id} revoked.", "web.token_list")
