"""`satchel user add|list|passwd|remove`: thin wrappers over `manager.services.users`."""

from __future__ import annotations

import sys

import click

from satchel.bundles.timeutil import now
from satchel.manager.commands.common import echo_json, refusals_exit_1
from satchel.manager.commands.context import run_service
from satchel.manager.services import users

password_stdin_option = click.option(
    "--password-stdin", is_flag=True, help="Read the password from standard input."
)


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


@click.group()
def user() -> None:
    """Admin users of the web dashboard."""


@user.command("add")
@click.argument("username")
@password_stdin_option
@click.pass_context
@refusals_exit_1
def user_add(ctx: click.Context, username: str, password_stdin: bool) -> None:
    """Add an admin user (the password is prompted for, or read from stdin)."""
    password = _password(password_stdin)
    run_service(ctx, lambda s: users.create_user(s, username, password).id)
    click.echo(f"admin user {username} added")


@user.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
@refusals_exit_1
def user_list(ctx: click.Context, as_json: bool) -> None:
    """List admin users with their open dashboard logins and working admin tokens."""
    t = now()
    found = run_service(ctx, lambda s: users.list_users(s, t))
    if as_json:
        echo_json({"users": [u.to_dict() for u in found]})
        return
    if not found:
        click.echo("no admin users (add one with `satchel user add NAME`)")
        return
    click.echo(f"{'USER':<24} {'LOGINS':>6} {'TOKENS':>6}  ADDED")
    for u in found:
        click.echo(
            f"{u.username:<24} {u.sessions:>6} {u.admin_tokens:>6}  {u.created_at.isoformat()}"
        )


@user.command("passwd")
@click.argument("username")
@password_stdin_option
@click.pass_context
@refusals_exit_1
def user_passwd(ctx: click.Context, username: str, password_stdin: bool) -> None:
    """Set USERNAME's password; their dashboard logins end at once."""
    password = _password(password_stdin)
    ended = run_service(ctx, lambda s: users.set_password(s, username, password))
    click.echo(f"password of {username} changed; {ended} dashboard login(s) ended")


@user.command("remove")
@click.argument("username")
@click.pass_context
@refusals_exit_1
def user_remove(ctx: click.Context, username: str) -> None:
    """Remove USERNAME: their dashboard logins end and their admin tokens are deleted."""
    removed = run_service(ctx, lambda s: users.remove_user(s, username))
    click.echo(
        f"admin user {username} removed; {removed.sessions} dashboard login(s) ended, "
        f"{removed.admin_tokens} admin token(s) deleted"
    )
