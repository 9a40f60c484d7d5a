"""`satchel-agent install`, without click: what the command does and prints, for both the full
command line (agent.cli) and the console entry point's fast path (agent.quickstatus).

A device installs on a slow CPU, and click with the whole command line's definitions is ~10%
of a small bundle's install (issue 14). So the entry point runs the plain cases of `install`
(`[--state-dir DIR] [--config FILE] install [--json] BUNDLE`, ASCII arguments, paths click.Path
would accept) here, and hands everything else (other options, `--help`, anything malformed)
to `satchel.agent.cli`, which calls the same `install_and_report`. What is printed, the exit
code and the events queued are the same either way (tests/agent/test_agent_quick_install.py).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from satchel.agent.config import DEFAULT_CONFIG, AgentConfig, load_agent_config
from satchel.agent.errors import AgentError, SmokeTestFailedError
from satchel.bundles.errors import BundleError, ConfigError

if TYPE_CHECKING:
    from satchel.agent.event_queue import EventQueue
    from satchel.agent.install.installer import InstallResult
    from satchel.agent.sync.install_events import BundleOrigin

Echo = Callable[..., None]  # echo(text, err=False): one line on stdout, or stderr


def plain_echo(message: str, err: bool = False) -> None:
    """click.echo of one line of plain text: the line, a newline, flushed."""
    stream = sys.stderr if err else sys.stdout
    stream.write(message + "\n")
    stream.flush()


def json_text(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, indent=2, allow_nan=False)


def refusal_message(e: BaseException) -> str:
    """The one line (after `error: `) a command prints for a refusal or failure."""
    if isinstance(e, (AgentError, BundleError)):
        message = str(e)
    elif isinstance(e, OSError):
        where = f" {e.filename}" if e.filename else ""
        message = f"cannot access{where}: {e.strerror or e}"
    elif isinstance(e, KeyboardInterrupt):
        message = "interrupted"
    else:
        message = f"unexpected failure ({type(e).__name__}): {e}"
    return " ".join(message.split())


def queue_events(state_dir: Path, queue: Callable[[EventQueue], object],
                 config: AgentConfig = DEFAULT_CONFIG, echo: Echo = plain_echo) -> None:
    """Queue what a technician's command did, for the manager; a failure to queue is a note,
    not a failure of the command (the device state is what counts)."""
    from satchel.agent.event_queue import EventQueue
    from satchel.agent.state import DeviceState

    if not DeviceState(state_dir).layout.device.is_file():  # not initialised
        return
    try:
        queue(EventQueue(state_dir, config))
    except OSError as e:
        echo(f"note: the event for the manager was not queued: {e}", err=True)


def _queue_install(
    state_dir: Path, origin: BundleOrigin | None, config: AgentConfig, echo: Echo, *,
    result: InstallResult | None = None, error: BaseException | None = None,
) -> None:
    from satchel.agent.sync.install_events import queue_install_events

    if origin is not None:
        queue_events(state_dir,
                     lambda q: queue_install_events(q, origin, result=result, error=error),
                     config, echo)


def install_and_report(state_dir: Path, bundle: Path, as_json: bool, config: AgentConfig,
                       echo: Echo = plain_echo) -> None:
    """Install `bundle`, queue its events and print the outcome. Raises what the installer
    raises (after printing the JSON refusal with `as_json`)."""
    from satchel.agent.install.installer import install
    from satchel.agent.sync.install_events import CLI, origin_of_file

    origin = origin_of_file(bundle, CLI)
    try:
        result = install(state_dir, bundle, config=config)
    except (AgentError, BundleError) as e:
        _queue_install(state_dir, origin, config, echo, error=e)
        if as_json:
            report = e.report if isinstance(e, SmokeTestFailedError) else None
            echo(json_text({"installed": False, "error": str(e), "report": report}))
        raise
    _queue_install(state_dir, origin, config, echo, result=result)
    release = result.release
    if as_json:
        echo(json_text({
            "installed": True,
            "channel": release.channel,
            "version": release.version,
            "sequence": release.sequence,
            "previous": result.previous,
            "stage": result.stage,  # "shadow"/"ramp": judged on field requests, not active yet
            "report": result.report.to_dict(),
            "seconds": {phase: round(s, 6) for phase, s in result.seconds.items()},
        }))
        return
    if result.stage is not None:
        echo(f"staged {release.channel} {release.version} (sequence {release.sequence})"
             f" in {result.stage} beside {result.previous}, which stays active until it"
             f" passes; smoke test passed: {result.report.summary()}")
        return
    was = f", replacing {result.previous}" if result.previous else ""
    echo(f"activated {release.channel} {release.version} (sequence {release.sequence})"
         f"{was}; smoke test passed: {result.report.summary()}")


def check_acceleration(config: AgentConfig) -> str | None:
    """Why this device cannot run the execution providers or delegates `config` names, or
    None (the CPU, the default, is always there: nothing is imported to know it)."""
    if (config.onnx_providers, config.onnx_provider_options, config.tflite_delegates) == (
            DEFAULT_CONFIG.onnx_providers, {}, ()):
        return None
    from satchel.agent.runtimes import ModelRuntimeError
    from satchel.agent.runtimes.accel import Acceleration, check_available

    try:
        check_available(Acceleration.of(config))
    except ModelRuntimeError as e:
        return str(e)
    return None


def run(state_dir: Path, config_file: Path | None, bundle: Path, as_json: bool) -> int:
    """`satchel-agent [--state-dir DIR] [--config FILE] install [--json] BUNDLE` as agent.cli
    runs it (settings, refusals, output); returns the exit code."""
    logging.getLogger().addHandler(logging.NullHandler())  # commands print their own lines
    try:
        config = load_agent_config(config_file)
    except ConfigError as e:
        plain_echo(f"error: {e}", err=True)
        return 2
    unavailable = check_acceleration(config)
    if unavailable is not None:
        plain_echo(f"error: {unavailable}", err=True)
        return 1
    try:
        install_and_report(state_dir, bundle, as_json, config)
    except Exception as e:  # noqa: BLE001 - the contract is one line, never a traceback
        plain_echo(f"error: {refusal_message(e)}", err=True)
        return 1
    except KeyboardInterrupt as e:
        plain_echo(f"error: {refusal_message(e)}", err=True)
        return 1
    return 0
