"""Satchel's commands run for real in the end-to-end tests, with the developer's SATCHEL_*
settings cleared, and waiting for what a running site does."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

BIN = Path(sys.executable).parent
SATCHEL, AGENT = BIN / "satchel", BIN / "satchel-agent"
POLL_S = "0.5"  # seconds between check-ins, both sides
AGENT_ENV = {"SATCHEL_AGENT_POLL_S": POLL_S, "SATCHEL_AGENT_BACKOFF_BASE_S": "0.2",
             "SATCHEL_AGENT_BACKOFF_MAX_S": "1", "SATCHEL_AGENT_CONNECT_TIMEOUT_S": "2",
             "SATCHEL_AGENT_READ_TIMEOUT_S": "10"}


def satchel_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without the developer's SATCHEL_* settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SATCHEL_")}
    env.update(extra or {})
    return env


def run(*args: str | Path, check: bool = True, env: dict[str, str] | None = None,
        ) -> subprocess.CompletedProcess[str]:
    """Run a command for real; with `check`, fail the test (showing stderr) unless it
    exits 0."""
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                          timeout=180, check=False, env=satchel_env(env))
    if check:
        assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str,
             every_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s} s: {what}")
        time.sleep(every_s)
