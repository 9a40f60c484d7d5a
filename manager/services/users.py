"""Admin users of the web dashboard: add, list, change a password, remove.

Passwords are stored as scrypt hashes in werkzeug's format (`services.credentials`). Changing
a password or removing a user ends their dashboard logins at once; removing a user also
deletes the admin API tokens they own. Logging in is `manager.services.logins`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
import sqlalchemy.orm as so

from satchel.bundles.identifiers import is_identifier
from satchel.manager.errors import ConflictError, InvalidRequestError, NotFoundError
from satchel.manager.models import AdminToken, User
from satchel.manager.services import tokens, web_sessions
from satchel.manager.services.credentials import hash_password

MIN_PASSWORD_CHARS = 10  # characters of a new admin password
MAX_PASSWORD_CHARS = 1024  # characters of a password (longer ones are someone's paste error)


@dataclass(frozen=True)
class UserView:
    """An admin user as the lists show it."""

    username: str
    created_at: datetime
    sessions: int  # open dashboard logins
    admin_tokens: int  # admin API tokens they own that still work

    def to_dict(self) -> dict[str, object]:
        return {
            "username": self.username,
            "created_at": self.created_at.isoformat(),
            "sessions": self.sessions,
            "admin_tokens": self.admin_tokens,
        }


@dataclass(frozen=True)
class Removed:
    """What went with a removed user."""

    username: str
    sessions: int  # dashboard logins ended
    admin_tokens: int  # admin API tokens deleted


def create_user(session: so.Session, username: str, password: str) -> User:
    """Add an admin user. Raises InvalidRequestError (bad name, short password),
    ConflictError (name taken)."""
    if not is_identifier(username):
        raise InvalidRequestError(f"user name {username[:40]!r} is not a valid name")
    check_new_password(password)
    if session.scalar(sa.select(User.id).where(User.username == username)) is not None:
        raise ConflictError(f"admin user {username!r} already exists")
    user = User(username=username, password_hash=hash_password(password))
    session.add(user)
    session.flush()
    return user


def list_users(session: so.Session, now: datetime) -> list[UserView]:
    """Every admin user, by name, with their open logins and working tokens."""
    logins = web_sessions.count_by_user(session, now)
    rows = session.execute(
        sa.select(AdminToken.user_id, sa.func.count())
        .where(AdminToken.user_id.is_not(None), tokens.usable(now))
        .group_by(AdminToken.user_id)
    )
    owned = {user_id: n for user_id, n in rows}
    found = session.scalars(sa.select(User).order_by(User.username))
    return [
        UserView(u.username, u.created_at, logins.get(u.id, 0), owned.get(u.id, 0)) for u in found
    ]


def set_password(session: so.Session, username: str, password: str) -> int:
    """Change a user's password and end every dashboard login they have; return how many
    were ended. Raises NotFoundError (no such user), InvalidRequestError (too short)."""
    check_new_password(password)
    user = _get(session, username)
    user.password_hash = hash_password(password)
    return web_sessions.end_user_sessions(session, user.id)


def remove_user(session: so.Session, username: str, acting: str | None = None) -> Removed:
    """Remove an admin user, their dashboard logins and the admin tokens they own.

    `acting` is the user asking (the dashboard's); a user may not remove themselves, so the
    dashboard always keeps one admin. Raises NotFoundError, ConflictError.
    """
    user = _get(session, username)
    if acting is not None and acting == username:
        raise ConflictError(
            "you cannot remove yourself; another admin or `satchel user remove` can"
        )
    ended = web_sessions.end_user_sessions(session, user.id)
    owned = session.scalar(
        sa.select(sa.func.count()).select_from(AdminToken).where(AdminToken.user_id == user.id)
    )
    session.execute(sa.delete(AdminToken).where(AdminToken.user_id == user.id))
    session.delete(user)
    return Removed(username, ended, owned or 0)


def _get(session: so.Session, username: str) -> User:
    user = session.scalar(sa.select(User).where(User.username == username))
    if user is None:
        raise NotFoundError(f"no admin user named {username[:64]!r}")
    return user


def check_new_password(password: str) -> None:
    """Raises InvalidRequestError unless `password` is long enough, and not absurdly long."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise InvalidRequestError(f"password must have at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise InvalidRequestError(f"password must have at most {MAX_PASSWORD_CHARS} characters")
