"""`satchel-agent`: the device's command line. Commands are thin wrappers over
`agent.provision`, `agent.install.installer` and `agent.state`; every refusal is one line on stderr
with exit code 1, usage errors exit 2.

A technician waits for every command, so each one imports what it uses inside its own body:
`status`, `history` and `rollback` load neither numpy nor a runtime, no command but `enroll`
and `run` loads the HTTP client, only `run` loads the inference server, and `install` loads
the one runtime its bundle names, for the smoke test (issue 14;
tests/agent/test_agent_cold_start.py holds each command to its list). The console entry point
(agent/quickstatus.py) answers a plain `status` or `history` of a clean device before this
module is even imported; what it prints must stay byte for byte what these commands print.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from satchel.agent.config import (
    CONFIG_FILE_ENV,
    DEFAULT_CONFIG,
    DEFAULT_CONFIG_FILE,
    DEFAULT_STATE_DIR,
    STATE_DIR_ENV,
    AgentConfig,
    load_agent_config,
)
from satchel.agent.errors import UsbInstallFailedError
from satchel.agent.quickinstall import (
    check_acceleration,
    install_and_report,
    queue_events,
    refusal_message,
)
from satchel.bundles.errors import ConfigError
from satchel.bundles.logsetup import FORMATS, LEVELS
from satchel.bundles.logsetup import configure as configure_logs

if TYPE_CHECKING:
    from satchel.agent.event_queue import EventQueue

F = TypeVar("F", bound=Callable[..., Any])
# The inference server's default address (agent.server.config.DEFAULT_LISTEN, which a test
# keeps equal), written out so that `--help` does not load the server.
DEFAULT_LISTEN = "127.0.0.1:8401"


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
        except click.ClickException:
            raise  # usage errors: click prints them and exits 2
        except (Exception, KeyboardInterrupt) as e:  # the contract is one line, no traceback
            click.echo(f"error: {refusal_message(e)}", err=True)
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
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"Settings file (TOML; docs/CONFIG.md). Env: {CONFIG_FILE_ENV}.  "
    f"[default: {DEFAULT_CONFIG_FILE}, when it exists]",
)
@click.option("--log-level", type=click.Choice(LEVELS, case_sensitive=False), default=None,
              help="Least severe log lines written (setting `log_level`).  [default: info]")
@click.option("--log-format", type=click.Choice(FORMATS), default=None,
              help="Log lines as text or one JSON object each (setting `log_format`).  "
                   "[default: text]")
@click.version_option(package_name="satchel")
@click.pass_context
def main(ctx: click.Context, state_dir: Path, config_file: Path | None, log_level: str | None,
         log_format: str | None) -> None:
    """satchel-agent: verify, smoke-test, activate and roll back models on this device."""
    logging.getLogger().addHandler(logging.NullHandler())  # commands print their own lines
    if log_level or log_format:  # `run` reads them with the other settings (_config)
        configure_logs((log_level or "info").lower(), log_format or "text")
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
@click.option("--decryption-key", "decryption_keys", multiple=True,
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="A device class's or fleet's X25519 private key (PEM) that encrypted "
                   "bundles may be wrapped for; copied in, mode 0600. Repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print the identity as JSON.")
@click.pass_obj
@refusals_exit_1
def init(obj: CliContext, trust: Path, device_id: str, device_class: str,
         no_trusted_clock: bool, decryption_keys: tuple[Path, ...], as_json: bool) -> None:
    """Set up this device: trust root, its own Ed25519 key (which encrypted bundles are also
    wrapped for), id, class, CPU architecture."""
    from satchel.agent.provision import init_device

    identity = init_device(obj.state_dir, trust.read_bytes(), device_id, device_class,
                           trusted_clock=not no_trusted_clock,
                           decryption_keys=decryption_keys)
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
        _echo_recipient(obj.state_dir, identity.device_id)


def _echo_recipient(state_dir: Path, device_id: str) -> None:
    from satchel.agent.install.decrypt import device_recipient

    recipient = device_recipient(state_dir, device_id)
    click.echo(f"encrypted bundles are wrapped for the same key (X25519 fingerprint "
               f"{recipient.fingerprint}): satchel bundle build --encrypt-to "
               f"{device_id}=device.pub ...")


@main.command(name="recipient")
@click.option("--add", "add", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Also hold this X25519 private key (a device class's or fleet's), mode "
                   "0600.")
@click.option("--json", "as_json", is_flag=True, help="Print the public keys as JSON.")
@click.pass_obj
@refusals_exit_1
def recipient_command(obj: CliContext, add: Path | None, as_json: bool) -> None:
    """Print this device's X25519 public key (PEM; its Ed25519 device key converted), the one
    encrypted bundles are wrapped for, and the fingerprints of every decryption key it holds.
    Private keys never leave."""
    from satchel.agent.install.decrypt import add_key, device_recipient, load_identities
    from satchel.agent.state import DeviceState

    identity = DeviceState(obj.state_dir).identity()
    own = device_recipient(obj.state_dir, identity.device_id)
    if add is not None:
        add_key(obj.state_dir, add)
    held = [i.recipient for i in load_identities(obj.state_dir, identity.device_id)]
    if as_json:
        _echo_json({"device_id": identity.device_id, "public_key": own.to_pem().decode(),
                    "fingerprint": own.fingerprint,
                    "keys": [{"name": r.name, "fingerprint": r.fingerprint} for r in held]})
        return
    click.echo(own.to_pem().decode().rstrip())
    for r in held:
        name = f"{identity.device_id}, its own key," if r.fingerprint == own.fingerprint else r.name
        click.echo(f"holds {name} (fingerprint {r.fingerprint})")


@main.command(name="install")
@click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the result and report as JSON.")
@click.pass_obj
@refusals_exit_1
def install_command(obj: CliContext, bundle: Path, as_json: bool) -> None:
    """Verify, smoke-test and activate BUNDLE; refuse it with the reason if anything fails.

    Settings: SATCHEL_AGENT_<NAME> environment variables, as for `usb` and `run` (e.g.
    SATCHEL_AGENT_DISK_MARGIN_BYTES).
    """
    # The plain cases never get here: the console entry point runs them without click
    # (agent.quickinstall), with this same function.
    install_and_report(obj.state_dir, bundle, as_json, _runtime_config(), click.echo)


def _initialised(state_dir: Path) -> bool:
    from satchel.agent.state import DeviceState

    return DeviceState(state_dir).layout.device.is_file()


def _queue_events(state_dir: Path, queue: Callable[[EventQueue], object],
                  config: AgentConfig = DEFAULT_CONFIG) -> None:
    """Queue what a technician's command did, for the manager; a failure to queue is a note,
    not a failure of the command (the device state is what counts)."""
    queue_events(state_dir, queue, config, click.echo)


def _recover_and_note(state_dir: Path) -> None:
    from satchel.agent.install.installer import recover

    for line in recover(state_dir):
        click.echo(f"note: {line}", err=True)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the SPEC's status object.")
@click.pass_obj
@refusals_exit_1
def status(obj: CliContext, as_json: bool) -> None:
    """Show each channel's active and kept releases."""
    from satchel.agent.state import DeviceState

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
        candidate = info.get("candidate")
        if candidate:  # judged in shadow or ramp before it activates (agent.staging)
            click.echo(f"  candidate {candidate['version']} (sequence {candidate['sequence']})"
                       f" in {candidate['stage']}: {_candidate_figures(candidate)}")
        if info.get("variants"):  # a release with variants (agent/variants/status.py)
            others = ", ".join(f"{n} {v['state']}" for n, v in info["variants"].items())
            click.echo(f"  variant {info['variant']} ({info['variant_reason']}); {others}")


