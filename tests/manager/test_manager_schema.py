"""Schema changes only through Alembic: upgrade and downgrade on both databases, models that
match the migrations, and a manager that refuses a database not at head."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner

from satchel.manager import db as database
from satchel.manager.app import create_app
from satchel.manager.cli import main
from satchel.manager.config import ManagerConfig
from satchel.manager.errors import DatabaseNotReadyError
from satchel.manager.models import Base

TABLES = {
    "users",
    "web_sessions",
    "login_attempts",
    "admin_tokens",
    "enrollment_tokens",
    "devices",
    "device_tags",
    "device_channels",
    "trust_roots",
    "bundles",
    "bundle_deltas",
    "deployments",
    "deployment_targets",
    "events",
    "usb_reports",
    "manager_secrets",
    "samples",
}


def _tables(config: ManagerConfig) -> set[str]:
    engine = database.make_engine(config)
    try:
        return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(empty_config: ManagerConfig) -> None:
    assert database.upgrade(empty_config) == database.head_revision()
    assert _tables(empty_config) == TABLES
    assert database.downgrade(empty_config, "base") == "base"
    assert _tables(empty_config) == set()
    database.upgrade(empty_config)
    assert _tables(empty_config) == TABLES


def test_models_match_the_migrations(config: ManagerConfig) -> None:
    engine = database.make_engine(config)
    try:
        with engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert diffs == []


def test_app_refuses_a_database_not_at_head(empty_config: ManagerConfig) -> None:
    with pytest.raises(DatabaseNotReadyError, match="satchel db upgrade"):
        create_app({"data_dir": empty_config.data_dir, "database_url": empty_config.database_url})


def test_cli_refuses_a_database_not_at_head_in_one_line(empty_config: ManagerConfig) -> None:
    env = {"SATCHEL_DATABASE_URL": empty_config.database_url, "SATCHEL_CONFIG": ""}
    for args in (["serve", "--port", "0"], ["device", "list"], ["token", "create", "--admin"]):
        r = CliRunner().invoke(main, ["--data-dir", str(empty_config.data_dir), *args], env=env)
        assert r.exit_code == 1, r.output
        assert r.stderr.splitlines() == [
            f"error: database is empty, this manager needs revision "
            f"{database.head_revision()}: run `satchel db upgrade`"
        ]


def test_db_upgrade_command_brings_it_to_head(empty_config: ManagerConfig) -> None:
    env = {"SATCHEL_DATABASE_URL": empty_config.database_url, "SATCHEL_CONFIG": ""}
    r = CliRunner().invoke(
        main, ["--data-dir", str(empty_config.data_dir), "db", "upgrade"], env=env
    )
    assert r.exit_code == 0 and database.head_revision() in r.stdout
    engine = database.make_engine(empty_config)
    try:
        database.require_head(engine)
    finally:
        engine.dispose()
