"""Crash-loop detection: a service that keeps dying after an activation rolls back at start-up.

The service records every start, and every clean stop, in `STATE/service-starts.json`
(durably, the last `crash_history` runs). A start that follows a run which did not stop
cleanly is a crash restart. `check_crash_loop`, called by `satchel-agent run` before it
serves, rolls back every channel whose release is on probation and has seen
`max_crash_restarts` (its manifest's health policy) crash restarts since its activation.
A crash cannot be pinned on one channel, so every channel on probation that crossed its limit
goes back; then the count starts again.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from satchel.agent.health.store import HEALTH_DIR, HealthStore
from satchel.agent.server.config import DEFAULT_CONFIG, ServerConfig
from satchel.agent.server.events import Event, EventSink
from satchel.agent.server.monitor import RollbackFn
from satchel.agent.server.registry import StateView, epoch_seconds
from satchel.bundles.durable import atomic_write_bytes
from satchel.bundles.events import ROLLBACK_FAILED, ROLLED_BACK
from satchel.bundles.health import HealthFigures, judge

log = logging.getLogger(__name__)

STARTS_FILE = "service-starts.json"
_FORMAT = 1


def _read_runs(state_dir: Path) -> list[dict[str, Any]]:
    try:
        doc = json.loads((state_dir / STARTS_FILE).read_bytes())
        runs = doc["runs"]
        if not isinstance(runs, list):
            raise ValueError("runs is not a list")
        return [
            {"start": float(r["start"]), "clean": bool(r["clean"])}
            for r in runs
            if isinstance(r, dict)
        ]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("%s is unreadable and starts over: %s", STARTS_FILE, e)
        return []


def _write_runs(state_dir: Path, runs: list[dict[str, Any]], keep: int) -> None:
    doc = {"format": _FORMAT, "runs": runs[-keep:]}
    atomic_write_bytes(state_dir / STARTS_FILE, json.dumps(doc, sort_keys=True).encode())


def record_start(state_dir: Path, now: float, config: ServerConfig = DEFAULT_CONFIG) -> None:
    """Record that the service starts now. Raises OSError when it cannot be written."""
    runs = _read_runs(state_dir)
    runs.append({"start": now, "clean": False})
    _write_runs(state_dir, runs, config.crash_history)


def record_clean_stop(state_dir: Path, config: ServerConfig = DEFAULT_CONFIG) -> None:
    """Record that the current run stops cleanly (not a crash). Never raises."""
    try:
        runs = _read_runs(state_dir)
        if runs and not runs[-1]["clean"]:
            runs[-1]["clean"] = True
            _write_runs(state_dir, runs, config.crash_history)
    except OSError as e:
        log.warning("could not record the clean stop: %s", e)


def crash_restarts_since(runs: list[dict[str, Any]], since: float) -> int:
    """Starts at or after `since` that follow a run which did not stop cleanly."""
    return sum(
        1
        for before, run in zip(runs, runs[1:], strict=False)
        if run["start"] >= since and not before["clean"]
    )


def check_crash_loop(
    state_dir: Path,
    now: datetime | float | None = None,
    *,
    state: StateView | None = None,
    rollback: RollbackFn | None = None,
    events: EventSink | None = None,
    config: ServerConfig = DEFAULT_CONFIG,
) -> list[str]:
    """Record this start of the service, then roll back each channel whose release on
    probation has crash-looped. Returns the rollback reasons (empty when none).

    `state` and `rollback` default to `agent.state.DeviceState(state_dir)` and
    `agent.install.installer.rollback`. Raises OSError when the start cannot be recorded; a failed
    rollback is logged and reported as an event, not raised.
    """
    state_dir = Path(state_dir)
    now_s = time.time() if now is None else epoch_seconds(now)
    if state is None:
        from satchel.agent.state import DeviceState

        state = DeviceState(state_dir)
    if rollback is None:
        from satchel.agent.install.installer import rollback as installer_rollback

        rollback = installer_rollback
    record_start(state_dir, now_s, config)
    runs = _read_runs(state_dir)
    history = HealthStore(state_dir / HEALTH_DIR)
    reasons = []
    for channel in sorted(state.channels()):
        release = state.active_release(channel)
        if release is None:
            continue
        policy = release.manifest.health_policy
        activated = epoch_seconds(release.activated_at)
        if now_s >= activated + policy.probation_s:
            continue
        highest = history.highest_sequence(channel)
        if highest is not None and release.sequence < highest:
            continue  # restored by a rollback: not judged again
        restarts = crash_restarts_since(runs, activated)
        reason = judge(policy, HealthFigures(crash_restarts=restarts)).breach
        if reason is None:
            continue
        try:
            restored = rollback(
                state_dir, channel, reason, expected_sequence=release.sequence
            )
        except Exception as e:  # the installer's errors: report, serve what there is
            log.error("%s: crash-loop rollback failed: %s", channel, e)
            if events is not None:
                events.emit(Event(
                    ROLLBACK_FAILED, channel, release.version, release.sequence,
                    f"{reason}; rollback failed: {e}", now_s,
                ))
            continue
        log.warning("%s %s: %s; rolled back to %s", channel, release.version, reason,
                    restored.version)
        reasons.append(reason)
        if events is not None:
            events.emit(Event(
                ROLLED_BACK, channel, release.version, release.sequence, reason, now_s,
                {"to_version": restored.version, "to_sequence": restored.sequence,
                 "crash_restarts": restarts},
            ))
    if reasons:
        _write_runs(state_dir, [{"start": now_s, "clean": False}], config.crash_history)
    return reasons
