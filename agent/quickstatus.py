"""The `satchel-agent` console entry point, with a fast path for `status` and `history`, and
the plain cases of `install` run without click (`install_args`, agent.quickinstall).

A technician waits for `status`; the full command line (click, the settings dataclasses, the
state classes, the manifest parser) takes ~90 ms to import, three times the interpreter's own
start. So the entry point answers the common, clean cases of `status` and `history` with
stdlib-only code (json, os, datetime) and hands everything else to `satchel.agent.cli`:

- options other than `--state-dir`, `--config` (which these two commands do not read),
  `status --json` and `history --channel/--limit/--json`, and anything `--help`, `--version`
  or malformed;
- a state directory with anything for recovery to do or a candidate in shadow or ramp (a
  journal, candidate.json, staged or stale releases, temp files of a killed write, a channel
  without channel.json), or that is not initialised;
- any file that does not read, parse or have exactly the shape the state classes accept
  (`agent.state`), and text that click would print differently (non-ASCII, escapes).

The fast path writes nothing and prints byte for byte what the full command prints for the
same state (tests/agent/test_agent_quick_status.py compares them); when in doubt it declines
and the full command answers, errors included. Issue 14.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timedelta, timezone

TYPE_CHECKING = False  # `typing` alone takes 3 ms to import; mypy reads the block all the same
if TYPE_CHECKING:
    from typing import Any

# Kept equal to agent.config, agent.state and agent.install.channel_store by a test: importing
# those modules is what this one exists to avoid.
STATE_DIR_ENV = "SATCHEL_AGENT_STATE_DIR"
DEFAULT_STATE_DIR = "/var/lib/satchel-agent"
TEMP_PREFIX, TEMP_SUFFIX = ".", ".tmp"  # bundles.durable's temp files: ".NAME.XXXX.tmp"
STATE_ACTIVE = "active"
STATE_PROBATION = "probation"
MAX_PROBATION_S = 365 * 86400.0  # bundles.manifest.HealthPolicy's bound on probation_s
HISTORY_DEFAULT_LIMIT = 20

_IDENTITY_KEYS = ("device_id", "device_class", "architecture", "trusted_clock", "device_keyid")
_CHANNEL_FILES = {"channel.json", "releases", "staging"}
_RELEASE_KEYS = ("name", "version", "sequence", "installed_at", "activated_at")


class Decline(Exception):
    """The fast path does not answer this case; the full command line does."""


def main() -> None:
    """`satchel-agent`: the fast path when it applies, else the full command line."""
    code = quick(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    install = install_args(sys.argv[1:], os.environ)
    if install is not None:  # the plain cases of `install`, without click (agent.quickinstall)
        from pathlib import Path

        from satchel.agent.quickinstall import run
        from satchel.bundles.fastexit import exit_now

        state_dir, config_file, bundle, as_json = install
        exit_now(run(Path(state_dir), Path(config_file) if config_file else None, Path(bundle),
                     as_json))
    from satchel.agent.cli import main as full_main

    full_main()


def quick(argv: list[str]) -> int | None:
    """Answer `status` or `history` on stdout and return the exit code, or return None
    (nothing printed) when the full command line must answer."""
    text = answer(argv, os.environ)
    if text is None:
        return None
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0


def answer(argv: list[str], environ: Any) -> str | None:
    """What the command prints for `argv`, or None when the full command line must answer."""
    if any(k.startswith("_") and k.endswith("_COMPLETE") for k in environ):
        return None  # click's shell completion (`_SATCHEL_AGENT_COMPLETE=bash_source`)
    try:
        state_dir, command, options = _parse(argv, environ)
        _check_clean(state_dir)
        if command == "status":
            return _status_text(state_dir, as_json=bool(options.get("json")))
        return _history_text(state_dir, options)
    except (Decline, OSError, ValueError, TypeError, KeyError, IndexError, OverflowError,
            RecursionError):
        return None


# --- the command line ------------------------------------------------------------------------


def install_args(argv: list[str], environ: Any) -> tuple[str, str | None, str, bool] | None:
    """(state dir, settings file or None, bundle, --json) of a plain
    `[--state-dir DIR] [--config FILE] install [--json] BUNDLE` whose arguments click would
    accept as they are, or None for the full command line (anything else, and non-ASCII)."""
    if any(k.startswith("_") and k.endswith("_COMPLETE") for k in environ):
        return None
    try:
        if not all(a.isascii() for a in argv):
            raise Decline
        state_dir, config_file, rest = _global_options(argv)
        if not rest or rest[0] != "install":
            raise Decline
        bundle: str | None = None
        as_json = False
        for arg in rest[1:]:
            if arg == "--json":
                as_json = True
            elif bundle is not None or not arg or arg.startswith("-"):
                raise Decline
            else:
                bundle = arg
        if bundle is None:
            raise Decline
        _check_path(bundle, directory=False)
        if state_dir is None:
            state_dir = environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR
        if not state_dir:
            raise Decline
        _check_path(state_dir, directory=True)
    except (Decline, OSError, ValueError):
        return None
    return state_dir, config_file, bundle, as_json


def _global_options(argv: list[str]) -> tuple[str | None, str | None, list[str]]:
    """(--state-dir, --config, the arguments after them) of a command line's leading options;
    raises Decline for anything the fast path leaves to the full command line."""
    state_dir: str | None = None
    config_file: str | None = None
    rest = list(argv)
    while rest and rest[0].startswith("-"):
        name, value, rest = _option(rest, ("--state-dir", "--config"))
        _check_path(value, directory=name == "--state-dir")
        if name == "--state-dir":
            state_dir = value
        else:
            config_file = value
    return state_dir, config_file, rest


def _parse(argv: list[str], environ: Any) -> tuple[str, str, dict[str, Any]]:
    state_dir, _, rest = _global_options(argv)
    if not rest or rest[0] not in ("status", "history"):
        raise Decline
    command, rest = rest[0], rest[1:]
    options: dict[str, Any] = {}
    allowed = ("--json",) if command == "status" else ("--json", "--channel", "--limit")
    while rest:
        name, value, rest = _option(rest, allowed)
        options[name.lstrip("-")] = value
    if state_dir is None:
        state_dir = environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR
    if not state_dir:
        raise Decline
    _check_path(state_dir, directory=True)
    return state_dir, command, options


def _check_path(path: str, *, directory: bool) -> None:
    """Decline a path that click.Path refuses: a file given for a directory or the other way
    round, or one that is not readable."""
    try:
        is_dir = os.path.isdir(path) if os.path.exists(path) else None
    except ValueError:
        raise Decline from None
    if is_dir is not None and (is_dir != directory or not os.access(path, os.R_OK)):
        raise Decline


def _option(args: list[str], allowed: tuple[str, ...]) -> tuple[str, Any, list[str]]:
    """The first option of `args` (name, value, the rest); Decline for anything else."""
    head = args[0]
    if head == "--json" and "--json" in allowed:
        return head, True, args[1:]
    name, eq, inline = head.partition("=")
    if name not in allowed or name == "--json":
        raise Decline
    if eq:
        value, rest = inline, args[1:]
    elif len(args) > 1:
        value, rest = args[1], args[2:]
    else:
        raise Decline
    if not value or value.startswith("-"):
        raise Decline
    return name, value, rest


# --- the state directory (as agent.state reads it) -------------------------------------------


def _read_json(path: str) -> Any:
    """The parsed file; Decline if it is missing (the full command names what is missing)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise Decline from None
    return json.loads(data)


