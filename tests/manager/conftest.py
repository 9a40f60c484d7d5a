"""Fixtures of the manager tests: a fresh database per test, on SQLite and on PostgreSQL.

PostgreSQL comes from SATCHEL_TEST_PG_URL when set (a URL whose user may CREATE DATABASE),
else from a private throwaway cluster started here (initdb + pg_ctl on a Unix socket in a temp
dir, as the `postgres` user when we are root) and removed at the end of the session. Without
PostgreSQL binaries the PostgreSQL variants are skipped, saying why.

Each test gets its own database: a copy of a migrated SQLite file, or a PostgreSQL database
created from a migrated template (fast: a file copy inside the server).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from satchel.manager import db as database
from satchel.manager.app import create_app
from satchel.manager.config import ManagerConfig, load_config
from tests.factory import Keyring, make_keys
from tests.manager.helpers import Fleet

PG_ENV = "SATCHEL_TEST_PG_URL"
TEMPLATE_DB = "satchel_template"


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextlib.contextmanager
def _private_cluster(bindir: Path) -> Iterator[str]:
    tmp = Path(tempfile.mkdtemp(prefix="satchel-pg-"))
    if os.geteuid() == 0:
        shutil.chown(tmp, "postgres", "postgres")
    data = tmp / "data"
    log = tmp / "server.log"
    run = {"check": True, "capture_output": True, "timeout": 120}
    try:
        subprocess.run(
            _as_postgres(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(data),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "--no-sync",
                    "-E",
                    "UTF8",
                ]
            ),
            **run,
        )
        options = (
            f"-k {tmp} -c listen_addresses='' -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=200"
        )
        subprocess.run(
            _as_postgres(
                [
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-l",
                    str(log),
                    "-o",
                    options,
                    "-w",
                    "start",
                ]
            ),
            **run,
        )
        yield f"postgresql+psycopg://postgres@/postgres?host={tmp}"
    finally:
        subprocess.run(
            _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(tmp, ignore_errors=True)


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


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """A URL of a PostgreSQL server on which we may create databases, with a migrated
    template database ready."""
    given = os.environ.get(PG_ENV)
    if given:
        cm: contextlib.AbstractContextManager[str] = contextlib.nullcontext(given)
    else:
        bindir = _pg_bin()
        if bindir is None:
            pytest.skip(f"no PostgreSQL binaries found and {PG_ENV} is not set")
        cm = _private_cluster(bindir)
    with cm as url:
        _admin_execute(
            url,
            f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)",
            f"CREATE DATABASE {TEMPLATE_DB}",
        )
        template_url = _with_database(url, TEMPLATE_DB)
        database.upgrade(load_config(database_url=template_url, data_dir=Path("/nonexistent")))
        yield url
        _admin_execute(url, f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database file to copy."""
    data_dir = tmp_path_factory.mktemp("sqlite-template")
    database.upgrade(load_config(data_dir=data_dir, database_url=""))
    return data_dir / "satchel.db"


def fresh_pg_database(admin_url: str, template: str | None = TEMPLATE_DB) -> tuple[str, str]:
    """Create a database (from the migrated template, or empty); return (name, url)."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    clause = f" TEMPLATE {template}" if template else ""
    _admin_execute(admin_url, f"CREATE DATABASE {name}{clause}")
    return name, _with_database(admin_url, name)


def drop_pg_database(admin_url: str, name: str) -> None:
    _admin_execute(admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def config(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ManagerConfig]:
    """A manager configuration with a fresh database at head, on `backend`."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    if backend == "sqlite":
        shutil.copyfile(request.getfixturevalue("sqlite_template"), data_dir / "satchel.db")
        yield load_config(data_dir=data_dir, database_url="", log_requests=False)
        return
    admin_url = request.getfixturevalue("pg_admin_url")
    name, url = fresh_pg_database(admin_url)
    try:
        yield load_config(data_dir=data_dir, database_url=url, log_requests=False)
    finally:
        drop_pg_database(admin_url, name)


@pytest.fixture
def app(config: ManagerConfig) -> Iterator[Flask]:
    application = create_app({**_overrides(config), "TESTING": True})
    yield application
    application.extensions["satchel"].db.dispose()


def _overrides(config: ManagerConfig) -> dict[str, object]:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def keys(tmp_path: Path) -> Keyring:
    return make_keys(tmp_path)


@pytest.fixture
def fleet(app: Flask, client: FlaskClient, keys: Keyring, tmp_path: Path) -> Fleet:
    """A manager with a trust root and an admin token, and helpers to drive it."""
    return Fleet.start(app, client, keys, tmp_path)


class LiveServer:
    """The app served over real HTTP on 127.0.0.1 by a threaded server in the background
    (the production server, waitress, is exercised through `satchel serve` itself)."""

    def __init__(self, app: Flask) -> None:
        from werkzeug.serving import make_server

        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.thread.join(timeout=10)
        self.server.server_close()


@pytest.fixture
def live_server(app: Flask) -> Iterator[LiveServer]:
    with LiveServer(app) as server:
        yield server


@pytest.fixture
def empty_config(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[ManagerConfig]:
    """A configuration whose database exists but has no schema at all."""
    data_dir = tmp_path / "empty"
    if backend == "sqlite":
        yield load_config(data_dir=data_dir, database_url="", log_requests=False)
        return
    admin_url = request.getfixturevalue("pg_admin_url")
    name, url = fresh_pg_database(admin_url, template=None)
    try:
        yield load_config(data_dir=data_dir, database_url=url, log_requests=False)
    finally:
        drop_pg_database(admin_url, name)
