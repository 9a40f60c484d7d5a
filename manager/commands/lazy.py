"""A click group whose subcommands are imported only when they run or show their own help.

`satchel keys init` should not pay for Flask and SQLAlchemy, nor `satchel --help` for any of
it: each subcommand is named in a table with its module and its one-line help, so listing
the commands imports nothing, and invoking one imports that module alone.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import click


@dataclass(frozen=True)
class LazyCommand:
    """A subcommand by name: where it lives (`module:attribute`) and its short help, which
    `--help` of the group lists without importing the module."""

    target: str
    short_help: str  # the first sentence of the command's help (a test holds them equal)
    remote: bool = True  # False: works on the local database only (no `--url`)

    def load(self, name: str) -> click.Command:
        """Import the command. A missing optional dependency becomes a command that refuses
        in one line (exit 1), naming the extra to install."""
        module_name, _, attribute = self.target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name is None or e.name.startswith("satchel"):
                raise
            return _missing_extra(name, self.short_help, e.name)
        command = getattr(module, attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.target} is not a click command")
        return command


def _missing_extra(name: str, short_help: str, missing: str) -> click.Command:
    @click.command(
        name, short_help=short_help, context_settings={"ignore_unknown_options": True}
    )
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def refuse(args: tuple[str, ...]) -> None:
        click.echo(
            f"error: `satchel {name}` needs the manager extra (pip install 'satchel[manager]'): "
            f"no module named {missing}",
            err=True,
        )
        raise SystemExit(1)

    return refuse


class LazyGroup(click.Group):
    """A group whose `lazy` subcommands load on first use (see the module's docstring)."""

    def __init__(self, *args: object, lazy: dict[str, LazyCommand] | None = None,
                 **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in self.lazy:
            command = self.lazy[cmd_name].load(cmd_name)
            self.add_command(command, cmd_name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of `--help`, from the table for commands not yet loaded."""
        limit = formatter.width - 6 - max((len(n) for n in self.list_commands(ctx)), default=0)
        rows = []
        for name in self.list_commands(ctx):
            loaded = self.commands.get(name)
            if loaded is not None:
                if loaded.hidden:
                    continue
                rows.append((name, loaded.get_short_help_str(limit)))
            else:
                stand_in = click.Command(name, help=self.lazy[name].short_help)
                rows.append((name, stand_in.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