def _is_temp(name: str) -> bool:
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


def _check_clean(state_dir: str) -> None:
    """Decline unless the device is initialised and recovery (agent.install.installer.recover,
    which the full `status` and `history` run first) would find nothing to do."""
    identity = _read_json(os.path.join(state_dir, "device.json"))
    if not isinstance(identity, dict) or any(k not in identity for k in _IDENTITY_KEYS):
        raise Decline
    if any(_is_temp(n) for n in _listdir(state_dir)):
        raise Decline
    channels = os.path.join(state_dir, "channels")
    for channel in _listdir(channels):
        directory = os.path.join(channels, channel)
        if not os.path.isdir(directory):
            continue
        names = _listdir(directory)
        # Anything else (a journal, a shadow or ramp candidate, temp files) is for the full
        # command: recovery, or fields of the status this module does not compute.
        if ("channel.json" not in names or not set(names) <= _CHANNEL_FILES
                or _listdir(os.path.join(directory, "staging"))):
            raise Decline
        kept = {r["name"] for r in _record(state_dir, channel)["releases"]}
        if any(n not in kept for n in _listdir(os.path.join(directory, "releases"))):
            raise Decline


def _time(value: Any) -> datetime:
    """A `YYYY-MM-DDTHH:MM:SSZ` timestamp, read as bundles.timeutil.parse_time reads it;
    Decline for anything less regular (strptime accepts some, the full command judges)."""
    if not (isinstance(value, str) and len(value) == 20 and value.isascii()
            and value[4] == value[7] == "-" and value[10] == "T"
            and value[13] == value[16] == ":" and value[19] == "Z"):
        raise Decline
    digits = [value[0:4], value[5:7], value[8:10], value[11:13], value[14:16], value[17:19]]
    if not all(d.isdigit() for d in digits):
        raise Decline
    year, month, day, hour, minute, second = (int(d) for d in digits)
    return datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _record(state_dir: str, channel: str) -> dict[str, Any]:
    """channel.json, checked as agent.state.ChannelRecord.from_dict checks it; Decline if it
    is not exactly of that shape."""
    record = _read_json(os.path.join(state_dir, "channels", channel, "channel.json"))
    if not (isinstance(record, dict) and record.get("channel") == channel
            and isinstance(record.get("releases"), list) and record["releases"]
            and _is_int(record.get("highest_sequence"))
            and isinstance(record.get("state"), str)):
        raise Decline
    for release in record["releases"]:
        if not (isinstance(release, dict) and all(k in release for k in _RELEASE_KEYS)
                and isinstance(release["name"], str) and isinstance(release["version"], str)
                and _is_int(release["sequence"])):
            raise Decline
        _time(release["installed_at"])
        _time(release["activated_at"])
    return record


