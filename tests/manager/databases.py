"""The manager's test databases on PostgreSQL: where the server comes from, and one database per
test created from a migrated template (fast: a file copy inside the server).

The server is SATCHEL_TEST_PG_URL when set (a URL whose user may CREATE DATABASE), else a
private throwaway cluster (`tests.pgcluster`) removed when the session ends.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa

from satchel.manager import db as database
from satchel.manager.config import load_config
from tests.pgcluster import NO_DURABILITY, find_bindir, private_cluster

PG_ENV = "SATCHEL_TEST_PG_URL"
TEMPLATE_DB = "satchel_template"
# Enough for the concurrency tests' threads and two server workers at once.
MAX_CONNECTIONS = 200


class NoPostgresError(Exception):
    """Neither SATCHEL_TEST_PG_URL nor PostgreSQL binaries: the PostgreSQL variants skip."""


def _with_database(url: str, name: str) -> str:
    parsed = sa.engine.make_url(database.normalize_url(url))
    return parsed.set(database=name).render_as_string(hide_password=False)


def _admin_execute(url: str, *statements: str) -> None:
    engine = sa.create_engine(
        database.normalize_url(url), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool
    )
    try:
        with engine.connect() as conn:
            for s in statements:
                conn.exec_driver_sql(s)
    finally:
        engine.dispose()


@contextlib.contextmanager
def pg_server() -> Iterator[str]:
    """The admin URL of a PostgreSQL server on which we may create databases, with a migrated
    template database ready; the template is dropped on exit (and a private cluster removed).

    Raises NoPostgresError when there is no server to be had.
    """
    given = os.environ.get(PG_ENV)
    with contextlib.ExitStack() as stack:
        if given:
            url = given
        else:
            bindir = find_bindir()
            if bindir is None:
                raise NoPostgresError(f"no PostgreSQL binaries found and {PG_ENV} is not set")
            settings = {**NO_DURABILITY, "max_connections": str(MAX_CONNECTIONS)}
            url = stack.enter_context(private_cluster(bindir, settings)).url
        _admin_execute(
            url,
            f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)",
            f"CREATE DATABASE {TEMPLATE_DB}",
        )
        template_url = _with_database(url, TEMPLATE_DB)
        database.upgrade(load_config(database_url=template_url, data_dir=Path("/nonexistent")))
        yield url
        _admin_execute(url, f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)")


def fresh_pg_database(admin_url: str, template: str | None = TEMPLATE_DB) -> tuple[str, str]:
    """Create a database (from the migrated template, or empty); return (name, url)."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    clause = f" TEMPLATE {template}" if template else ""
    _admin_execute(admin_url, f"CREATE DATABASE {name}{clause}")
    return name, _with_database(admin_url, name)


def drop_pg_database(admin_url: str, name: str) -> None:
    _admin_execute(admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
