"""Loose dotted version comparison for agent and runtime versions ("1.16.3", "2.3.0rc1")."""

from __future__ import annotations

import re

_NUM = re.compile(r"\d+")


def version_key(version: str) -> tuple[int, ...]:
    """The leading numeric components of `version`: "1.16.3rc1" -> (1, 16, 3)."""
    parts: list[int] = []
    for piece in version.split("."):
        m = _NUM.match(piece)
        if not m:
            break
        parts.append(int(m.group()))
        if m.end() != len(piece):
            break
    return tuple(parts)


def at_least(version: str, minimum: str) -> bool:
    """True if `version` >= `minimum`, comparing numeric components, missing ones as 0."""
    a, b = version_key(version), version_key(minimum)
    width = max(len(a), len(b))
    return a + (0,) * (width - len(a)) >= b + (0,) * (width - len(b))
