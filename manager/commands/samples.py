"""`satchel samples list|export`: the field inputs devices kept where a candidate release
tripped (hard examples), and one channel and release of them as the `.npz` that
`satchel bundle build --samples` reads, with a sidecar `.json` of per-row meta."""

from __future__ import annotations

import json
from pathlib import Path

import click

from satchel.bundles.durable import atomic_write_bytes
from satchel.manager.commands.common import echo_json, human_bytes, refusals_exit_1
from satchel.manager.commands.context import fleet_of
from satchel.manager.errors import UsageError

REASON_CHOICES = ("disagreement", "nonfinite", "low_margin")  # bundles.captures.REASONS


@click.group()
def samples() -> None:
    """Hard examples devices brought home: list them, export them for retraining."""


@samples.command("list")
@click.option("--channel", default=None, help="Only this channel.")
@click.option("--version", "release", default=None, help="Only this release of the channel.")
@click.option("--reason", "reasons", multiple=True, type=click.Choice(REASON_CHOICES),
              help="Only captures kept for this reason (repeatable).")
@click.option("--device", "devices", multiple=True, help="Only this device's (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
@refusals_exit_1
def samples_list(
    ctx: click.Context, channel: str | None, release: str | None, reasons: tuple[str, ...],
    devices: tuple[str, ...], as_json: bool,
) -> None:
    """List stored captures, oldest first: device, channel, release, reason, size."""
    found = fleet_of(ctx).list_samples(channel, release, list(reasons), list(devices))
    if as_json:
        echo_json({"samples": found})
        return
    if not found:
        click.echo("no samples")
        return
    click.echo(f"{'CAPTURED':<21} {'DEVICE':<20} {'CHANNEL':<14} {'VERSION':<12} "
               f"{'REASON':<13} {'SIZE':>8} SHA256")
    for s in found:
        click.echo(
            f"{s['captured_at']:<21} {s['device_id']:<20} {s['channel']:<14} {s['version']:<12} "
            f"{s['reason']:<13} {human_bytes(s['size']):>8} {s['sha256'][:12]}"
        )


@samples.command("export")
@click.argument("channel")
@click.argument("version")
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path),
              required=True, help="The .npz to write (a sidecar OUT.json holds per-row meta).")
@click.option("--reason", "reasons", multiple=True, type=click.Choice(REASON_CHOICES),
              help="Only captures kept for this reason (repeatable).")
@click.option("--device", "devices", multiple=True, help="Only this device's (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
@refusals_exit_1
def samples_export(
    ctx: click.Context, channel: str, version: str, out: Path, reasons: tuple[str, ...],
    devices: tuple[str, ...], as_json: bool,
) -> None:
    """Export the captures of CHANNEL VERSION as one .npz for `bundle build --samples`.

    One array per model input, keyed by input name, the captured feeds stacked on one more
    leading axis; OUT.json lists each row's device, reason and figures in the same order.
    Captures whose inputs differ in shape are refused, naming the shapes: narrow the export
    with --device or --reason.
    """
    data, meta = fleet_of(ctx).export_samples(channel, version, list(reasons), list(devices))
    sidecar = out.with_suffix(".json")
    try:
        atomic_write_bytes(out, data)
        atomic_write_bytes(sidecar, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    except OSError as e:
        raise UsageError(f"cannot write {out}: {e.strerror or e}") from e
    result = {"channel": channel, "version": version, "count": meta.get("count", 0),
              "npz": str(out), "meta": str(sidecar)}
    if as_json:
        echo_json(result)
        return
    n = result["count"]
    click.echo(f"exported {n} sample{'' if n == 1 else 's'} of {channel} {version} to {out} "
               f"(meta in {sidecar})")
