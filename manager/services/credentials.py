"""Credentials: admin passwords and tokens, device enrollment tokens, device credentials.

Secrets never reach the database: tokens are stored as their sha256, passwords as scrypt
hashes made by werkzeug.security (`scrypt:32768:8:1$salt$hash`), the one part of werkzeug a
service uses (a kept library for security code, no Flask). A token's
prefix says what it is, so a leaked one is easy to recognise. `authenticate` resolves a token
to the `Principal` calling; the Flask guard around the API views is `manager.api.guard`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
import sqlalchemy.orm as so
from werkzeug.security import check_password_hash, generate_password_hash

from satchel.manager.errors import AuthError, ForbiddenError
from satchel.manager.models import AdminToken, Device

ADMIN = "admin"
DEVICE = "device"
ENROLL = "enroll"
TOKEN_PREFIXES = {ADMIN: "sat_admin_", DEVICE: "sat_dev_", ENROLL: "sat_enroll_"}
TOKEN_BYTES = 32  # bytes of randomness in every token
# werkzeug's scrypt (its default): N=2**15, r=8, p=1, so 32 MiB of memory per check
PASSWORD_METHOD = "scrypt:32768:8:1"
LEGACY_SCHEME = "scrypt"  # hashes made before werkzeug: `scrypt$n$r$p$salt$hash`, base64


def new_token(kind: str) -> str:
    """A fresh random token of `kind` (admin, device, enroll)."""
    return TOKEN_PREFIXES[kind] + secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_kind(token: str) -> str | None:
    for kind, prefix in TOKEN_PREFIXES.items():
        if token.startswith(prefix):
            return kind
    return None


def hash_password(password: str) -> str:
    """A salted hash of `password` by werkzeug (`scrypt:32768:8:1$salt$hash`)."""
    return generate_password_hash(password, method=PASSWORD_METHOD)


def check_password(password: str, stored: str) -> bool:
    """True if `password` matches the hash `stored` (werkzeug's format, or the legacy one);
    False for any malformed hash."""
    if stored.startswith(LEGACY_SCHEME + "$"):
        return _check_legacy(password, stored)
    try:
        return check_password_hash(stored, password)
    except (ValueError, TypeError):  # an unknown method or malformed parameters
        return False


def needs_rehash(stored: str) -> bool:
    """True when `stored` was made another way than `hash_password` makes hashes now: it is
    replaced at the next successful log-in, when the password is at hand."""
    return not stored.startswith(PASSWORD_METHOD + "$")


def _check_legacy(password: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, digest = stored.split("$")
        want = base64.b64decode(digest)
        got = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(want),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


@dataclass(frozen=True)
class Principal:
    """Who is calling: an admin (token or web login) or one device."""

    kind: str  # ADMIN | DEVICE
    device_id: str | None = None
    name: str = ""

    @property
    def is_admin(self) -> bool:
        return self.kind == ADMIN

    def check_device(self, device_id: str) -> None:
        """Raise ForbiddenError unless this principal may read and write `device_id`'s data."""
        if not self.is_admin and self.device_id != device_id:
            raise ForbiddenError("a device may only access its own data")


def bearer_token(header: str | None) -> str:
    """The token of an `Authorization: Bearer TOKEN` header. Raises AuthError."""
    if not header:
        raise AuthError("authentication required: send 'Authorization: Bearer TOKEN'")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthError("authentication required: send 'Authorization: Bearer TOKEN'")
    return token


def authenticate(session: so.Session, token: str, now: datetime, touch_s: float) -> Principal:
    """Resolve an admin or device token. Raises AuthError for anything else, and for an
    expired admin token. An admin token's last use is written when the recorded one is older
    than `touch_s` seconds, so a busy script does not write on every call."""
    kind = token_kind(token)
    digest = hash_token(token)
    if kind == ADMIN:
        row = session.execute(
            sa.select(
                AdminToken.id, AdminToken.name, AdminToken.expires_at, AdminToken.last_used_at
            ).where(AdminToken.token_hash == digest, AdminToken.revoked_at.is_(None))
        ).first()
        if row is not None:
            if row.expires_at is not None and row.expires_at <= now:
                raise AuthError(f"admin token {row.id} expired at {row.expires_at.isoformat()}")
            stale = now - timedelta(seconds=touch_s)
            if row.last_used_at is None or row.last_used_at <= stale:
                _touch(session, row.id, now, stale)
            return Principal(ADMIN, name=row.name or f"token {row.id}")
    elif kind == DEVICE:
        device_id = session.scalar(sa.select(Device.id).where(Device.token_hash == digest))
        if device_id is not None:
            return Principal(DEVICE, device_id=device_id)
    raise AuthError("invalid or revoked credentials")


def _touch(session: so.Session, token_id: int, now: datetime, stale: datetime) -> None:
    # conditional, so that of the processes racing to record a use, one writes
    session.execute(
        sa.update(AdminToken)
        .where(
            AdminToken.id == token_id,
            sa.or_(AdminToken.last_used_at.is_(None), AdminToken.last_used_at <= stale),
        )
        .values(last_used_at=now)
    )
