"""Waiting in tests for what a device or the manager does in the background."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest


def wait_for(condition: Callable[[], Any], timeout_s: float = 20.0, what: str = "",
             interval_s: float = 0.02) -> Any:
    """Poll `condition` every `interval_s` until it returns something true; fail after
    `timeout_s`. (Without the pause, a condition that reads what the device writes, such as
    its event queue under its lock, starves the device on a two-core machine.)"""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s} s: {what or condition}")
        time.sleep(interval_s)
