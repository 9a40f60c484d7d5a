"""Helpers shared by the admin commands: passphrases, key loading, JSON output."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from satchel.bundles.errors import BundleError, KeyFileError
from satchel.manager.errors import ManagerError, UsageError

if TYPE_CHECKING:
    from satchel.bundles.keys import SigningKey

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class CliContext:
    data_dir: Path
    url: str | None = None  # a manager's base URL: act on its REST API, not the database
    token_file: Path | None = None  # where the admin token for `url` is kept


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


class _FastExit:
    requested = False  # set by a command whose results are durable when it returns


def ends_fast(func: F) -> F:
    """Let the `satchel` console script end without the interpreter's teardown once `func`
    returns (bundles/fastexit.py): for commands that loaded a runtime and whose output is
    written durably before they return."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = func(*args, **kwargs)
        _FastExit.requested = True
        return result

    return wrapper  # type: ignore[return-value]


def fast_exit_requested() -> bool:
    return _FastExit.requested


PASSPHRASE_ENV = "SATCHEL_KEY_PASSPHRASE"

passphrase_file_option = click.option(
    "--passphrase-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help=f"File holding the private keys' passphrase (else ${PASSPHRASE_ENV}, else a prompt).",
)


def passphrase_from(passphrase_file: Path | None) -> bytes | None:
    """The passphrase given by file or environment, or None. Raises UsageError."""
    if passphrase_file is not None:
        try:
            return passphrase_file.read_bytes().rstrip(b"\r\n")
        except OSError as e:
            raise UsageError(f"cannot read passphrase file {passphrase_file}: {e.strerror}") from e
    env = os.environ.get(PASSPHRASE_ENV)
    return env.encode() if env else None


def load_keys(paths: tuple[Path, ...], passphrase: bytes | None) -> list[SigningKey]:
    """Load private keys, prompting once for a passphrase on a terminal when one is needed.

    Raises KeyDirError (unreadable), KeyFileError (bad key or passphrase)."""
    from satchel.manager.keydir import load_key  # cryptography: only for commands that sign

    keys: list[SigningKey] = []
    for path in paths:
        try:
            keys.append(load_key(path, passphrase))
        except KeyFileError:
            if passphrase is not None or not sys.stdin.isatty():
                raise
            passphrase = click.prompt(f"Passphrase for {path}", hide_input=True, err=True).encode()
            keys.append(load_key(path, passphrase))
    return keys


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True))


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
