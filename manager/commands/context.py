"""What every manager command needs: its configuration and a database to run services on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import sqlalchemy.orm as so

from satchel.manager.config import ManagerConfig, load_config
from satchel.manager.db import open_database

T = TypeVar("T")


def config_of(
    ctx: click.Context, config_file: Path | None = None, **overrides: Any
) -> ManagerConfig:
    """The configuration for this invocation: --data-dir of `satchel`, SATCHEL_CONFIG or
    `config_file`, the environment, then `overrides`. Raises UsageError."""
    root = ctx.find_root()
    return load_config(config_file, data_dir=root.obj.data_dir, **overrides)


def run_service(ctx: click.Context, work: Callable[[so.Session], T]) -> T:
    """Run `work(session)` in one transaction on the manager's database.

    Raises DatabaseNotReadyError when the schema is not at head, and what `work` raises.
    """
    config = config_of(ctx)
    db = open_database(config)
    try:
        return db.run(work)
    finally:
        db.dispose()
