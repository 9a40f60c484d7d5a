"""What a catalogue family writes, for every format: its shipped models by variant."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

GOOD = "good"  # the variant that must build and activate; every other one must be refused


@dataclass(frozen=True)
class ShippedModel:
    """A model file to ship, its variant name and one line on what it is."""

    variant: str
    path: Path
    note: str
