"""Fixtures of the manager tests. The database, app, client, fleet and live-server fixtures
are shared with the web and reliability tests: see `tests/manager/fixtures.py`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from satchel.manager.config import ManagerConfig, load_config
from tests.manager.admin_cli import Cli
from tests.manager.databases import drop_pg_database, fresh_pg_database


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


@pytest.fixture
def cli(config: ManagerConfig) -> Cli:
    """The admin CLI in-process over `config`'s data dir and database."""
    return Cli(config)
