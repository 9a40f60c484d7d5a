"""Exponential backoff with jitter, for the check-in loop and the LAN client's retries.

Pure: no HTTP client is imported, so a device that never talks to a manager (a USB-only
site) never loads one.
"""

from __future__ import annotations

import random

from satchel.agent.config import DEFAULT_CONFIG, AgentConfig


class Backoff:
    """Exponential backoff with jitter: base, 2 x base, 4 x base ... capped at `max_s`,
    each spread at random by +/- `jitter` so a fleet that lost its manager does not come
    back in step."""

    def __init__(self, config: AgentConfig = DEFAULT_CONFIG,
                 rng: random.Random | None = None) -> None:
        self._config = config
        self._rng = rng or random.Random()
        self.failures = 0

    def next_delay(self) -> float:
        """Seconds to wait after one more failure."""
        c = self._config
        delay = min(c.backoff_max_s, c.backoff_base_s * 2 ** min(self.failures, 30))
        self.failures += 1
        return max(0.0, delay * (1 + self._rng.uniform(-c.backoff_jitter, c.backoff_jitter)))

    def reset(self) -> None:
        self.failures = 0