def _candidate_figures(candidate: dict[str, Any]) -> str:
    shadow, ramp = candidate.get("shadow") or {}, candidate.get("ramp") or {}
    if candidate["stage"] == "ramp" and ramp:
        return (f"step {ramp['step'] + 1} of {len(ramp['steps'])} at {ramp['percent']}%, "
                f"{candidate['client_answers']} client answer(s)")
    if shadow:
        return (f"{shadow['agreed']} of {shadow['compared']} field requests agree "
                f"(needs {shadow['needed']:.0%} of {shadow['requests']})")
    return "starting"


@main.command(name="rollback")
@click.argument("channel")
@click.option("--reason", default="asked by technician", show_default=True,
              help="Why; recorded in the history.")
@click.option("--json", "as_json", is_flag=True, help="Print the release now active as JSON.")
@click.pass_obj
@refusals_exit_1
def rollback_command(obj: CliContext, channel: str, reason: str, as_json: bool) -> None:
    """Go back to CHANNEL's previous kept release, dropping the active one."""
    from satchel.agent.install.installer import rollback
    from satchel.agent.state import DeviceState
    from satchel.agent.sync.install_events import CLI
    from satchel.bundles.events import ROLLED_BACK

    record = DeviceState(obj.state_dir).record(channel) if _initialised(obj.state_dir) else None
    release = rollback(obj.state_dir, channel, reason)
    if record is not None:
        _queue_events(obj.state_dir, lambda q: q.append(
            ROLLED_BACK, channel=channel, version=record.active.version,
            sequence=record.active.sequence, reason=f"{reason} (satchel-agent rollback)",
            figures={"to_version": release.version, "to_sequence": release.sequence,
                     "via": CLI},
        ))
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
    from satchel.agent.install import history
    from satchel.agent.state import DeviceState

    _recover_and_note(obj.state_dir)
    events = history.read_history(DeviceState(obj.state_dir).layout)
    if channel:
        events = [e for e in events if e.get("channel") == channel]
    events = events[-limit:]
    if as_json:
        _echo_json(events)
        return
    for e in events:
        words = [str(e[k]) for k in ("time", "event", "channel", "version") if e.get(k)]
        reason = f": {e['reason']}" if e.get("reason") else ""
        click.echo(" ".join(words) + reason)


