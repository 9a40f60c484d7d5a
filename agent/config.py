"""Every limit of the device agent in one place, with units."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATE_DIR_ENV = "SATCHEL_AGENT_STATE_DIR"
DEFAULT_STATE_DIR = Path("/var/lib/satchel-agent")
# Test-only: names an installer step at which the process kills itself with SIGKILL.
CRASH_AT_ENV = "SATCHEL_AGENT_CRASH_AT"
# Every numeric setting below can be set as SATCHEL_AGENT_<NAME IN CAPITALS>; POLL_ENV is a
# short name for poll_interval_s (tests and demos check in every half second with it).
CONFIG_ENV_PREFIX = "SATCHEL_AGENT_"
POLL_ENV = "SATCHEL_AGENT_POLL_S"


@dataclass(frozen=True)
class AgentConfig:
    keep_releases: int = 3  # good releases kept per channel, the active one included
    history_entries: int = 200  # events kept in history.json; older ones are dropped
    disk_margin_bytes: int = 64 * 1024 * 1024  # bytes that must stay free after unpacking
    lock_wait_s: float = 600.0  # seconds an install or rollback waits for the device lock
    lock_poll_s: float = 0.05  # seconds between attempts to take a busy lock
    smoke_isolation: str = "auto"  # "in-process", "child", or "auto" (a child process only
    # when a smoke test sets a memory budget, since only a fresh process measures it honestly)
    smoke_child_timeout_s: float = 600.0  # seconds a child-process smoke test may take
    smoke_threads: int | None = None  # runtime threads for smoke tests; None = runtime default
    # --- talking to the manager (agent.sync.client) ---
    connect_timeout_s: float = 5.0  # seconds to open a connection to the manager
    read_timeout_s: float = 30.0  # seconds the manager may stay silent during one call
    retry_attempts: int = 4  # tries of one enroll or trust-root call before giving up
    backoff_base_s: float = 1.0  # seconds before the first retry; doubles after each failure
    backoff_max_s: float = 300.0  # seconds: the longest wait between two tries
    backoff_jitter: float = 0.5  # fraction: each wait is spread at random by +/- this much
    poll_interval_s: float | None = None  # seconds between check-ins; None = what the
    # manager's answer says (it jitters it per device)
    min_poll_interval_s: float = 0.2  # seconds: a faster interval from the manager is raised
    max_poll_interval_s: float = 3600.0  # seconds: a slower interval from the manager is capped
    events_per_checkin: int = 1000  # events sent in one check-in or USB report (API limit)
    event_bytes_per_checkin: int = 2 * 1024 * 1024  # bytes of events in one check-in or
    # report (the manager takes 4 MiB bodies and reports)
    max_answer_bytes: int = 4 * 1024 * 1024  # bytes of a JSON answer or trust root accepted
    max_bundle_bytes: int = 8 * 1024**3  # bytes of one downloaded or copied bundle
    download_chunk_bytes: int = 256 * 1024  # bytes read from the network or a stick per step
    download_stalls: int = 8  # download attempts in a row that add no byte before giving up
    download_min_bytes_per_s: int = 16 * 1024  # bytes/s: a download slower than this on
    # average (after the grace time) is given up, so a server trickling bytes cannot hold
    # the agent (slow retrieval); it resumes at the next check-in
    download_grace_s: float = 60.0  # seconds a download may take whatever its size
    answer_deadline_s: float = 120.0  # seconds to read a whole JSON answer or trust root
    progress_log_s: float = 5.0  # seconds between progress lines of a download in the log
    # --- the durable event queue (agent.event_queue) ---
    event_queue_max_events: int = 10_000  # events kept while undelivered; oldest dropped first
    event_queue_max_bytes: int = 8 * 1024 * 1024  # bytes of the queue file
    # --- USB sticks (agent.sync.usb) ---
    usb_scan_interval_s: float = 2.0  # seconds between looks for a stick under the mount roots
    usb_scan_depth: int = 2  # directory levels under a mount root searched for plan.json
    usb_plans_remembered: int = 256  # plan ids kept as done, so a stick is processed once
    # --- the service (agent.service) ---
    watchdog_fallback_s: float = 1.0  # seconds between liveness checks without systemd
    health_sample_interval_s: float = 300.0  # seconds between `health` events per serving
    # release (the dashboard's charts); 288 a day, so a month offline fits the event queue


DEFAULT_CONFIG = AgentConfig()


def config_from_env(
    environ: Mapping[str, str] | None = None, base: AgentConfig = DEFAULT_CONFIG
) -> AgentConfig:
    """`base` with the numeric settings the environment gives (SATCHEL_AGENT_<NAME>, and
    SATCHEL_AGENT_POLL_S for poll_interval_s). Raises ValueError naming a bad value."""
    env = os.environ if environ is None else environ
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(AgentConfig):
        names = [CONFIG_ENV_PREFIX + f.name.upper()]
        if f.name == "poll_interval_s":
            names.append(POLL_ENV)
        given = next((n for n in names if env.get(n)), None)
        if given is None or f.type not in ("int", "float", "float | None", "int | None"):
            continue
        value = env[given]
        try:
            changes[f.name] = int(value) if f.type.startswith("int") else float(value)
        except ValueError:
            raise ValueError(f"{given}={value[:40]!r} is not a number") from None
    return dataclasses.replace(base, **changes)


def default_state_dir() -> Path:
    """The state directory from $SATCHEL_AGENT_STATE_DIR, else /var/lib/satchel-agent."""
    return Path(os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR)
