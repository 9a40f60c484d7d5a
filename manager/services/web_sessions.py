"""Dashboard logins held on the server, so that they can be ended there.

A login is a row of `web_sessions`; the browser's signed cookie holds a random secret whose
sha256 names the row. Logging out deletes the row, and so do a password change and removing
the user (`manager.services.users`): a cookie saved before then opens nothing, on any manager
process sharing the database.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
import sqlalchemy.orm as so

from satchel.manager.models import User, WebSession
from satchel.manager.services.credentials import hash_token

SECRET_BYTES = 32  # bytes of randomness in a session secret


@dataclass(frozen=True)
class LoggedIn:
    """Whose dashboard login a cookie holds."""

    user_id: int
    username: str


def open_session(session: so.Session, user_id: int, now: datetime, lifetime_s: float) -> str:
    """Start a login of `user_id` lasting `lifetime_s` seconds; return its secret, for the
    cookie only. Logins that have expired meanwhile, anyone's, are deleted on the way."""
    session.execute(sa.delete(WebSession).where(WebSession.expires_at <= now))
    secret = secrets.token_urlsafe(SECRET_BYTES)
    session.add(
        WebSession(
            token_hash=hash_token(secret),
            user_id=user_id,
            created_at=now,
            expires_at=now + timedelta(seconds=lifetime_s),
        )
    )
    session.flush()
    return secret


def resolve(session: so.Session, secret: str, now: datetime) -> LoggedIn | None:
    """The user logged in by `secret`; None when it was ended, has expired, or never was."""
    row = session.execute(
        sa.select(User.id, User.username)
        .join(WebSession, WebSession.user_id == User.id)
        .where(WebSession.token_hash == hash_token(secret), WebSession.expires_at > now)
    ).first()
    return None if row is None else LoggedIn(row.id, row.username)


def end_session(session: so.Session, secret: str) -> None:
    """End the login of `secret` (nothing happens when there is none)."""
    session.execute(sa.delete(WebSession).where(WebSession.token_hash == hash_token(secret)))


def end_user_sessions(session: so.Session, user_id: int) -> int:
    """End every login of `user_id`; return how many there were."""
    ended = session.scalar(
        sa.select(sa.func.count()).select_from(WebSession).where(WebSession.user_id == user_id)
    )
    session.execute(sa.delete(WebSession).where(WebSession.user_id == user_id))
    return ended or 0


def count_by_user(session: so.Session, now: datetime) -> dict[int, int]:
    """Open logins per user id."""
    rows = session.execute(
        sa.select(WebSession.user_id, sa.func.count())
        .where(WebSession.expires_at > now)
        .group_by(WebSession.user_id)
    )
    return {user_id: n for user_id, n in rows}