def _channel_state(state_dir: str, channel: str, record: dict[str, Any]) -> str:
    """As agent.state.DeviceState.channel_state (no journal: _check_clean saw none)."""
    if record["state"] != STATE_ACTIVE:
        return str(record["state"])
    active = record["releases"][0]
    manifest = _read_json(os.path.join(state_dir, "channels", channel, "releases",
                                       active["name"], "manifest.json"))
    probation_s = manifest["health_policy"]["probation_s"]
    if not (isinstance(probation_s, (int, float)) and not isinstance(probation_s, bool)
            and 0.0 <= probation_s <= MAX_PROBATION_S):
        raise Decline
    now = datetime.now(timezone.utc).replace(microsecond=0)  # bundles.timeutil.utcnow
    on_probation = now < _time(active["activated_at"]) + timedelta(seconds=probation_s)
    return STATE_PROBATION if on_probation else STATE_ACTIVE


def _decline_variants(state_dir: str, channel: str, record: dict[str, Any]) -> None:
    """Decline a channel whose active release has variants: their fields (which one runs, and
    why) are the full command's (agent/variants/status.py)."""
    manifest = _read_json(os.path.join(state_dir, "channels", channel, "releases",
                                       record["releases"][0]["name"], "manifest.json"))
    if not isinstance(manifest, dict) or "variants" in manifest:
        raise Decline


# --- the answers (as agent.cli prints them) --------------------------------------------------


def _json_text(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, indent=2, allow_nan=False) + "\n"


def _plain_text(lines: list[str]) -> str:
    text = "".join(line + "\n" for line in lines)
    if not text.isascii() or "\x1b" in text:  # click.echo strips escapes; encodings vary
        raise Decline
    return text


def _status_text(state_dir: str, *, as_json: bool) -> str:
    identity = _read_json(os.path.join(state_dir, "device.json"))
    device_id, device_class = identity["device_id"], identity["device_class"]
    if not (isinstance(device_id, str) and isinstance(device_class, str)):
        raise Decline
    channels: dict[str, Any] = {}
    root = os.path.join(state_dir, "channels")
    for channel in _listdir(root):
        if not os.path.isfile(os.path.join(root, channel, "channel.json")):
            continue
        record = _record(state_dir, channel)
        _decline_variants(state_dir, channel, record)
        state = _channel_state(state_dir, channel, record)
        channels[channel] = {
            "active": {"version": record["releases"][0]["version"],
                       "sequence": record["releases"][0]["sequence"]},
            "releases": [{"version": r["version"], "sequence": r["sequence"]}
                         for r in record["releases"]],
            "state": state,
            "stage": STATE_PROBATION if state == STATE_PROBATION else STATE_ACTIVE,
            "candidate": None,  # a channel with candidate.json was declined
        }
    if as_json:
        return _json_text({"device_id": device_id, "device_class": device_class,
                           "channels": channels})
    lines = [f"device {device_id} (class {device_class})"]
    if not channels:
        lines.append("no channel installed yet")
    for channel, info in sorted(channels.items()):
        active = info["active"]
        kept = ", ".join(r["version"] for r in info["releases"])
        lines.append(f"{channel}: {active['version']} (sequence {active['sequence']}) "
                     f"{info['state']}; kept: {kept}")
    return _plain_text(lines)


def _history_text(state_dir: str, options: dict[str, Any]) -> str:
    limit_text = options.get("limit")
    limit = HISTORY_DEFAULT_LIMIT
    if limit_text is not None:
        if not (limit_text.isascii() and limit_text.isdigit() and limit_text[0] != "0"):
            raise Decline
        limit = int(limit_text)
    try:
        data = _read_json(os.path.join(state_dir, "history.json"))
    except Decline:
        data = None  # no history yet: the full command prints none either
    events = [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []
    channel = options.get("channel")
    if channel:
        events = [e for e in events if e.get("channel") == channel]
    events = events[-limit:]
    if options.get("json"):
        return _json_text(events)
    lines = []
    for e in events:
        words = [str(e[k]) for k in ("time", "event", "channel", "version") if e.get(k)]
        reason = f": {e['reason']}" if e.get("reason") else ""
        lines.append(" ".join(words) + reason)
    return _plain_text(lines)
