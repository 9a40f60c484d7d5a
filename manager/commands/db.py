"""`satchel db upgrade|downgrade|current`: the database schema (Alembic migrations)."""

from __future__ import annotations

import click

from satchel.manager import db as database
from satchel.manager.commands.common import refusals_exit_1
from satchel.manager.commands.context import config_of


@click.group()
def db() -> None:
    """Manage the database schema (Alembic migrations)."""


@db.command()
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@click.pass_context
@refusals_exit_1
def upgrade(ctx: click.Context, revision: str) -> None:
    """Create or migrate the database to the newest schema."""
    config = config_of(ctx)
    now_at = database.upgrade(config, revision)
    click.echo(f"database is at revision {now_at}")


@db.command()
@click.argument("revision")
@click.pass_context
@refusals_exit_1
def downgrade(ctx: click.Context, revision: str) -> None:
    """Migrate the database down to REVISION ("base" removes every table)."""
    config = config_of(ctx)
    now_at = database.downgrade(config, revision)
    click.echo(f"database is at revision {now_at}")


@db.command()
@click.pass_context
@refusals_exit_1
def current(ctx: click.Context) -> None:
    """Show the schema revision of the database and the one this manager needs."""
    config = config_of(ctx)
    engine = database.make_engine(config)
    try:
        at = database.current_revision(engine)
    finally:
        engine.dispose()
    head = database.head_revision()
    click.echo(f"database: {at or 'empty'}; needed: {head}")
