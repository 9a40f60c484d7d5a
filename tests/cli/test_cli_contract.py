"""The `satchel` command contract of SPEC.md: --help everywhere, exit 2 for usage errors."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
import pytest

from satchel.manager.cli import main

if TYPE_CHECKING:
    from tests.cli.invoke import Cli
    from tests.cli.model_files import Models

ADMIN_GROUPS = ("keys", "model", "bundle")
CONTRACT_COMMANDS = {
    ("keys", "init"), ("keys", "rotate"), ("keys", "list"), ("model", "quantize"),
    ("bundle", "build"), ("bundle", "inspect"), ("bundle", "verify"),
}


def _command_paths() -> list[tuple[str, ...]]:
    """Every group of `satchel` and every command under it (the groups load on demand)."""
    ctx = click.Context(main)
    paths: list[tuple[str, ...]] = [()]
    for name in main.list_commands(ctx):
        group = main.get_command(ctx, name)
        paths.append((name,))
        if isinstance(group, click.Group):
            paths.extend((name, sub) for sub in sorted(group.commands))
    return paths


def test_contract_commands_exist() -> None:
    assert set(_command_paths()) >= CONTRACT_COMMANDS


@pytest.mark.parametrize("path", _command_paths(), ids=lambda p: " ".join(p) or "satchel")
def test_help_works_on_every_command(cli: Cli, path: tuple[str, ...]) -> None:
    out = cli.run(*path, "--help").ok()

    assert out.stdout.startswith("Usage: ")
    assert out.stderr == ""


def test_console_script_help_lists_the_admin_commands(cli: Cli) -> None:
    out = cli.spawn("--help").ok()

    for name in ADMIN_GROUPS:
        assert f"  {name} " in out.stdout
    assert out.stderr == ""


def test_missing_required_option_is_a_usage_error(cli: Cli, models: Models) -> None:
    stderr = cli.spawn("bundle", "verify", models.float_onnx).usage_error()

    assert "Missing option '--trust'" in stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["bundle", "build", "--name", "a", "--version", "1", "-o", "{tmp}/x.satchel"],
         "Missing option '--model'"),
        (["bundle", "build", "--name", "a", "--version", "1", "--model", "{model}",
          "-o", "{tmp}/x.satchel"], "Missing option '--key'"),
        (["bundle", "build", "--name", "a", "--version", "1", "--model", "{model}",
          "--key", "{model}"], "Missing option '-o'"),
        (["bundle", "build", "--name", "a", "--version", "1", "--model", "{model}",
          "--key", "{model}", "-o", "{tmp}/x.satchel", "--sequence", "-1"], "--sequence"),
        (["model", "quantize", "{model}"], "Missing option '-o'"),
        (["model", "quantize", "{tmp}/missing.onnx", "-o", "{tmp}/x.onnx"], "does not exist"),
        (["keys", "init"], "Missing argument 'KEYDIR'"),
        (["keys", "list", "{tmp}/no-such-dir"], "does not exist"),
        (["bundle", "inspect"], "Missing argument 'FILE'"),
        (["bundle", "frobnicate"], "No such command"),
        (["keys", "init", "{tmp}/k", "--no-such-option"], "No such option"),
    ],
)
def test_usage_errors_exit_2(
    cli: Cli, models: Models, tmp_path: Path, args: list[str], expected: str
) -> None:
    argv = [a.format(model=models.float_onnx, tmp=tmp_path) for a in args]

    stderr = cli.run(*argv).usage_error()

    assert expected in stderr
    assert list(tmp_path.iterdir()) == []
