"""`satchel deploy create|list|status|pause|resume|abort`: rolling a bundle out in waves."""

from __future__ import annotations

from typing import Any

import click

from satchel.manager.commands.common import echo_json, refusals_exit_1
from satchel.manager.commands.context import fleet_of
from satchel.manager.fleet import NewDeployment


@click.group()
def deploy() -> None:
    """Roll a bundle out to devices in waves; watch, pause, resume or abort it."""


@deploy.command("create")
@click.option("--bundle", "bundle_ref", required=True, help="NAME:VERSION (or sha256).")
@click.option("--device-class", "classes", multiple=True, help="Target a device class.")
@click.option("--tag", "tags", multiple=True, help="Target devices with this tag.")
@click.option(
    "--device", "device_ids", multiple=True, help="Target a device (named ones go first)."
)
@click.option("--waves", default=None, help="Cumulative waves.  [default: 1,10%,50%,100%]")
@click.option(
    "--success-ratio", type=float, default=None, help="Healthy fraction a wave needs.  [0.95]"
)
@click.option(
    "--max-failure-ratio", type=float, default=None, help="Failed fraction that halts.  [0.1]"
)
@click.option("--json", "as_json", is_flag=True, help="Print the deployment as JSON.")
@click.pass_context
@refusals_exit_1
def deploy_create(
    ctx: click.Context,
    bundle_ref: str,
    classes: tuple[str, ...],
    tags: tuple[str, ...],
    device_ids: tuple[str, ...],
    waves: str | None,
    success_ratio: float | None,
    max_failure_ratio: float | None,
    as_json: bool,
) -> None:
    """Create and start a deployment; its id is printed alone on the last line.

    Without any --device-class, --tag or --device, every compatible device is a target.
    """
    new = NewDeployment(
        bundle_ref, classes, tags, device_ids, waves, success_ratio, max_failure_ratio
    )
    info = fleet_of(ctx).create_deployment(new)
    if as_json:
        echo_json(info)
        return
    sizes = "+".join(str(w["size"]) for w in info["waves"])
    b = info["bundle"]
    click.echo(
        f"deployment of {b['name']} {b['version']} to {info['targets_total']} device(s) "
        f"in waves {sizes}: {info['state']}"
    )
    click.echo(str(info["id"]))


@deploy.command("list")
@click.option(
    "--state", default=None, help="Only deployments in this state (active, paused, halted...)."
)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
@refusals_exit_1
def deploy_list(ctx: click.Context, state: str | None, as_json: bool) -> None:
    """List deployments, newest first."""
    found = fleet_of(ctx).list_deployments(state)
    if as_json:
        echo_json({"deployments": found})
        return
    if not found:
        click.echo("no deployments")
        return
    for d in found:
        b = d["bundle"]
        done = d["counts"].get("succeeded", 0)
        click.echo(
            f"{d['id']:>5}  {d['state']:<9} {b['name']} {b['version']}  "
            f"{done}/{d['targets_total']} succeeded, wave {d['current_wave'] + 1}/{len(d['waves'])}"
        )


@deploy.command("status")
@click.argument("deployment_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
@refusals_exit_1
def deploy_status(ctx: click.Context, deployment_id: int, as_json: bool) -> None:
    """Show a deployment, its waves and every device's progress."""
    info = fleet_of(ctx).deployment_status(deployment_id)
    if as_json:
        echo_json(info)
        return
    _print_status(info)


def _counts(counts: dict[str, int]) -> str:
    """"1 activated, 3 pending": by state name, as JSON brings them from a remote manager."""
    return ", ".join(f"{counts[state]} {state}" for state in sorted(counts)) or "nothing yet"


def _print_status(info: dict[str, Any]) -> None:
    b = info["bundle"]
    click.echo(
        f"deployment {info['id']}: {b['name']} {b['version']} (sequence {b['sequence']}) "
        f"is {info['state']}"
    )
    if info["reason"]:
        click.echo(f"  reason: {info['reason']}")
    click.echo(f"  targets: {info['targets_total']} ({_counts(info['counts'])})")
    for w in info["waves"]:
        mark = "released" if w["released"] else "waiting"
        click.echo(
            f"  wave {w['index'] + 1} ({w['spec']}): {w['size']} device(s), {mark}, "
            f"needs {w['needed']} healthy: {_counts(w['counts'])}"
        )
    for t in info["targets"]:
        reason = f"  {t['reason']}" if t["reason"] else ""
        click.echo(f"    {t['device_id']:<24} wave {t['wave'] + 1}  {t['state']:<10}{reason}")


def _act(ctx: click.Context, deployment_id: int, action: str, reason: str = "") -> None:
    info = fleet_of(ctx).act_on_deployment(deployment_id, action, reason)
    click.echo(f"deployment {deployment_id} is {info['state']}")


@deploy.command("pause")
@click.argument("deployment_id", type=int)
@click.pass_context
@refusals_exit_1
def deploy_pause(ctx: click.Context, deployment_id: int) -> None:
    """Stop offering the bundle to more devices until resumed."""
    _act(ctx, deployment_id, "pause")


@deploy.command("resume")
@click.argument("deployment_id", type=int)
@click.pass_context
@refusals_exit_1
def deploy_resume(ctx: click.Context, deployment_id: int) -> None:
    """Continue a paused or halted deployment (failures so far are then tolerated)."""
    _act(ctx, deployment_id, "resume")


@deploy.command("abort")
@click.argument("deployment_id", type=int)
@click.option("--reason", default="", help="Why, for the record.")
@click.pass_context
@refusals_exit_1
def deploy_abort(ctx: click.Context, deployment_id: int, reason: str) -> None:
    """End a deployment for good; nothing more is offered for it."""
    _act(ctx, deployment_id, "abort", reason)
