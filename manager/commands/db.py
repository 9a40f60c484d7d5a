"""`satchel db upgrade|downgrade|current`: the database schema (Alembic migrations);
`satchel db prune`: retention of events and health samples."""

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


@db.command()
@click.pass_context
@refusals_exit_1
def prune(ctx: click.Context) -> None:
    """Delete events and health samples older than retention_events_s and
    retention_health_s (each 0 = kept for ever). `satchel serve` also does this every
    retention_interval_s."""
    from satchel.manager.services import retention

    config = config_of(ctx)
    if not retention.enabled(config):
        click.echo("nothing to prune: retention_events_s and retention_health_s are 0 "
                   "(kept for ever)")
        return
    store = database.open_database(config, check_schema=config.check_schema)
    try:
        click.echo(str(retention.prune(store, config)))
    finally:
        store.dispose()
