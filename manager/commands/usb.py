"""`satchel usb export|import`: a stick for devices that never reach the manager."""

from __future__ import annotations

from pathlib import Path

import click

from satchel.manager.commands.common import (
    echo_json,
    load_keys,
    passphrase_file_option,
    passphrase_from,
    refusals_exit_1,
)
from satchel.manager.commands.context import fleet_of
from satchel.manager.errors import ReportRefusedError


@click.group()
def usb() -> None:
    """Carry bundles to offline devices on a USB stick, and their reports back."""


@usb.command("export")
@click.argument("path", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--key",
    "key_paths",
    multiple=True,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Signing key for the plan (KEYDIR/signing.key); repeat for a threshold.",
)
@click.option(
    "--deployment",
    "deployment_id",
    type=int,
    default=None,
    help="Only this deployment (default: every active one).",
)
@click.option("--ttl", type=float, default=None, help="Seconds the plan stays valid.  [30 days]")
@passphrase_file_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
@refusals_exit_1
def usb_export(
    ctx: click.Context,
    path: Path,
    key_paths: tuple[Path, ...],
    deployment_id: int | None,
    ttl: float | None,
    passphrase_file: Path | None,
    as_json: bool,
) -> None:
    """Write the trust root, the bundles and a signed plan of who gets what to PATH.

    With --url the manager works out the plan and the bundles are downloaded from it; the
    plan is signed here, with --key, which never leaves this machine."""
    keys = load_keys(key_paths, passphrase_from(passphrase_file))
    result = fleet_of(ctx).export_stick(path, keys, ttl, deployment_id)
    plan = result.plan
    if as_json:
        echo_json(
            {
                "plan": plan.to_signed(),
                "bundles_written": result.bundles_written,
                "bundles_present": result.bundles_present,
            }
        )
        return
    devices = sum(len(a.devices) for a in plan.assignments)
    click.echo(
        f"plan {plan.plan_id}: {len(plan.assignments)} assignment(s) for {devices} device(s), "
        f"{result.bundles_written} bundle(s) written, {result.bundles_present} already there, "
        f"valid until {plan.expires.isoformat()}"
    )


@usb.command("import")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
@refusals_exit_1
def usb_import(ctx: click.Context, path: Path, as_json: bool) -> None:
    """Record the signed device reports on PATH as if the devices had checked in.

    Reports already imported are skipped. Exit code 1 if any report was refused.
    """
    result = fleet_of(ctx).import_stick(path)
    if as_json:
        echo_json(result.to_dict())
    else:
        click.echo(
            f"{len(result.imported)} report(s) imported, {len(result.duplicates)} already "
            f"imported, {len(result.refused)} refused"
            + (f", {result.samples} sample(s) stored" if result.samples else "")
        )
    if result.refused:
        file, reason = result.refused[0]
        more = f" (and {len(result.refused) - 1} more)" if len(result.refused) > 1 else ""
        raise ReportRefusedError(f"report {file} refused: {reason}{more}")