# --- the manager, sticks and the service (agent.sync.client, agent.sync.usb, agent.service) -------


def _quiet_logs(verbose: bool) -> None:
    """Commands other than `run` print their own one-line results; their modules' log lines
    show only with --verbose."""
    root = click.get_current_context().find_root().params
    if verbose and not root.get("log_level"):
        configure_logs("info", root.get("log_format") or "text")


def _check_url(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    from urllib.parse import urlsplit

    if value is not None:
        split = urlsplit(value)
        if split.scheme not in ("http", "https") or not split.netloc:
            raise click.BadParameter(f"{value!r} is not http(s)://HOST[:PORT]")
    return value


def _config(**options: Any) -> AgentConfig:
    """The settings of this invocation: the defaults, the settings file (--config, else
    $SATCHEL_AGENT_CONFIG, else /etc/satchel-agent/agent.toml when it exists), the
    SATCHEL_AGENT_<NAME> variables, then the command's `options`. A bad setting is a usage
    error: one line naming the key and where it was given, exit code 2, nothing done."""
    root = click.get_current_context().find_root().params
    config_file = root.get("config_file")
    for option in ("log_level", "log_format"):  # `satchel-agent --log-level` wins over the file
        if root.get(option) and options.get(option) is None:
            options[option] = root[option].lower()
    try:
        return load_agent_config(config_file, **options)
    except ConfigError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)


def _runtime_config(**options: Any) -> AgentConfig:
    """`_config()` for the commands that load models: an execution provider or delegate that
    this device does not have is refused (exit code 1) before anything is done."""
    config = _config(**options)
    unavailable = check_acceleration(config)
    if unavailable is not None:
        click.echo(f"error: {unavailable}", err=True)
        sys.exit(1)
    return config


@main.command()
@click.option("--manager", "manager_url", required=True, metavar="URL", callback=_check_url,
              help="The manager's base URL, e.g. http://10.0.0.5:8400.")
