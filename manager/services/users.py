"""Admin users of the web dashboard: scrypt-hashed passwords."""

from __future__ import annotations

import sqlalchemy as sa
import sqlalchemy.orm as so

from bundles.manifest import LABEL_RE
from manager.auth import check_password, hash_password
from manager.errors import AuthError, ConflictError, InvalidRequestError
from manager.models import User

MIN_PASSWORD_CHARS = 10  # characters of a new admin password


def create_user(session: so.Session, username: str, password: str) -> User:
    """Add an admin user. Raises InvalidRequestError (bad name, short password),
    ConflictError (name taken)."""
    if not LABEL_RE.fullmatch(username):
        raise InvalidRequestError(f"user name {username[:40]!r} is not a valid name")
    if len(password) < MIN_PASSWORD_CHARS:
        raise InvalidRequestError(f"password must have at least {MIN_PASSWORD_CHARS} characters")
    if session.scalar(sa.select(User.id).where(User.username == username)) is not None:
        raise ConflictError(f"admin user {username!r} already exists")
    user = User(username=username, password_hash=hash_password(password))
    session.add(user)
    session.flush()
    return user


def set_password(session: so.Session, username: str, password: str) -> None:
    """Change a user's password. Raises AuthError (no such user), InvalidRequestError."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise InvalidRequestError(f"password must have at least {MIN_PASSWORD_CHARS} characters")
    user = session.scalar(sa.select(User).where(User.username == username))
    if user is None:
        raise AuthError(f"no admin user named {username!r}")
    user.password_hash = hash_password(password)


def authenticate_user(session: so.Session, username: str, password: str) -> User:
    """The user whose name and password match. Raises AuthError (same message either way)."""
    user = session.scalar(sa.select(User).where(User.username == username))
    if user is None or not check_password(password, user.password_hash):
        raise AuthError("wrong user name or password")
    return user
