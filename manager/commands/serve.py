"""`satchel serve`: the manager (REST API, dashboard, downloads, /metrics) on a production
WSGI server."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from satchel.bundles.logsetup import FORMATS, LEVELS
from satchel.manager.commands.common import refusals_exit_1
from satchel.manager.commands.context import config_of
from satchel.manager.wsgi import serve as run


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
@click.option(
    "--log-level",
    type=click.Choice(LEVELS, case_sensitive=False),
    default=None,
    help="Least severe log lines written.  Env: SATCHEL_LOG_LEVEL.  [default: info]",
)
@click.option(
    "--log-format",
    type=click.Choice(FORMATS),
    default=None,
    help="text, or json: one object per line with the request id.  Env: SATCHEL_LOG_FORMAT.",
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
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Run the manager (REST API, downloads, /metrics) on a production WSGI server.

    The database must be at the newest schema revision (`satchel db upgrade`). Settings come
    from --config, then SATCHEL_* environment variables (SATCHEL_DATABASE_URL selects
    PostgreSQL), then these options.
    """
    config = config_of(
        ctx, config_file, host=host, port=port, workers=workers, threads=threads, server=server,
        log_level=log_level.lower() if log_level else None, log_format=log_format,
    )
    with contextlib.suppress(KeyboardInterrupt):
        run(config, announce=lambda line: click.echo(line))
