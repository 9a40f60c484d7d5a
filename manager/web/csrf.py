"""CSRF protection: one random token per session, required in every POSTed form.

The token lives in the signed session cookie (HttpOnly, SameSite=Lax) and is rendered into
each form as the hidden field `csrf_token`. A POST whose field does not match, or that comes
with no session at all, is refused with 400 before any view runs, so it changes nothing.
"""

from __future__ import annotations

import hmac
import secrets

from flask import request, session

from satchel.manager.web.errors import CsrfError

FIELD = "csrf_token"  # name of the hidden form field
SESSION_KEY = "csrf"  # where the token is kept in the session
TOKEN_BYTES = 32  # bytes of randomness in a token
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


def csrf_token() -> str:
    """This session's token, made on first use (templates call it in every form)."""
    token = session.get(SESSION_KEY)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        session[SESSION_KEY] = token
    return token


def rotate() -> None:
    """Give the session a new token (after login and logout)."""
    session[SESSION_KEY] = secrets.token_urlsafe(TOKEN_BYTES)


def check_request() -> None:
    """Refuse a state-changing request whose form does not carry this session's token.

    Raises CsrfError.
    """
    if request.method not in UNSAFE_METHODS:
        return
    expected = session.get(SESSION_KEY)
    given = request.form.get(FIELD, "")
    if not isinstance(expected, str) or not expected:
        raise CsrfError("this form has expired or did not come from this dashboard; reload it")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise CsrfError("this form has expired or did not come from this dashboard; reload it")
