"""`satchel`: the admin and manager command line. Commands are thin wrappers over service
functions; every refusal is one line on stderr and exit code 1, usage errors exit 2."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from bundles.errors import BundleError
from manager.errors import ManagerError

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_DATA_DIR = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local/share")) / "satchel"


@dataclass
class CliContext:
    data_dir: Path


def refusals_exit_1(func: F) -> F:
    """Turn every Satchel refusal into one line on stderr and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (BundleError, ManagerError) as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


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
    from manager.commands import bundle, keys, model

    main.add_command(keys.keys)
    main.add_command(model.model)
    main.add_command(bundle.bundle)
    import importlib.util

    if importlib.util.find_spec("flask") is None:  # server commands need the `manager` extra
        return
    from manager.commands import server

    server.register(main)


_register()

if __name__ == "__main__":
    main()
