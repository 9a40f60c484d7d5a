"""`satchel`: the admin and manager command line. Commands are thin wrappers over service
functions; every refusal is one line on stderr and exit code 1, usage errors exit 2.

Each command group is imported only when it runs (`commands.lazy`): `satchel keys init` loads
no Flask and no SQLAlchemy. With `--url` (or SATCHEL_URL) the fleet commands act on a
manager's REST API instead of the local database (`manager.fleet`)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from satchel.bundles.logsetup import FORMATS, LEVELS
from satchel.bundles.logsetup import configure as configure_logs
from satchel.manager.commands.common import CliContext, refusals_exit_1
from satchel.manager.commands.lazy import LazyCommand, LazyGroup

__all__ = ["CliContext", "main", "refusals_exit_1"]

DEFAULT_DATA_DIR = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local/share")) / "satchel"
_C = "satchel.manager.commands"

# name -> where the group lives and the line `satchel --help` shows for it
COMMANDS = {
    "keys": LazyCommand(
        f"{_C}.keys:keys", "Make, list and rotate the keys that sign bundles and the trust root."
    ),
    "model": LazyCommand(f"{_C}.model:model", "Prepare models before bundling them."),
    "bundle": LazyCommand(f"{_C}.bundle:bundle", "Build, inspect and verify signed model bundles."),
    "serve": LazyCommand(
        f"{_C}.serve:serve",
        "Run the manager (REST API, downloads, /metrics) on a production WSGI server.",
        remote=False,
    ),
    "db": LazyCommand(
        f"{_C}.db:db", "Manage the database schema (Alembic migrations).", remote=False
    ),
    "trust": LazyCommand(
        f"{_C}.trust:trust_group",
        "The trust root the manager verifies every bundle against.",
        remote=False,
    ),
    "token": LazyCommand(
        f"{_C}.token:token", "Issue admin API tokens and device enrollment tokens."
    ),
    "user": LazyCommand(f"{_C}.user:user", "Admin users of the web dashboard.", remote=False),
    "device": LazyCommand(
        f"{_C}.device:device",
        "The fleet: list and inspect devices, tag them, register USB-only ones.",
    ),
    "deploy": LazyCommand(
        f"{_C}.deploy:deploy",
        "Roll a bundle out to devices in waves; watch, pause, resume or abort it.",
    ),
    "usb": LazyCommand(
        f"{_C}.usb:usb", "Carry bundles to offline devices on a USB stick, and their reports back."
    ),
    "samples": LazyCommand(
        f"{_C}.samples:samples",
        "Hard examples devices brought home: list them, export them for retraining.",
    ),
}


@click.group(
    cls=LazyGroup,
    lazy=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="SATCHEL_DATA_DIR",
    default=DEFAULT_DATA_DIR,
    show_default=True,
    help="Manager data directory (SQLite database, bundle store). Env: SATCHEL_DATA_DIR.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Manager settings file (TOML, a [manager] table; docs/CONFIG.md). Env: SATCHEL_CONFIG.",
)
@click.option(
    "--url",
    envvar="SATCHEL_URL",
    default=None,
    metavar="URL",
    help="Act on this manager's REST API instead of the local database; the admin token "
    "comes from SATCHEL_TOKEN or the credentials file. Env: SATCHEL_URL.",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File holding the admin token for --url, mode 0600.  "
    "[default: ~/.config/satchel/credentials]",
)
@click.option(
    "--log-level",
    type=click.Choice(LEVELS, case_sensitive=False),
    default=None,
    help="Least severe log lines written (setting `log_level`).  [default: info]",
)
@click.option(
    "--log-format",
    type=click.Choice(FORMATS),
    default=None,
    help="Log lines as text or one JSON object each (setting `log_format`).  [default: text]",
)
@click.version_option(package_name="satchel")
@click.pass_context
def main(
    ctx: click.Context,
    data_dir: Path,
    config_file: Path | None,
    url: str | None,
    token_file: Path | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Satchel: signed, smoke-tested, offline-first model updates for device fleets."""
    url = url or None  # SATCHEL_URL= (empty) means the local database
    name = ctx.invoked_subcommand
    if url and name in COMMANDS and not COMMANDS[name].remote:
        click.echo(
            f"error: `satchel {name}` works on the local database only; drop --url "
            "(and SATCHEL_URL)",
            err=True,
        )
        ctx.exit(2)
    if log_level or log_format:  # `serve` reads them with the other settings (config_of)
        configure_logs((log_level or "info").lower(), log_format or "text")
    ctx.obj = CliContext(data_dir=data_dir, url=url, token_file=token_file)


def run() -> None:
    """The `satchel` console script: the command line; a command that allows it (`bundle
    build`) then ends without the interpreter's teardown (bundles/fastexit.py)."""
    try:
        main()  # standalone: it always ends by raising SystemExit
    except SystemExit as e:
        from satchel.manager.commands.common import fast_exit_requested

        if fast_exit_requested():
            from satchel.bundles.fastexit import exit_now

            exit_now(e.code if isinstance(e.code, int) else int(e.code is not None))
        raise
