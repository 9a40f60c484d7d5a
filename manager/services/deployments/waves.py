"""Waves: cumulative counts or percentages of a deployment's targets ("1,10%,50%,100%"),
resolved into how many devices each wave adds; the last must cover all."""

from __future__ import annotations

import math
import re

from satchel.manager.errors import InvalidRequestError

_WAVE_RE = re.compile(r"(\d+)|(\d+(?:\.\d+)?)%")


def parse_waves(spec: str) -> list[str]:
    """Split "1,10%,50%,100%" into wave specs. Raises InvalidRequestError."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise InvalidRequestError("waves must list at least one count or percentage")
    for p in parts:
        m = _WAVE_RE.fullmatch(p)
        if not m or (m.group(1) and int(p) < 1) or (m.group(2) and not 0 < float(p[:-1]) <= 100):
            raise InvalidRequestError(
                f"wave {p!r} is not a device count (>= 1) or a percentage (0-100%)"
            )
    return parts


def wave_sizes(specs: list[str], total: int) -> tuple[list[str], list[int]]:
    """Resolve cumulative wave specs against `total` devices into per-wave sizes.

    Waves that add no device are dropped. Raises InvalidRequestError when a wave shrinks or
    the last one does not cover every target.
    """
    kept: list[str] = []
    sizes: list[int] = []
    reached = 0
    for spec in specs:
        if spec.endswith("%"):
            cumulative = max(1, math.ceil(float(spec[:-1]) * total / 100 - 1e-9))
        else:
            cumulative = int(spec)
        cumulative = min(cumulative, total)
        if cumulative < reached:
            raise InvalidRequestError(
                f"waves are cumulative: {spec} is smaller than the wave before"
            )
        if cumulative > reached:
            kept.append(spec)
            sizes.append(cumulative - reached)
            reached = cumulative
    if reached < total:
        raise InvalidRequestError(
            f"the last wave ({specs[-1]}) covers {reached} of the {total} target devices; "
            "end with 100%"
        )
    return kept, sizes
