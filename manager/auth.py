"""Credentials: admin passwords and tokens, device enrollment tokens, device credentials.

Secrets never reach the database: tokens are stored as their sha256, passwords as scrypt
hashes. A token's prefix says what it is, so a leaked one is easy to recognise.
`requires(...)` guards the API views: no or unknown credentials answer 401, a credential of
the wrong kind or for another device answers 403.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
import sqlalchemy.orm as so
from flask import g, request

from manager.errors import AuthError, ForbiddenError
from manager.models import AdminToken, Device

F = TypeVar("F", bound=Callable[..., Any])

ADMIN = "admin"
DEVICE = "device"
ENROLL = "enroll"
TOKEN_PREFIXES = {ADMIN: "sat_admin_", DEVICE: "sat_dev_", ENROLL: "sat_enroll_"}
TOKEN_BYTES = 32  # bytes of randomness in every token
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # scrypt cost: 16 MiB of memory per check
SCRYPT_SALT_BYTES = 16


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
    """An scrypt hash of `password`, with its parameters and salt: `scrypt$n$r$p$salt$hash`."""
    salt = secrets.token_bytes(SCRYPT_SALT_BYTES)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    """True if `password` matches the hash `stored`; False for any malformed hash."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
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


def authenticate(session: so.Session, token: str) -> Principal:
    """Resolve an admin or device token. Raises AuthError for anything else."""
    kind = token_kind(token)
    digest = hash_token(token)
    if kind == ADMIN:
        row = session.execute(
            sa.select(AdminToken.id, AdminToken.name).where(
                AdminToken.token_hash == digest, AdminToken.revoked_at.is_(None)
            )
        ).first()
        if row is not None:
            return Principal(ADMIN, name=row.name or f"token {row.id}")
    elif kind == DEVICE:
        device_id = session.scalar(sa.select(Device.id).where(Device.token_hash == digest))
        if device_id is not None:
            return Principal(DEVICE, device_id=device_id)
    raise AuthError("invalid or revoked credentials")


def current_principal() -> Principal:
    """The principal of the current request, set by `requires`. Raises AuthError."""
    principal = g.get("principal")
    if principal is None:
        raise AuthError("authentication required")
    return principal


def requires(*kinds: str) -> Callable[[F], F]:
    """Guard a view: the caller must present a token of one of `kinds` (ADMIN, DEVICE).

    Raises AuthError (401) without valid credentials, ForbiddenError (403) for another kind.
    """

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from manager.app import state

            if g.get("principal") is None:
                token = bearer_token(request.headers.get("Authorization"))
                g.principal = state().db.run(lambda s: authenticate(s, token))
            if g.principal.kind not in kinds:
                needed = " or ".join(kinds)
                raise ForbiddenError(f"this resource needs {needed} credentials")
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
