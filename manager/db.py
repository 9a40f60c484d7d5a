"""Database engines, transactions and schema revisions.

SQLite (the embedded default) runs in WAL mode and every transaction takes the write lock up
front (`BEGIN IMMEDIATE`), so concurrent writers queue on the busy timeout instead of failing
half-way. PostgreSQL is reached through psycopg 3; several manager processes may share it.
Schema changes go only through Alembic (`satchel.migrations`, found as package data, so the
wheel alone migrates); `require_head` refuses a database that is not at the newest revision.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import sqlalchemy as sa
import sqlalchemy.orm as so
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from satchel.manager.config import ManagerConfig
from satchel.manager.errors import DatabaseNotReadyError, DiskFullError

T = TypeVar("T")
_RETRY_SQLSTATES = {"40001", "40P01"}  # serialization failure, deadlock detected
_DISK_FULL_SQLSTATE = "53100"  # PostgreSQL disk_full (psycopg.errors.DiskFull)
_SQLITE_FULL = 13  # SQLite's primary result code for "database or disk is full"
_SQLITE_FULL_TEXT = "database or disk is full"  # its message: Python 3.10 has no error codes
SQLITE_BEGIN = "BEGIN IMMEDIATE"  # every SQLite transaction takes the write lock up front


def normalize_url(url: str) -> str:
    """Use psycopg 3 for plain `postgresql://` URLs."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _sqlite_setup(engine: sa.Engine, busy_timeout_ms: int) -> None:
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql(SQLITE_BEGIN)


def make_engine(config: ManagerConfig, autocommit: bool = False) -> sa.Engine:
    """Create the engine for `config.url`; for SQLite, create the data directory first.
    `autocommit` (PostgreSQL only): every statement is its own transaction."""
    url = normalize_url(config.url)
    if url.startswith("sqlite"):
        config.data_dir.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"check_same_thread": False})
        _sqlite_setup(engine, config.sqlite_busy_timeout_ms)
        return engine
    # no pre-ping: it costs a round trip per request; a dropped connection is invalidated by
    # the pool and the transaction retried (`Database.run`)
    options: dict[str, Any] = {}
    if autocommit:  # nothing to roll back when a connection returns to the pool
        options = {"isolation_level": "AUTOCOMMIT", "pool_reset_on_return": None}
    return sa.create_engine(
        url,
        pool_size=config.db_pool_size,
        max_overflow=config.db_max_overflow,
        pool_recycle=config.db_pool_recycle_s,
        **options,
    )


def _is_retryable(err: sa.exc.DBAPIError) -> bool:
    if err.connection_invalidated:
        return True
    code = getattr(err.orig, "sqlstate", None)
    return code in _RETRY_SQLSTATES


def is_disk_full(err: sa.exc.DBAPIError) -> bool:
    """Whether the database refused a write for want of space: SQLITE_FULL (a full disk, or
    `PRAGMA max_page_count` reached) or PostgreSQL's disk_full."""
    orig = err.orig
    if getattr(orig, "sqlstate", None) == _DISK_FULL_SQLSTATE:
        return True
    code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF == _SQLITE_FULL
    return str(orig) == _SQLITE_FULL_TEXT and type(orig).__module__ == "sqlite3"


@contextlib.contextmanager
def _disk_full_refused() -> Iterator[None]:
    """Translate a database out of space into DiskFullError (the rest passes untouched)."""
    try:
        yield
    except sa.exc.DBAPIError as e:
        if not is_disk_full(e):
            raise
        reason = str(e.orig).splitlines()[0] if str(e.orig) else "no space left"
        raise DiskFullError(
            f"the manager's database is full ({reason}); nothing was recorded, retry later"
        ) from e


