"""Issuing credentials: admin API tokens and one-time device enrollment tokens.

The secret is returned once, to be shown to the admin; only its sha256 is stored. An admin
token has a name, may expire, and records when it was last used (`services.credentials`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
import sqlalchemy.orm as so

from satchel.bundles import timeutil
from satchel.bundles.identifiers import is_identifier
from satchel.manager.errors import ConflictError, InvalidRequestError, NotFoundError
from satchel.manager.models import AdminToken, EnrollmentToken, User
from satchel.manager.services.credentials import ADMIN, ENROLL, hash_token, new_token

MAX_TTL_S = 10 * 366 * 86400.0  # seconds a token may live: ten years (a date holds that)
MAX_NAME_CHARS = 100  # characters of an admin token's name
VALID, EXPIRED, REVOKED = "valid", "expired", "revoked"


@dataclass(frozen=True)
class IssuedToken:
    token: str  # the secret, shown once
    kind: str  # "admin" | "enroll"
    id: int
    expires_at: datetime | None = None
    device_class: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "token": self.token,
            "kind": self.kind,
            "id": self.id,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "device_class": self.device_class,
        }


def create_admin_token(
    session: so.Session,
    name: str = "",
    username: str | None = None,
    *,
    now: datetime | None = None,
    ttl_s: float | None = None,
) -> IssuedToken:
    """Issue an admin API token named `name`, optionally owned by an admin user, valid for
    `ttl_s` seconds from `now` (None: until revoked).

    Raises InvalidRequestError (name too long, bad lifetime), NotFoundError (no such user).
    """
    if len(name) > MAX_NAME_CHARS:
        raise InvalidRequestError(f"a token name has at most {MAX_NAME_CHARS} characters")
    now = now or timeutil.now()
    expires = None if ttl_s is None else now + timedelta(seconds=_lifetime(ttl_s, "an admin"))
    user_id = None
    if username is not None:
        user_id = session.scalar(sa.select(User.id).where(User.username == username))
        if user_id is None:
            raise NotFoundError(f"no admin user named {username!r}")
    token = new_token(ADMIN)
    row = AdminToken(
        token_hash=hash_token(token), name=name, user_id=user_id, created_at=now, expires_at=expires
    )
    session.add(row)
    session.flush()
    return IssuedToken(token, ADMIN, row.id, expires)


def _lifetime(ttl_s: float, what: str) -> float:
    """`ttl_s` if it is a lifetime a token may have. Raises InvalidRequestError."""
    if not 0 < ttl_s <= MAX_TTL_S:  # also False for NaN
        raise InvalidRequestError(f"{what} token needs a lifetime of 1 s to {MAX_TTL_S:.0f} s")
    return ttl_s


def create_enrollment_token(
    session: so.Session, now: datetime, ttl_s: float, device_class: str | None = None
) -> IssuedToken:
    """Issue a one-time enrollment token valid for `ttl_s` seconds, optionally only for
    devices of `device_class`. Raises InvalidRequestError for a bad class or ttl."""
    if device_class is not None and not is_identifier(device_class):
        raise InvalidRequestError(f"device class {str(device_class)[:40]!r} is not a valid name")
    token = new_token(ENROLL)
    expires = now + timedelta(seconds=_lifetime(ttl_s, "an enrollment"))
    row = EnrollmentToken(
        token_hash=hash_token(token),
        device_class=device_class,
        expires_at=expires,
        created_at=now,
    )
    session.add(row)
    session.flush()
    return IssuedToken(token, ENROLL, row.id, expires, device_class)


def revoke_admin_token(session: so.Session, token_id: int, now: datetime) -> None:
    """Revoke an admin token by id. Raises NotFoundError."""
    row = session.get(AdminToken, token_id)
    if row is None:
        raise NotFoundError(f"no admin token with id {token_id}")
    row.revoked_at = row.revoked_at or now


def revoke_enrollment_token(session: so.Session, token_id: int, now: datetime) -> None:
    """Make an unused enrollment token unusable at once: it expires `now`.

    Raises NotFoundError, ConflictError (already used: remove the device instead).
    """
    row = session.get(EnrollmentToken, token_id)
    if row is None:
        raise NotFoundError(f"no enrollment token with id {token_id}")
    if row.used_at is not None:
        raise ConflictError(
            f"enrollment token {token_id} was already used by device {row.device_id}; "
            "remove the device instead"
        )
    row.expires_at = min(row.expires_at, now)


@dataclass(frozen=True)
class AdminTokenView:
    """An admin token as the token lists show it (never its secret)."""

    id: int
    name: str
    owner: str | None
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    status: str  # VALID | EXPIRED | REVOKED

    def to_dict(self) -> dict[str, object]:
        def iso(t: datetime | None) -> str | None:
            return t.isoformat() if t else None

        return {
            "id": self.id,
            "name": self.name,
            "owner": self.owner,
            "status": self.status,
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at),
            "last_used_at": iso(self.last_used_at),
            "revoked_at": iso(self.revoked_at),
        }


def usable(now: datetime) -> sa.ColumnElement[bool]:
    """The condition of an admin token that still works at `now`: not revoked, not expired."""
    return sa.and_(
        AdminToken.revoked_at.is_(None),
        sa.or_(AdminToken.expires_at.is_(None), AdminToken.expires_at > now),
    )


def list_admin_tokens(session: so.Session, now: datetime, limit: int) -> list[AdminTokenView]:
    """Admin tokens, the ones still valid first, newest first, at most `limit`."""
    rows = session.execute(
        sa.select(AdminToken, User.username)
        .outerjoin(User, User.id == AdminToken.user_id)
        .order_by(sa.case((usable(now), 0), else_=1), AdminToken.id.desc())
        .limit(limit)
    )
    return [
        AdminTokenView(
            t.id,
            t.name,
            owner,
            t.created_at,
            t.expires_at,
            t.last_used_at,
            t.revoked_at,
            _status(t, now),
        )
        for t, owner in rows
    ]


def _status(token: AdminToken, now: datetime) -> str:
    if token.revoked_at is not None:
        return REVOKED
    if token.expires_at is not None and token.expires_at <= now:
        return EXPIRED
    return VALID


def count_valid_admin_tokens(session: so.Session, now: datetime) -> int:
    """Admin tokens neither revoked nor expired."""
    found = session.scalar(sa.select(sa.func.count()).select_from(AdminToken).where(usable(now)))
    return found or 0