@click.option("--token", required=True, help="One-time enrollment token from the admin.")
@click.option("--force", is_flag=True, help="Enroll again although a credential is stored.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("-v", "--verbose", is_flag=True, help="Log retries and trust updates.")
@click.pass_obj
@refusals_exit_1
def enroll(obj: CliContext, manager_url: str, token: str, force: bool, as_json: bool,
           verbose: bool) -> None:
    """Register this device with its manager and keep the device credential (mode 0600)."""
    from satchel.agent.sync.enroll import enroll_device

    _quiet_logs(verbose)
    result = enroll_device(obj.state_dir, manager_url, token, config=_config(), force=force)
    if as_json:
        _echo_json(result.to_dict())
        return
    every = f"every {result.poll_interval_s:g} s" if result.poll_interval_s else "periodically"
    click.echo(f"enrolled {result.device_id} with {result.manager_url}; `satchel-agent run` "
               f"checks in {every}; trust root version {result.trust_root_version}")


@main.command(name="usb")
@click.argument("path", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
@click.option("-v", "--verbose", is_flag=True, help="Log every step.")
@click.pass_obj
@refusals_exit_1
def usb_command(obj: CliContext, path: Path, as_json: bool, verbose: bool) -> None:
    """Install what the signed plan on the stick at PATH gives this device, and write this
    device's signed report back onto the stick. Exit 1 if anything was refused."""
    from satchel.agent.event_queue import EventQueue
    from satchel.agent.sync.report import stored_totals
    from satchel.agent.sync.usb import process_stick

    _quiet_logs(verbose)
    config = _runtime_config()
    _recover_and_note(obj.state_dir)
    outcome = process_stick(obj.state_dir, path, EventQueue(obj.state_dir, config),
                            stored_totals(obj.state_dir), config=config)
    if as_json:
        _echo_json(outcome.to_dict())
    else:
        for release in outcome.installed:
            click.echo(f"installed {release}")
        for release in outcome.skipped:
            click.echo(f"already running {release} or newer")
        for release in outcome.refused:
            click.echo(f"refused here earlier: {release} (not installed again)")
        for release, why in outcome.failed:
            click.echo(f"not installed {release}: {' '.join(why.split())}")
        if not (outcome.installed or outcome.skipped or outcome.refused or outcome.failed):
            click.echo(f"plan {outcome.plan_id} has nothing for this device")
        click.echo(f"report written to {outcome.report}")
    if outcome.failed:
        release, why = outcome.failed[0]
        raise UsbInstallFailedError(f"{release} was not installed: {why}")


@main.command(name="run")
@click.option("--listen", default=None, metavar="HOST:PORT",
              help="Where the inference server listens (loopback only, as a rule).  "
                   f"[default: setting `listen`, {DEFAULT_LISTEN}]")
@click.option("--socket", "socket_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Unix socket of the inference server.  [default: STATE_DIR/agent.sock]")
@click.option("--no-socket", is_flag=True, help="Serve on TCP only.")
@click.option("--manager", "manager_url", metavar="URL", callback=_check_url,
              help="Check in with this manager URL instead of the one enrolled with.")
@click.option("--usb-root", "usb_roots", multiple=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Watch this mount root for sticks with a plan (repeat; e.g. /media).  "
                   "[default: setting `usb_roots`]")
@click.pass_obj
@refusals_exit_1
def run_command(obj: CliContext, listen: str | None, socket_path: Path | None, no_socket: bool,
                manager_url: str | None, usb_roots: tuple[Path, ...]) -> None:
    """Run the device service: inference server, health watch, check-ins, USB sticks.

    Stops cleanly on SIGTERM or SIGINT. Settings: the settings file (--config), then
    SATCHEL_AGENT_<NAME> environment variables (e.g. SATCHEL_AGENT_POLL_S=30 checks in every
    30 s), then these options.
    """
    import signal
    import threading

    from satchel.agent.service import AgentService, socket_for

    config = _runtime_config(listen=listen,
                             usb_roots=tuple(str(r) for r in usb_roots) or None)
    configure_logs(config.log_level, config.log_format)  # journald-aware (bundles.logsetup)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    service = AgentService(
        obj.state_dir, listen=config.listen,
        unix_socket=socket_for(obj.state_dir, socket_path, no_socket),
        manager_url=manager_url, usb_roots=[Path(r) for r in config.usb_roots], config=config,
    )
    service.run(stop)
