"""Issuing credentials: admin API tokens and one-time device enrollment tokens.

The secret is returned once, to be shown to the admin; only its sha256 is stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
import sqlalchemy.orm as so

from bundles.manifest import LABEL_RE
from manager.auth import ADMIN, ENROLL, hash_token, new_token
from manager.errors import ConflictError, InvalidRequestError, NotFoundError
from manager.models import AdminToken, EnrollmentToken, User

MAX_ENROLL_TTL_S = 10 * 366 * 86400.0  # seconds: ten years; beyond, a date may not hold it


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
    session: so.Session, name: str = "", username: str | None = None
) -> IssuedToken:
    """Issue an admin API token, optionally owned by an admin user. Raises NotFoundError."""
    user_id = None
    if username is not None:
        user_id = session.scalar(sa.select(User.id).where(User.username == username))
        if user_id is None:
            raise NotFoundError(f"no admin user named {username!r}")
    token = new_token(ADMIN)
    row = AdminToken(token_hash=hash_token(token), name=name[:100], user_id=user_id)
    session.add(row)
    session.flush()
    return IssuedToken(token, ADMIN, row.id)


def create_enrollment_token(
    session: so.Session, now: datetime, ttl_s: float, device_class: str | None = None
) -> IssuedToken:
    """Issue a one-time enrollment token valid for `ttl_s` seconds, optionally only for
    devices of `device_class`. Raises InvalidRequestError for a bad class or ttl."""
    if device_class is not None and (
        not isinstance(device_class, str) or not LABEL_RE.fullmatch(device_class)
    ):
        raise InvalidRequestError(f"device class {str(device_class)[:40]!r} is not a valid name")
    if not 0 < ttl_s <= MAX_ENROLL_TTL_S:
        raise InvalidRequestError(
            f"an enrollment token needs a lifetime of 1 s to {MAX_ENROLL_TTL_S:.0f} s"
        )
    token = new_token(ENROLL)
    expires = now + timedelta(seconds=ttl_s)
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
