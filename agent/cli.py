"""`satchel-agent`: the device's command line. Commands are thin wrappers over
`agent.provision`, `agent.installer` and `agent.state`; every refusal is one line on stderr
with exit code 1, usage errors exit 2.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from agent import history
from agent.config import DEFAULT_STATE_DIR, STATE_DIR_ENV
from agent.errors import AgentError, SmokeTestFailedError
from agent.installer import install, recover, rollback
from agent.provision import init_device
from agent.state import DeviceState
from bundles.errors import BundleError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class CliContext:
    state_dir: Path


def _echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, sort_keys=True, indent=2, allow_nan=False))


def refusals_exit_1(func: F) -> F:
    """Turn every refusal and failure into one `error:` line on stderr and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (AgentError, BundleError) as e:
            message = str(e)
        except OSError as e:
            where = f" {e.filename}" if e.filename else ""
            message = f"cannot access{where}: {e.strerror or e}"
        except KeyboardInterrupt:
            message = "interrupted"
        except Exception as e:  # noqa: BLE001 - the contract is one line, never a traceback
            message = f"unexpected failure ({type(e).__name__}): {e}"
        click.echo(f"error: {' '.join(message.split())}", err=True)
        sys.exit(1)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar=STATE_DIR_ENV,
    default=DEFAULT_STATE_DIR,
    show_default=True,
    help=f"Device state directory. Env: {STATE_DIR_ENV}.",
)
@click.version_option(package_name="satchel")
@click.pass_context
def main(ctx: click.Context, state_dir: Path) -> None:
    """satchel-agent: verify, smoke-test, activate and roll back models on this device."""
    ctx.obj = CliContext(state_dir=state_dir)


@main.command()
@click.option("--trust", "trust", required=True,
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The trust root (root.json) this device verifies bundles against.")
@click.option("--device-id", required=True, help="This device's unique id.")
@click.option("--device-class", required=True, help="Hardware class bundles are built for.")
@click.option("--no-trusted-clock", is_flag=True,
              help="This device's clock cannot be trusted: judge expiry by the newest signed "
                   "time seen instead.")
@click.option("--json", "as_json", is_flag=True, help="Print the identity as JSON.")
@click.pass_obj
@refusals_exit_1
def init(obj: CliContext, trust: Path, device_id: str, device_class: str,
         no_trusted_clock: bool, as_json: bool) -> None:
    """Set up this device: trust root, its own Ed25519 key, id, class, CPU architecture."""
    identity = init_device(obj.state_dir, trust.read_bytes(), device_id, device_class,
                           trusted_clock=not no_trusted_clock)
    if as_json:
        _echo_json(identity.to_dict())
    else:
        click.echo(f"initialised device {identity.device_id} (class {identity.device_class}, "
                   f"{identity.architecture}) in {obj.state_dir}")
        pub = obj.state_dir / "device.pub"
        click.echo(f"public key {pub} (key id {identity.device_keyid[:16]}); for a USB-only "
                   "device the admin runs: satchel device add "
                   f"{identity.device_id} --device-class {identity.device_class} --public-key "
                   "device.pub")


@main.command(name="install")
@click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the result and report as JSON.")
@click.pass_obj
@refusals_exit_1
def install_command(obj: CliContext, bundle: Path, as_json: bool) -> None:
    """Verify, smoke-test and activate BUNDLE; refuse it with the reason if anything fails."""
    try:
        result = install(obj.state_dir, bundle)
    except (AgentError, BundleError) as e:
        if as_json:
            report = e.report if isinstance(e, SmokeTestFailedError) else None
            _echo_json({"installed": False, "error": str(e), "report": report})
        raise
    release = result.release
    if as_json:
        _echo_json({
            "installed": True,
            "channel": release.channel,
            "version": release.version,
            "sequence": release.sequence,
            "previous": result.previous,
            "report": result.report.to_dict(),
        })
        return
    was = f", replacing {result.previous}" if result.previous else ""
    click.echo(f"activated {release.channel} {release.version} (sequence {release.sequence})"
               f"{was}; smoke test passed: {result.report.summary()}")


def _recover_and_note(state_dir: Path) -> None:
    for line in recover(state_dir):
        click.echo(f"note: {line}", err=True)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the SPEC's status object.")
@click.pass_obj
@refusals_exit_1
def status(obj: CliContext, as_json: bool) -> None:
    """Show each channel's active and kept releases."""
    _recover_and_note(obj.state_dir)
    report = DeviceState(obj.state_dir).status()
    if as_json:
        _echo_json(report)
        return
    click.echo(f"device {report['device_id']} (class {report['device_class']})")
    if not report["channels"]:
        click.echo("no channel installed yet")
    for channel, info in sorted(report["channels"].items()):
        active = info["active"]
        kept = ", ".join(r["version"] for r in info["releases"])
        click.echo(f"{channel}: {active['version']} (sequence {active['sequence']}) "
                   f"{info['state']}; kept: {kept}")


@main.command(name="rollback")
@click.argument("channel")
@click.option("--reason", default="asked by technician", show_default=True,
              help="Why; recorded in the history.")
@click.option("--json", "as_json", is_flag=True, help="Print the release now active as JSON.")
@click.pass_obj
@refusals_exit_1
def rollback_command(obj: CliContext, channel: str, reason: str, as_json: bool) -> None:
    """Go back to CHANNEL's previous kept release, dropping the active one."""
    release = rollback(obj.state_dir, channel, reason)
    if as_json:
        _echo_json({"channel": release.channel, "version": release.version,
                    "sequence": release.sequence})
    else:
        click.echo(f"rolled back {channel} to {release.version} (sequence {release.sequence})")


@main.command(name="history")
@click.option("--channel", help="Only events of this channel.")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True,
              help="Most recent events to show.")
@click.option("--json", "as_json", is_flag=True, help="Print the events as JSON.")
@click.pass_obj
@refusals_exit_1
def history_command(obj: CliContext, channel: str | None, limit: int, as_json: bool) -> None:
    """Show recent activations, refusals and rollbacks, with their reasons."""
    _recover_and_note(obj.state_dir)
    events = history.read_history(DeviceState(obj.state_dir).layout)
    if channel:
        events = [e for e in events if e.get("channel") == channel]
    events = events[-limit:]
    if as_json:
        _echo_json(events)
        return
    for e in events:
        what = " ".join(str(e[k]) for k in ("channel", "version") if k in e)
        reason = f": {e['reason']}" if e.get("reason") else ""
        click.echo(f"{e['time']} {e['event']} {what}{reason}")
