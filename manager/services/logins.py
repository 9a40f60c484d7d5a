"""Dashboard log-ins: the password check, throttled per user name and per client address.

Each guess at a password costs the manager one scrypt run (32 MiB of memory, tens of
milliseconds). So an attempt is counted against its user name and its client address
*before* the password is looked at, and an attempt past either limit is refused
(TooManyAttemptsError, HTTP 429) without hashing anything. Counting first also holds against
guesses sent in parallel: each one is counted before any of them is checked. The counts live
in the database (`login_attempts`), shared by every manager process. A right password gives
its attempt back: the user name's count is cleared, the address's decremented.

A log-in takes three steps, so that the slow one holds no database lock:
`start` (count, read the stored hash), `verify` (scrypt, no database), `complete` (give the
attempt back, upgrade an outdated hash).
"""

from __future__ import annotations

import functools
import math
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
import sqlalchemy.orm as so
from sqlalchemy.dialects import postgresql, sqlite

from satchel.manager.config import ManagerConfig
from satchel.manager.errors import AuthError, TooManyAttemptsError
from satchel.manager.models import ID_LEN, LoginAttempts, User
from satchel.manager.services.credentials import check_password, hash_password, needs_rehash

USER, ADDRESS = "user", "address"  # the scopes an attempt is counted in
WRONG = "wrong user name or password"  # the same whichever of the two was wrong
_COUNT_TRIES = 3  # a concurrent clean-up may delete the row being counted: count again


@dataclass(frozen=True)
class Limits:
    user_failures: int  # attempts per user name and window
    address_failures: int  # attempts per client address and window
    window_s: float  # seconds

    @classmethod
    def of(cls, config: ManagerConfig) -> Limits:
        return cls(config.login_user_failures, config.login_address_failures, config.login_window_s)


@dataclass(frozen=True)
class Attempt:
    """A counted log-in attempt, and what is needed to check its password."""

    username: str
    address: str
    user_id: int | None  # None: no such user
    password_hash: str | None


@dataclass(frozen=True)
class Verified:
    """A right password: the user, the hash it matched, and a new one when that is outdated."""

    attempt: Attempt
    user_id: int
    checked_hash: str
    new_hash: str | None


def start(
    session: so.Session, username: str, address: str, now: datetime, limits: Limits
) -> Attempt:
    """Count an attempt to log in as `username` from `address`.

    Raises TooManyAttemptsError, and counts nothing, when the user name or the address has
    used up its attempts of the current window.
    """
    cutoff = now - timedelta(seconds=limits.window_s)
    # counts of past windows: keeps the table as small as the attempts of one window
    session.execute(sa.delete(LoginAttempts).where(LoginAttempts.window_started_at <= cutoff))
    name, place = username[:ID_LEN], address[:ID_LEN]
    _count(session, USER, name, limits.user_failures, now, limits.window_s)
    _count(session, ADDRESS, place, limits.address_failures, now, limits.window_s)
    row = session.execute(
        sa.select(User.id, User.password_hash).where(User.username == username)
    ).first()
    if row is None:
        return Attempt(name, place, None, None)
    return Attempt(name, place, row.id, row.password_hash)


def verify(attempt: Attempt, password: str) -> Verified:
    """Check the password of a counted attempt (slow: scrypt; no database).

    An unknown user name costs the same hash as a known one, so timing does not tell them
    apart. Raises AuthError (the same message for a wrong name or a wrong password).
    """
    stored = attempt.password_hash
    matches = check_password(password, stored if stored is not None else _decoy_hash())
    if attempt.user_id is None or stored is None or not matches:
        raise AuthError(WRONG)
    new_hash = hash_password(password) if needs_rehash(stored) else None
    return Verified(attempt, attempt.user_id, stored, new_hash)


def complete(session: so.Session, verified: Verified) -> int:
    """Give a right attempt back: clear its user name's count, decrement its address's, and
    store the upgraded hash. Returns the user id.

    Raises AuthError when the user was removed or its password changed since `start`.
    """
    attempt = verified.attempt
    user = session.get(User, verified.user_id)
    if user is None or user.password_hash != verified.checked_hash:
        raise AuthError(WRONG)
    _forget(session, USER, attempt.username)
    _refund(session, ADDRESS, attempt.address)
    if verified.new_hash is not None:
        user.password_hash = verified.new_hash
    return user.id


def _count(
    session: so.Session, scope: str, subject: str, limit: int, now: datetime, window_s: float
) -> None:
    """Add one attempt to (scope, subject), opening a new window when the last one is over.

    Raises TooManyAttemptsError when `limit` attempts were already counted in this window.
    """
    cutoff = now - timedelta(seconds=window_s)
    for _ in range(_COUNT_TRIES):
        _insert_missing(session, scope, subject, now)
        if _increment(session, scope, subject, limit, now, cutoff):
            return
        opened = session.scalar(
            sa.select(LoginAttempts.window_started_at).where(
                LoginAttempts.scope == scope, LoginAttempts.subject == subject
            )
        )
        if opened is not None:
            wait = (opened - now).total_seconds() + window_s
            raise TooManyAttemptsError(_refusal(scope, wait), max(1, math.ceil(wait)))
    raise TooManyAttemptsError(_refusal(scope, 1), 1)


def _insert_missing(session: so.Session, scope: str, subject: str, now: datetime) -> None:
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(
        insert(LoginAttempts)
        .values(scope=scope, subject=subject, failures=0, window_started_at=now)
        .on_conflict_do_nothing(index_elements=["scope", "subject"])
    )


def _increment(
    session: so.Session, scope: str, subject: str, limit: int, now: datetime, cutoff: datetime
) -> bool:
    """One statement, so concurrent attempts cannot both take the last one left (PostgreSQL
    checks the condition again on the row it waited for; SQLite runs one writer at a time)."""
    row = LoginAttempts
    over = row.window_started_at <= cutoff
    done = cast(
        sa.CursorResult[Any],
        session.execute(
            sa.update(row)
            .where(row.scope == scope, row.subject == subject, sa.or_(over, row.failures < limit))
            .values(
                failures=sa.case((over, 1), else_=row.failures + 1),
                window_started_at=sa.case((over, now), else_=row.window_started_at),
            )
            .execution_options(synchronize_session=False)
        ),
    )
    return done.rowcount == 1


def _forget(session: so.Session, scope: str, subject: str) -> None:
    session.execute(
        sa.delete(LoginAttempts).where(
            LoginAttempts.scope == scope, LoginAttempts.subject == subject
        )
    )


def _refund(session: so.Session, scope: str, subject: str) -> None:
    row = LoginAttempts
    session.execute(
        sa.update(row)
        .where(row.scope == scope, row.subject == subject, row.failures > 0)
        .values(failures=row.failures - 1)
        .execution_options(synchronize_session=False)
    )


def _refusal(scope: str, wait_s: float) -> str:
    who = "this user name" if scope == USER else "this address"
    minutes = math.ceil(wait_s / 60)
    later = f"{math.ceil(wait_s)} s" if wait_s < 120 else f"{minutes} minutes"
    return f"too many failed log-ins for {who}; try again in {later}"


@functools.cache
def _decoy_hash() -> str:
    """A hash no password is known for, made once per process, checked for unknown names."""
    return hash_password(secrets.token_urlsafe(16))
