"""`satchel`: the admin and manager command line. Commands are thin wrappers over service
functions; every refusal is one line on stderr and exit code 1, usage errors exit 2."""

from __future__ import annotations

import os
from pathlib import Path

import click

from satchel.manager.commands.common import CliContext, refusals_exit_1

__all__ = ["CliContext", "main", "refusals_exit_1"]

DEFAULT_DATA_DIR = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local/share")) / "satchel"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="SATCHEL_DATA_DIR",
    default=DEFAULT_DATA_DIR,
    show_default=True,
    help="Manager data directory (SQLite database, bundle store). Env: SATCHEL_DATA_DIR.",
)
@click.version_option(package_name="satchel")
@click.pass_context
def main(ctx: click.Context, data_dir: Path) -> None:
    """Satchel: signed, smoke-tested, offline-first model updates for device fleets."""
    ctx.obj = CliContext(data_dir=data_dir)


def _register() -> None:
    from satchel.manager.commands import bundle, keys, model

    main.add_command(keys.keys)
    main.add_command(model.model)
    main.add_command(bundle.bundle)
    import importlib.util

    # The server commands need the `manager` extra (Flask, SQLAlchemy).
    if importlib.util.find_spec("flask") is None:
        return
    if importlib.util.find_spec("satchel.manager.commands.server") is None:
        return
    from satchel.manager.commands import server

    server.register(main)


_register()

