"""The device's state, as selection policies read it: battery and charging, temperature, CPU
load and free memory, from Linux's sysfs and procfs.

Pluggable: anything with `read() -> Reading` is a source (tests and devices without these
files give their own); the files' places are settings, so a test points them at a folder it
writes. A missing or unreadable file is an unknown figure (None), never an error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from satchel.agent.variants.settings import DEFAULT_VARIANT_SETTINGS, VariantSettings
from satchel.bundles.variants import Reading

CHARGING_STATUSES = ("charging", "full")
EXTERNAL_SUPPLIES = ("mains", "usb", "usb_c", "usb_pd", "wireless")


class StateSource(Protocol):
    def read(self) -> Reading:
        """The state now; never raises."""
        ...


def _text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip()
    except (OSError, ValueError):
        return None


def _number(path: Path) -> float | None:
    text = _text(path)
    try:
        return float(text) if text else None
    except ValueError:
        return None


class SysfsState:
    """Reads `/sys/class/power_supply`, `/sys/class/thermal`, `/proc/meminfo` and
    `/proc/loadavg` (or the folders and files the settings name)."""

    def __init__(self, settings: VariantSettings = DEFAULT_VARIANT_SETTINGS,
                 cores: int | None = None) -> None:
        self.power_supply = Path(settings.power_supply_dir)
        self.thermal = Path(settings.thermal_dir)
        self.meminfo = Path(settings.meminfo_file)
        self.loadavg = Path(settings.loadavg_file)
        self.cores = cores or os.cpu_count() or 1

    def read(self) -> Reading:
        battery, charging = self._power()
        return Reading(battery_percent=battery, charging=charging,
                       temperature_c=self._temperature(), load=self._load(),
                       memory_free_mb=self._memory())

    def _supplies(self) -> list[Path]:
        try:
            return sorted(p for p in self.power_supply.iterdir() if p.is_dir())
        except OSError:
            return []

    def _power(self) -> tuple[float | None, bool | None]:
        """The lowest battery's capacity, and whether anything charges it."""
        capacities: list[float] = []
        charging: bool | None = None
        for supply in self._supplies():
            kind = (_text(supply / "type") or "").lower()
            if kind == "battery":
                capacity = _number(supply / "capacity")
                if capacity is not None:
                    capacities.append(min(100.0, max(0.0, capacity)))
                status = (_text(supply / "status") or "").lower()
                if status:
                    charging = bool(charging) or status in CHARGING_STATUSES
            elif kind in EXTERNAL_SUPPLIES:
                online = _number(supply / "online")
                if online is not None:
                    charging = bool(charging) or online > 0
        return (min(capacities) if capacities else None), charging

    def _temperature(self) -> float | None:
        try:
            zones = sorted(self.thermal.glob("thermal_zone*"))
        except OSError:
            return None
        temps = [t / 1000.0 for z in zones if (t := _number(z / "temp")) is not None]
        return max(temps) if temps else None

    def _load(self) -> float | None:
        text = _text(self.loadavg)
        try:
            return float(text.split()[0]) / self.cores if text else None
        except (ValueError, IndexError):
            return None

    def _memory(self) -> float | None:
        text = _text(self.meminfo)
        for line in (text or "").splitlines():
            if line.startswith("MemAvailable:"):
                try:
                    return int(line.split()[1]) / 1024.0
                except (ValueError, IndexError):
                    return None
        return None


class FixedState:
    """A source that always reads what it is given (devices without sysfs, tests)."""

    def __init__(self, reading: Reading | None = None) -> None:
        self.reading = reading or Reading()

    def read(self) -> Reading:
        return self.reading
