"""`satchel deploy create|list|status|pause|resume|abort`: rolling a bundle out in waves."""

from __future__ import annotations

from typing import Any

import click

from satchel.bundles.timeutil import now
from satchel.manager.commands.common import echo_json, refusals_exit_1
from satchel.manager.commands.context import config_of, run_service
from satchel.manager.services import deployments
from satchel.manager.services.deployments import Selectors


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
    config = config_of(ctx)
    selectors = Selectors.from_dict(
        {"device_classes": list(classes), "tags": list(tags), "devices": list(device_ids)}
    )
    t = now()

    def work(s: Any) -> dict[str, Any]:
        dep = deployments.create(
            s,
            bundle_ref,
            selectors,
            waves or config.deploy_default_waves,
            success_ratio if success_ratio is not None else config.deploy_success_ratio,
            max_failure_ratio if max_failure_ratio is not None else config.deploy_max_failure_ratio,
            t,
        )
        return deployments.summary(s, dep)

    info = run_service(ctx, work)
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
@click.option("--state", default=None, type=click.Choice(deployments.DEPLOYMENT_STATES))
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
@refusals_exit_1
def deploy_list(ctx: click.Context, state: str | None, as_json: bool) -> None:
    """List deployments, newest first."""
    found = run_service(
        ctx,
        lambda s: [deployments.summary(s, d) for d in deployments.list_deployments(s, state)],
    )
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
    t = now()
    info = run_service(ctx, lambda s: deployments.status(s, deployment_id, t))
    if as_json:
        echo_json(info)
        return
    _print_status(info)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {state}" for state, n in counts.items()) or "nothing yet"


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
    t = now()
    new_state = run_service(
        ctx, lambda s: deployments.act(s, deployment_id, action, t, reason).state
    )
    click.echo(f"deployment {deployment_id} is {new_state}")


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
