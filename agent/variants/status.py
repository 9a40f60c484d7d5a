"""What a device says of a release's variants: their state after the install's smoke tests
(`report.json`), what the server disabled since and which one answers now (`variants.json`,
beside it in the release directory, written by the server at each switch).

`satchel-agent status --json` and the check-ins carry it under each channel:
`"variants": {NAME: {"state": "ready"|"dropped"|"disabled", "reason", "p95_ms"}}` and
`"variant": NAME` (with `"variant_reason"`, and `"variant_seconds"`: time spent in each).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from satchel.agent.variants.install import DISABLED, READY
from satchel.bundles.durable import atomic_write_bytes

log = logging.getLogger(__name__)

RUNTIME_FILE = "variants.json"
REPORT_FILE = "report.json"


def _read(path: Path) -> dict[str, Any]:
    """The JSON object at `path`; {} when missing or damaged (status never fails on it)."""
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning("ignoring %s: %s", path, e)
        return {}
    return doc if isinstance(doc, dict) else {}


def read_runtime(directory: Path) -> dict[str, Any]:
    """The server's record of a release's variants: {"current", "reason", "disabled":
    {name: reason}, "seconds": {name: seconds}}; {} before any."""
    return _read(Path(directory) / RUNTIME_FILE)


def write_runtime(directory: Path, doc: dict[str, Any]) -> None:
    """Durably replace the release's `variants.json`. Raises OSError."""
    text = json.dumps(doc, sort_keys=True, indent=2, allow_nan=False) + "\n"
    atomic_write_bytes(Path(directory) / RUNTIME_FILE, text.encode("utf-8"))


def installed_states(directory: Path) -> dict[str, Any]:
    """The variants' states as the install's smoke tests left them; {} for a release
    without variants."""
    variants = _read(Path(directory) / REPORT_FILE).get("variants")
    return dict(variants) if isinstance(variants, dict) else {}


def default_of(states: dict[str, Any]) -> str | None:
    for name, entry in states.items():
        if isinstance(entry, dict) and entry.get("default"):
            return name
    return next(iter(states), None)


def variant_status(directory: Path) -> dict[str, Any]:
    """The channel's `variants`/`variant` fields of `status --json` for the release in
    `directory`; {} when it has no variants."""
    states = installed_states(directory)
    if not states:
        return {}
    runtime = read_runtime(directory)
    found = runtime.get("disabled")
    disabled: dict[str, Any] = found if isinstance(found, dict) else {}
    variants: dict[str, Any] = {}
    for name, entry in states.items():
        entry = dict(entry) if isinstance(entry, dict) else {}
        state, reason = entry.get("state", READY), entry.get("reason", "")
        if state == READY and name in disabled:
            state, reason = DISABLED, str(disabled[name])
        variants[name] = {"state": state, "reason": reason, "p95_ms": entry.get("p95_ms")}
    current = runtime.get("current") or default_of(states)
    seconds = runtime.get("seconds")
    seconds = dict(seconds) if isinstance(seconds, dict) else {}
    at = runtime.get("at")
    if current in seconds and isinstance(at, int | float):  # and since the server wrote them
        seconds[current] = round(seconds[current] + max(0.0, time.time() - at), 3)
    return {
        "variants": variants,
        "variant": current,
        "variant_reason": runtime.get("reason") or "default variant",
        "variant_seconds": seconds,
    }
