"""Every limit of the device agent in one place, with units."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

STATE_DIR_ENV = "SATCHEL_AGENT_STATE_DIR"
DEFAULT_STATE_DIR = Path("/var/lib/satchel-agent")
# Test-only: names an installer step at which the process kills itself with SIGKILL.
CRASH_AT_ENV = "SATCHEL_AGENT_CRASH_AT"


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


DEFAULT_CONFIG = AgentConfig()


def default_state_dir() -> Path:
    """The state directory from $SATCHEL_AGENT_STATE_DIR, else /var/lib/satchel-agent."""
    return Path(os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR)
