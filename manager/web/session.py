"""Who is logged in to the dashboard: the login whose secret the signed session cookie holds.

The login itself lives in the database (`manager.services.web_sessions`), so logging out, a
password change or removing the user ends it on the server: a copy of the cookie saved
before then opens nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import g, session

from satchel.bundles.timeutil import now
from satchel.manager.services import web_sessions
from satchel.manager.web import csrf
from satchel.manager.web.common import run

SESSION_ID = "sid"  # where the login's secret is kept in the cookie


@dataclass(frozen=True)
class WebUser:
    id: int
    username: str


def current_user() -> WebUser | None:
    """The logged-in admin, or None (no login, or one that was ended or has expired)."""
    if "web_user" in g:
        return g.web_user
    secret = session.get(SESSION_ID)
    if not isinstance(secret, str) or not secret:
        return None
    t = now()
    found = run(lambda s: web_sessions.resolve(s, secret, t))
    return None if found is None else WebUser(found.user_id, found.username)


def log_in(secret: str) -> None:
    """Hold the login `secret` in a fresh cookie (nothing of the anonymous session is kept)."""
    session.clear()
    session.permanent = True
    session[SESSION_ID] = secret
    csrf.rotate()


def log_out() -> None:
    """End this browser's login on the server, then forget it here."""
    secret = session.get(SESSION_ID)
    if isinstance(secret, str) and secret:
        run(lambda s: web_sessions.end_session(s, secret))
    session.clear()
    csrf.rotate()
