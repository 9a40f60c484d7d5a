"""The key that signs dashboard session cookies, kept in the database.

Made once, by whichever manager process starts first, and shared by every process of every
host on this database, so a login works whichever manager answers and survives restarts. The
key is inserted only if absent (`INSERT ... ON CONFLICT DO NOTHING`) and then read back, so
managers starting at once all end up with the row that won. A key file left in a data dir by
an older manager (`web-session.key`) seeds the row, so an upgrade logs nobody out. Deleting
the row (and the old file) logs everyone out at the managers' next start.

The cookie holds only a login's secret, itself looked up by hash in `web_sessions`, and this
session's CSRF token: the key alone opens no dashboard.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import cast

import sqlalchemy as sa
import sqlalchemy.orm as so
from sqlalchemy.dialects import postgresql, sqlite

from satchel.bundles.timeutil import now
from satchel.manager.db import Database
from satchel.manager.errors import DiskFullError
from satchel.manager.models import ManagerSecret
from satchel.manager.web.errors import SessionKeyError

NAME = "web-session"  # the row of the session key in manager_secrets
MIN_BYTES = 16  # a shorter key is refused
_SECRETS = cast(sa.Table, ManagerSecret.__table__)


def load_or_create(db: Database, size: int, legacy_file: Path | None = None) -> bytes:
    """The session key shared through `db`, made (`size` random bytes, or the contents of
    `legacy_file` when that exists) if no manager made it yet.

    Raises SessionKeyError when the database cannot be read or written (e.g. not migrated),
    or the stored key is too short.
    """
    try:
        key: bytes | None = db.run(_stored)
        if key is None:
            candidate = _legacy(legacy_file) or secrets.token_bytes(size)
            key = db.run(lambda s: _insert_then_read(s, candidate))
    except (sa.exc.SQLAlchemyError, DiskFullError, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SessionKeyError(f"cannot read or store the session key in the database: {first}"
                              ) from e
    if key is None or len(key) < MIN_BYTES:
        raise SessionKeyError(
            f"the session key in manager_secrets is shorter than {MIN_BYTES} bytes; delete "
            f"the row {NAME!r}"
        )
    return bytes(key)


_READ = sa.select(_SECRETS.c.value).where(_SECRETS.c.name == NAME)


def _stored(session: so.Session) -> bytes | None:
    value = session.scalar(_READ)
    return None if value is None else bytes(value)


def _insert_then_read(session: so.Session, key: bytes) -> bytes | None:
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(
        insert(_SECRETS)
        .values(name=NAME, value=key, created_at=now())
        .on_conflict_do_nothing(index_elements=["name"])
    )
    return _stored(session)


def _legacy(path: Path | None) -> bytes | None:
    """The key an older manager kept in its data dir, if it is there and long enough."""
    if path is None or not path.is_file():
        return None
    key = path.read_bytes()
    return key if len(key) >= MIN_BYTES else None