class Database:
    """An engine and its session factory; `transaction()` is the one way to change data."""

    def __init__(self, config: ManagerConfig) -> None:
        self.config = config
        self.engine = make_engine(config)
        self.sessions = so.sessionmaker(self.engine, expire_on_commit=False)
        self._autocommit_engine: sa.Engine | None = None  # PostgreSQL, made on first use

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextlib.contextmanager
    def transaction(self) -> Iterator[so.Session]:
        """A session committed at the end of the block, rolled back on any exception.
        Raises DiskFullError when the database has no space left for it."""
        with _disk_full_refused(), self.sessions() as session, session.begin():
            yield session

    @contextlib.contextmanager
    def autocommit(self) -> Iterator[sa.Connection]:
        """A Core connection for a short unit of work without the ORM: on PostgreSQL in
        autocommit (each statement its own transaction: one round trip), on SQLite one
        `BEGIN IMMEDIATE` transaction, committed at the end of the block. Raises
        DiskFullError when the database has no space left for a statement or the commit."""
        if self.is_sqlite:
            with _disk_full_refused(), self.engine.begin() as conn:
                yield conn
            return
        with _disk_full_refused(), self.autocommit_engine().connect() as conn:
            yield conn

    def autocommit_engine(self) -> sa.Engine:
        """The engine of `autocommit()`: on PostgreSQL one whose connections are in
        autocommit (made on first use), on SQLite the one engine (transactions then begin
        with SQLITE_BEGIN)."""
        if self.is_sqlite:
            return self.engine
        if self._autocommit_engine is None:  # a race here makes a spare engine, no harm
            self._autocommit_engine = make_engine(self.config, autocommit=True)
        return self._autocommit_engine

    def run(self, work: Callable[[so.Session], T]) -> T:
        """Run `work(session)` in a transaction, retrying it on deadlock, serialization
        failure (PostgreSQL) or a dropped connection up to `config.db_retries` times.
        Raises what `work` raises, DiskFullError when the database has no space left."""
        attempt = 0
        while True:
            try:
                with self.transaction() as session:
                    return work(session)
            except sa.exc.DBAPIError as e:
                attempt += 1
                if not _is_retryable(e) or attempt >= self.config.db_retries:
                    raise
                time.sleep(0.01 * attempt)

    def dispose(self) -> None:
        self.engine.dispose()
        if self._autocommit_engine is not None:
            self._autocommit_engine.dispose()


# --- schema revisions ---------------------------------------------------------------------


def migrations_dir() -> str:
    """Where the Alembic scripts are: the `satchel.migrations` package, wherever it is
    installed (a wheel's site-packages, or the checkout in an editable install)."""
    return str(importlib.resources.files("satchel.migrations"))


def alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", migrations_dir())
    cfg.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return cfg


def head_revision() -> str:
    heads = ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads()
    return heads[0]


def current_revision(engine: sa.Engine) -> str | None:
    """The revision the database is at, None for an empty database."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def require_head(engine: sa.Engine) -> None:
    """Raise DatabaseNotReadyError unless the schema is at the Alembic head revision."""
    try:
        current = current_revision(engine)
    except sa.exc.OperationalError as e:
        raise DatabaseNotReadyError(
            f"cannot open the database: {str(e.orig).splitlines()[0]}"
        ) from e
    head = head_revision()
    if current != head:
        where = "empty" if current is None else f"at revision {current}"
        raise DatabaseNotReadyError(
            f"database is {where}, this manager needs revision {head}: run `satchel db upgrade`"
        )


def upgrade(config: ManagerConfig, revision: str = "head") -> str:
    """Migrate the database to `revision`; return the revision it is now at."""
    engine = make_engine(config)
    try:
        with engine.begin() as conn:
            cfg = alembic_config(config.url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
        return current_revision(engine) or "base"
    finally:
        engine.dispose()


def downgrade(config: ManagerConfig, revision: str) -> str:
    """Migrate the database down to `revision` ("base" empties it)."""
    engine = make_engine(config)
    try:
        with engine.begin() as conn:
            cfg = alembic_config(config.url)
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, revision)
        return current_revision(engine) or "base"
    finally:
        engine.dispose()


def open_database(config: ManagerConfig, check_schema: bool = True) -> Database:
    """Open the database, refusing one not at head. Raises DatabaseNotReadyError."""
    db = Database(config)
    if check_schema:
        try:
            require_head(db.engine)
        except BaseException:
            db.dispose()
            raise
    return db
