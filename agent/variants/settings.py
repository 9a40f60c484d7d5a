"""The device's settings for variants (`[variants]` in the agent's settings file)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VariantSettings:
    power_supply_dir: str = "/sys/class/power_supply"  # where batteries and chargers are
    # read (each entry's type, capacity and status files); a missing folder: unknown battery
    thermal_dir: str = "/sys/class/thermal"  # thermal_zone*/temp (millidegrees Celsius) are
    # read there, the hottest one counts
    meminfo_file: str = "/proc/meminfo"  # MemAvailable is the free memory
    loadavg_file: str = "/proc/loadavg"  # the 1-minute load, divided by the CPU cores
    poll_s: float = 2.0  # seconds between readings of the device state
    policy: str = ""  # a JSON selection policy used instead of each release's, e.g.
    # '{"rules": [{"when": {"battery_below": 20}, "use": "lite"}], "dwell_s": 60}'
    # (docs/VARIANTS.md); empty: each release's own
    dwell_s: float | None = None  # seconds a variant is kept before another may be chosen;
    # None: the policy's
    live_window: int = 256  # latest inferences per variant whose latency is its live p95
    min_live_samples: int = 20  # inferences before the live p95 replaces the smoke test's in
    # choosing a variant for a request's max_latency_ms


DEFAULT_VARIANT_SETTINGS = VariantSettings()
