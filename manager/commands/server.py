"""`satchel serve` and `satchel db ...`, and the registration of every manager command group.

`register(main)` is called by `manager.cli` when the manager extra (Flask) is installed.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from satchel.manager import db as database
from satchel.manager.commands import admin, rollout, usb, users
from satchel.manager.commands.common import refusals_exit_1
from satchel.manager.commands.context import config_of


@click.command()
@click.option("--host", default=None, help="Address to listen on.  [default: 127.0.0.1]")
@click.option("--port", type=int, default=None, help="Port to listen on.  [default: 8400]")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="TOML file with manager settings (a [manager] table). Env: SATCHEL_CONFIG.",
)
@click.option("--workers", type=int, default=None, help="Server processes.  [default: 1]")
@click.option("--threads", type=int, default=None, help="Threads per process.  [default: 8]")
@click.option(
    "--server",
    type=click.Choice(["auto", "granian", "waitress"]),
    default=None,
    help="HTTP server (auto: granian when installed).  Env: SATCHEL_SERVER.",
)
@click.pass_context
@refusals_exit_1
def serve(
    ctx: click.Context,
    host: str | None,
    port: int | None,
    config_file: Path | None,
    workers: int | None,
    threads: int | None,
    server: str | None,
) -> None:
    """Run the manager (REST API, downloads, /metrics) on a production WSGI server.

    The database must be at the newest schema revision (`satchel db upgrade`). Settings come
    from --config, then SATCHEL_* environment variables (SATCHEL_DATABASE_URL selects
    PostgreSQL), then these options.
    """
    from satchel.manager.wsgi import serve as run

    config = config_of(
        ctx, config_file, host=host, port=port, workers=workers, threads=threads, server=server
    )
    with contextlib.suppress(KeyboardInterrupt):
        run(config, announce=lambda line: click.echo(line))


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


def register(main: click.Group) -> None:
    """Add the manager's command groups to the `satchel` CLI."""
    main.add_command(serve)
    main.add_command(db)
    for group in (
        admin.trust_group,
        admin.token,
        users.user,
        admin.device,
        rollout.deploy,
        usb.usb,
    ):
        main.add_command(group)
    bundle_group = main.commands.get("bundle")
    if not isinstance(bundle_group, click.Group):
        bundle_group = click.Group("bundle", help="Build, inspect, verify and store bundles.")
        main.add_command(bundle_group)
    bundle_group.add_command(rollout.bundle_add)
    bundle_group.add_command(rollout.bundle_list)
