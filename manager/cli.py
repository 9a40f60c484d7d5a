"""`satchel`: the admin and manager command line. Commands are thin wrappers over service
functions; every refusal is one line on stderr and exit code 1, usage errors exit 2."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import click

from satchel.manager.commands import bundle, keys, model
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
    main.add_command(keys.keys)
    main.add_command(model.model)
    main.add_command(bundle.bundle)
    # The manager's commands need the `manager` extra (Flask, SQLAlchemy): imported only when
    # the extra is installed, so the bundle and key commands work without it.
    if importlib.util.find_spec("flask") is None:
        return
    from satchel.manager.commands import db, deploy, device, serve, token, trust, usb, user

    for group in (
        serve.serve,
        db.db,
        trust.trust_group,
        token.token,
        user.user,
        device.device,
        deploy.deploy,
        usb.usb,
    ):
        main.add_command(group)
    for command in bundle.STORE_COMMANDS:
        bundle.bundle.add_command(command)


_register()

