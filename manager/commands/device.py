"""`satchel device list|show|tag|add|remove`: the fleet, and USB-only devices registered by
their public key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from satchel.manager.commands.common import echo_json, refusals_exit_1
from satchel.manager.commands.context import fleet_of


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
    found = fleet_of(ctx).list_devices(device_class, tag)
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
@click.option(
    "--events",
    type=click.IntRange(0, 10_000),
    default=20,
    show_default=True,
    help="Recent events shown.",
)
@click.pass_context
@refusals_exit_1
def device_show(ctx: click.Context, device_id: str, as_json: bool, events: int) -> None:
    """Show one device: identity, what each channel runs, health, recent events."""
    info = fleet_of(ctx).device_detail(device_id, events)
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
        cand = ch.get("candidate")
        if isinstance(cand, dict):  # a release in its shadow stage or ramp (issue 18)
            shadow, ramp = cand.get("shadow") or {}, cand.get("ramp") or {}
            doing = (f"ramp at {ramp.get('percent')}%" if cand.get("stage") == "ramp" else
                     f"shadow, {shadow.get('compared', 0)} of {shadow.get('requests', '?')} "
                     f"compared, agreement {shadow.get('agreement')}")
            click.echo(f"    candidate {cand.get('version')} (sequence {cand.get('sequence')}): "
                       f"{doing}, {cand.get('client_answers', 0)} client answers")
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
    now_tags = fleet_of(ctx).set_device_tags(device_id, add, drop)
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
    fleet_of(ctx).register_device(
        {"device_id": device_id, "device_class": device_class, "public_key": key_text, "arch": arch}
    )
    click.echo(f"device {device_id} registered")


@device.command("remove")
@click.argument("device_id")
@click.pass_context
@refusals_exit_1
def device_remove(ctx: click.Context, device_id: str) -> None:
    """Forget DEVICE_ID: its credential, state and events."""
    fleet_of(ctx).remove_device(device_id)
    click.echo(f"device {device_id} removed")
