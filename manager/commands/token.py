"""`satchel token create|list|revoke`: admin API tokens and device enrollment tokens."""

from __future__ import annotations

import click

from satchel.manager.commands.common import echo_json, refusals_exit_1
from satchel.manager.commands.context import fleet_of
from satchel.manager.fleet import NewToken


@click.group()
def token() -> None:
    """Issue admin API tokens and device enrollment tokens."""


@token.command("create")
@click.option("--admin", "kind", flag_value="admin", help="An admin API token.")
@click.option("--enroll", "kind", flag_value="enroll", help="A one-time device enrollment token.")
@click.option("--device-class", default=None, help="Enrollment limited to this device class.")
@click.option(
    "--ttl",
    type=float,
    default=None,
    help="Lifetime in seconds. Enrollment tokens: the configured default; admin: no expiry.",
)
@click.option("--name", default="", help="What an admin token is for (shown in `token list`).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
@refusals_exit_1
def token_create(
    ctx: click.Context,
    kind: str | None,
    device_class: str | None,
    ttl: float | None,
    name: str,
    as_json: bool,
) -> None:
    """Create a token; it is printed alone on the last line (and never stored)."""
    if kind is None:
        raise click.UsageError("give --admin or --enroll")
    if kind == "admin" and device_class:
        raise click.UsageError("--device-class applies to --enroll tokens")
    if kind == "enroll" and name:
        raise click.UsageError("--name applies to --admin tokens")
    issued = fleet_of(ctx).create_token(NewToken(kind, name, device_class, ttl))
    if as_json:
        echo_json(issued)
        return
    expires = issued["expires_at"] or "never"
    if kind == "admin":
        click.echo(f"admin token {issued['id']}, expires {expires} (shown once; keep it secret):")
    else:
        limit = f" for class {device_class}" if device_class else ""
        click.echo(f"one-time enrollment token{limit}, valid until {expires}:")
    click.echo(issued["token"])


@token.command("list")
@click.option("--limit", type=click.IntRange(1, 10_000), default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
@refusals_exit_1
def token_list(ctx: click.Context, limit: int, as_json: bool) -> None:
    """List admin tokens: state, name, owner, expiry and last use (never the secrets)."""
    found = fleet_of(ctx).list_admin_tokens(limit)
    if as_json:
        echo_json({"admin_tokens": found})
        return
    if not found:
        click.echo("no admin tokens")
        return
    click.echo(f"{'ID':>5} {'STATE':<8} {'NAME':<24} {'OWNER':<16} {'EXPIRES':<26} LAST USED")
    for v in found:
        expires, used = v["expires_at"] or "never", v["last_used_at"] or "never"
        click.echo(
            f"{v['id']:>5} {v['status']:<8} {v['name'] or '-':<24} {v['owner'] or '-':<16} "
            f"{expires:<26} {used}"
        )


@token.command("revoke")
@click.argument("token_id", type=int)
@click.pass_context
@refusals_exit_1
def token_revoke(ctx: click.Context, token_id: int) -> None:
    """Revoke the admin token TOKEN_ID."""
    fleet_of(ctx).revoke_admin_token(token_id)
    click.echo(f"admin token {token_id} revoked")
