"""`satchel trust|token|device ...`: thin wrappers over the manager's service functions.

`satchel user ...` is `manager.commands.users`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from satchel.manager.commands.common import echo_json, refusals_exit_1
from satchel.manager.commands.context import config_of, now, run_service
from satchel.manager.errors import UsageError
from satchel.manager.services import devices, tokens
from satchel.manager.services import trust as trust_service
from satchel.manager.services.devices import Identity

# --- trust --------------------------------------------------------------------------------------


@click.group("trust")
def trust_group() -> None:
    """The trust root the manager verifies every bundle against."""


def _root_documents(path: Path) -> list[bytes]:
    """root.json plus the `N.root.json` history beside it (the rotation chain)."""
    if path.is_dir():
        path = path / "root.json"
    try:
        docs = [path.read_bytes()]
        docs += [p.read_bytes() for p in sorted(path.parent.glob("*.root.json")) if p != path]
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from e
    return docs


@trust_group.command("import")
@click.argument("root_json", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
@refusals_exit_1
def trust_import(ctx: click.Context, root_json: Path, as_json: bool) -> None:
    """Trust ROOT_JSON (KEYDIR/root.json): the first root, or the next rotation of it.

    Earlier versions found beside it (KEYDIR/N.root.json) are imported too, so devices can
    walk the rotation chain.
    """
    docs = _root_documents(root_json)
    result = run_service(ctx, lambda s: trust_service.import_roots(s, docs))
    if as_json:
        echo_json({"version": result.root.version, "added": list(result.added)})
    elif result.added:
        added = ", ".join(str(v) for v in result.added)
        click.echo(f"trust root is now version {result.root.version} (added version {added})")
    else:
        click.echo(f"trust root version {result.root.version} was already imported")


@trust_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
@refusals_exit_1
def trust_show(ctx: click.Context, as_json: bool) -> None:
    """Show the trust root: version, signing keys, thresholds."""
    info = run_service(ctx, trust_service.summary)
    if as_json:
        echo_json(info)
        return
    click.echo(f"trust root version {info['version']} (history: {info['versions']})")
    click.echo(f"signing keys ({info['signing_threshold']} needed):")
    for k in info["signing_keys"]:  # type: ignore[attr-defined]
        click.echo(f"  {k}")


# --- tokens -------------------------------------------------------------------------------------


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
    config = config_of(ctx)
    t = now()
    lifetime = ttl if ttl is not None else config.enroll_token_ttl_s
    issued = run_service(
        ctx,
        lambda s: (
            tokens.create_admin_token(s, name, now=t, ttl_s=ttl)
            if kind == "admin"
            else tokens.create_enrollment_token(s, t, lifetime, device_class)
        ),
    )
    if as_json:
        echo_json(issued.to_dict())
        return
    expires = issued.expires_at.isoformat() if issued.expires_at else "never"
    if kind == "admin":
        click.echo(f"admin token {issued.id}, expires {expires} (shown once; keep it secret):")
    else:
        limit = f" for class {device_class}" if device_class else ""
        click.echo(f"one-time enrollment token{limit}, valid until {expires}:")
    click.echo(issued.token)


@token.command("list")
@click.option("--limit", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
@refusals_exit_1
def token_list(ctx: click.Context, limit: int, as_json: bool) -> None:
    """List admin tokens: state, name, owner, expiry and last use (never the secrets)."""
    t = now()
    found = run_service(ctx, lambda s: tokens.list_admin_tokens(s, t, limit))
    if as_json:
        echo_json({"admin_tokens": [v.to_dict() for v in found]})
        return
    if not found:
        click.echo("no admin tokens")
        return
    click.echo(f"{'ID':>5} {'STATE':<8} {'NAME':<24} {'OWNER':<16} {'EXPIRES':<26} LAST USED")
    for v in found:
        expires = v.expires_at.isoformat() if v.expires_at else "never"
        used = v.last_used_at.isoformat() if v.last_used_at else "never"
        click.echo(
            f"{v.id:>5} {v.status:<8} {v.name or '-':<24} {v.owner or '-':<16} {expires:<26} {used}"
        )


@token.command("revoke")
@click.argument("token_id", type=int)
@click.pass_context
@refusals_exit_1
def token_revoke(ctx: click.Context, token_id: int) -> None:
    """Revoke the admin token TOKEN_ID."""
    t = now()
    run_service(ctx, lambda s: tokens.revoke_admin_token(s, token_id, t))
    click.echo(f"admin token {token_id} revoked")


# --- devices ------------------------------------------------------------------------------------


@click.group()
def device() -> None:
    """The fleet: list and inspect devices, tag them, register USB-only ones."""


@device.command("list")
@click.option("--device-class", default=None, help="Only this class.")
@click.option("--tag", default=None, help="Only devices with this tag.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
@refusals_exit_1
def device_list(
    ctx: click.Context, device_class: str | None, tag: str | None, as_json: bool
) -> None:
    """List devices with their class, tags and when they were last seen."""
    found = run_service(
        ctx,
        lambda s: [
            devices.summary(d) for d in devices.list_devices(s, device_class, tag, 1_000_000)
        ],
    )
    if as_json:
        echo_json({"devices": found})
        return
    if not found:
        click.echo("no devices")
        return
    click.echo(f"{'DEVICE':<24} {'CLASS':<16} {'LAST SEEN':<26} {'VIA':<4} TAGS")
    for d in found:
        seen = d["last_seen_at"] or "never"
        via = d["last_via"] or "-"
        click.echo(
            f"{d['device_id']:<24} {d['device_class']:<16} {seen:<26} {via:<4} "
            f"{','.join(d['tags'])}"
        )


@device.command("show")
@click.argument("device_id")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.option("--events", type=int, default=20, show_default=True, help="Recent events shown.")
@click.pass_context
@refusals_exit_1
def device_show(ctx: click.Context, device_id: str, as_json: bool, events: int) -> None:
    """Show one device: identity, what each channel runs, health, recent events."""
    info = run_service(ctx, lambda s: devices.detail(s, device_id, events))
    if as_json:
        echo_json(info)
        return
    _print_device(info)


def _print_device(info: dict[str, Any]) -> None:
    click.echo(f"device {info['device_id']} ({info['device_class']}, {info['arch'] or '?'})")
    click.echo(f"  agent {info['agent_version'] or '?'}, trust root v{info['trust_root_version']}")
    click.echo(f"  last seen {info['last_seen_at'] or 'never'} via {info['last_via'] or '-'}")
    if info["tags"]:
        click.echo(f"  tags: {', '.join(info['tags'])}")
    for name, ch in info["channels"].items():
        active = ch["active"]
        running = f"{active['version']} (sequence {active['sequence']})" if active else "nothing"
        health = info["health"].get(name)
        figures = ""
        if health:
            figures = (
                f"; {health['count']} inferences, {health['errors']} errors, "
                f"{health['nan']} NaN, p95 {health['p95_ms']} ms"
            )
        click.echo(f"  channel {name}: {running}, {ch['state'] or '-'}{figures}")
    for e in info["events"]:
        what = " ".join(str(x) for x in (e["channel"], e["version"]) if x)
        reason = f": {e['reason']}" if e["reason"] else ""
        click.echo(f"  {e['time']} {e['kind']} {what}{reason}")


@device.command("tag")
@click.argument("device_id")
@click.argument("tags", nargs=-1, required=True)
@click.option("--remove", is_flag=True, help="Remove these tags instead of adding them.")
@click.pass_context
@refusals_exit_1
def device_tag(ctx: click.Context, device_id: str, tags: tuple[str, ...], remove: bool) -> None:
    """Add (or --remove) TAGS of DEVICE_ID."""
    add, drop = ([], list(tags)) if remove else (list(tags), [])
    now_tags = run_service(ctx, lambda s: devices.set_tags(s, device_id, add, drop))
    click.echo(f"{device_id}: {', '.join(now_tags) or 'no tags'}")


@device.command("add")
@click.argument("device_id")
@click.option("--device-class", required=True, help="The device's class.")
@click.option(
    "--public-key",
    required=True,
    help="The device's Ed25519 public key: a PEM file, or 64 hex characters.",
)
@click.option("--arch", default="", help="CPU architecture (platform.machine()).")
@click.pass_context
@refusals_exit_1
def device_add(
    ctx: click.Context, device_id: str, device_class: str, public_key: str, arch: str
) -> None:
    """Register a USB-only device by its public key, so its signed reports can be imported."""
    key_text = public_key
    if Path(public_key).is_file():
        key_text = Path(public_key).read_text(encoding="utf-8", errors="replace")
    ident = Identity.from_dict(
        {"device_id": device_id, "device_class": device_class, "public_key": key_text, "arch": arch}
    )
    t = now()
    run_service(ctx, lambda s: devices.register(s, ident, t).id)
    click.echo(f"device {device_id} registered")


@device.command("remove")
@click.argument("device_id")
@click.pass_context
@refusals_exit_1
def device_remove(ctx: click.Context, device_id: str) -> None:
    """Forget DEVICE_ID: its credential, state and events."""
    run_service(ctx, lambda s: devices.remove(s, device_id))
    click.echo(f"device {device_id} removed")
