"""What every manager command needs: its configuration, a database to run services on, and
the fleet it acts on (the local database, or a manager's REST API with `--url`).

SQLAlchemy and the services load only inside these functions: a command that never reaches
the database (`--help`, `--url`) does not pay for them."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from click.core import ParameterSource

from satchel.manager.config import ManagerConfig, load_config
from satchel.manager.errors import UsageError

if TYPE_CHECKING:
    import sqlalchemy.orm as so

    from satchel.manager.fleet import Fleet

T = TypeVar("T")


def config_of(
    ctx: click.Context, config_file: Path | None = None, **overrides: Any
) -> ManagerConfig:
    """The configuration for this invocation: `satchel --config` (or `config_file`, or
    SATCHEL_CONFIG), the environment, `--data-dir` when given, then `overrides`. A bad setting
    is a usage error: one line naming the key and where it was given, exit code 2."""
    root = ctx.find_root()
    config_file = config_file or root.params.get("config_file")
    data_dir = {"data_dir": root.obj.data_dir}
    given = root.get_parameter_source("data_dir") not in (ParameterSource.DEFAULT, None)
    for option in ("log_level", "log_format"):  # `satchel --log-level ...` wins over the file
        if root.params.get(option) and overrides.get(option) is None:
            overrides[option] = root.params[option].lower()
    try:
        return load_config(config_file, defaults=None if given else data_dir,
                           **(data_dir if given else {}), **overrides)
    except UsageError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)


def run_service(ctx: click.Context, work: Callable[[so.Session], T]) -> T:
    """Run `work(session)` in one transaction on the manager's database.

    Raises DatabaseNotReadyError when the schema is not at head, and what `work` raises.
    """
    from satchel.manager.db import open_database

    config = config_of(ctx)
    db = open_database(config)
    try:
        return db.run(work)
    finally:
        db.dispose()


def fleet_of(ctx: click.Context) -> Fleet:
    """The fleet this invocation acts on: the manager at `satchel --url` (admin token from
    --token-file, SATCHEL_TOKEN or the credentials file), else the local database.

    Raises UsageError (bad URL, credentials file readable by others, no manager extra for the
    local database), AuthError (no token).
    """
    obj = ctx.find_root().obj
    if obj.url:
        from satchel.manager.fleet.credentials import admin_token
        from satchel.manager.fleet.http import ApiClient
        from satchel.manager.fleet.remote import ApiFleet

        return ApiFleet(ApiClient(obj.url, admin_token(obj.token_file)), config_of(ctx))
    try:
        from satchel.manager.fleet.local import DatabaseFleet
    except ModuleNotFoundError as e:  # SQLAlchemy comes with the manager extra
        if e.name is None or e.name.startswith("satchel"):
            raise
        raise UsageError(
            f"the local database needs the manager extra (pip install 'satchel[manager]'; no "
            f"module named {e.name}), or give --url to use a manager's API"
        ) from e
    return DatabaseFleet(config_of(ctx))
