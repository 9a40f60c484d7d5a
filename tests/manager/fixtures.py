"""The manager's fixtures, shared by the manager, web and reliability tests: a fresh database
per test on SQLite and on PostgreSQL, the app over it, a client, a fleet and a live server.

A pytest plugin, registered by `tests/conftest.py` (pytest's way to share fixtures between
sibling directories, where importing them into each conftest is not). A directory that needs
another app (tests/web: SQLite with an admin user) overrides `app`, `client` and `fleet` in its
own conftest.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from satchel.manager import db as database
from satchel.manager.app import create_app
from satchel.manager.config import ManagerConfig, load_config
from tests.factory.keys import Keyring
from tests.manager.databases import (
    NoPostgresError,
    drop_pg_database,
    fresh_pg_database,
    pg_server,
)
from tests.manager.helpers import Fleet
from tests.manager.live_server import LiveServer

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """A URL of a PostgreSQL server on which we may create databases, with a migrated
    template database ready; skips, saying why, when there is no PostgreSQL."""
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(pg_server())
        except NoPostgresError as e:
            pytest.skip(str(e))
        yield url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database file to copy."""
    data_dir = tmp_path_factory.mktemp("sqlite-template")
    database.upgrade(load_config(data_dir=data_dir, database_url=""))
    return data_dir / "satchel.db"


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
    settings = {name: getattr(config, name) for name in config.__dataclass_fields__}
    application = create_app({**settings, "TESTING": True})
    yield application
    application.extensions["satchel"].db.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def fleet(app: Flask, client: FlaskClient, keys: Keyring, tmp_path: Path) -> Fleet:
    """A manager with a trust root and an admin token, and helpers to drive it."""
    return Fleet.start(app, client, keys, tmp_path)


@pytest.fixture
def live_server(app: Flask) -> Iterator[LiveServer]:
    with LiveServer(app) as server:
        yield server
