"""Who is logged in to the dashboard: the admin user held by the signed session cookie.

The session keeps the user's id and a tag of their password hash, so changing a password
(`users.set_password`) ends the sessions opened with the old one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from flask import session

from manager.services import dashboard
from manager.web import csrf
from manager.web.common import run

USER_ID, PASSWORD_TAG = "user_id", "password_tag"


@dataclass(frozen=True)
class WebUser:
    id: int
    username: str


def password_tag(password_hash: str) -> str:
    return hashlib.sha256(password_hash.encode()).hexdigest()[:32]


def current_user() -> WebUser | None:
    """The logged-in admin, or None (no session, unknown user, password changed since)."""
    user_id = session.get(USER_ID)
    tag = session.get(PASSWORD_TAG)
    if not isinstance(user_id, int) or not isinstance(tag, str):
        return None
    found = run(lambda s: dashboard.login_record(s, user_id))
    if found is None or password_tag(found[1]) != tag:
        return None
    return WebUser(user_id, found[0])


def log_in(user_id: int, password_hash: str) -> None:
    """Start a fresh session for the user (nothing of the anonymous session is kept)."""
    session.clear()
    session.permanent = True
    session[USER_ID] = user_id
    session[PASSWORD_TAG] = password_tag(password_hash)
    csrf.rotate()


def log_out() -> None:
    session.clear()
    csrf.rotate()
