"""What the reliability suite measured, case by case, for `docs/RELIABILITY.md`.

Each test records one row through the `measured` fixture: what was tried, how many cases,
what came of it (refused with which error, or survived), and how much was lost. When the
environment names a file in FIGURES_ENV, the rows of the session are written there as JSON
at its end; `python -m tests.reliability.report` runs the suite that way and renders the doc.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FIGURES_ENV = "SATCHEL_RELIABILITY_FIGURES"  # path of the JSON file to write at session end
KNOWN_BUG = "known bug"  # the area of rows that record an expected failure


@dataclass(frozen=True)
class Row:
    """One line of the reliability table."""

    area: str  # "TUF attack, LAN", "fuzzing", "network fault", "manager"
    case: str  # what was tried, in a few words
    cases: int  # how many inputs, faults or requests
    result: str  # "refused: UnknownKeyError", "survived", ...
    lost: int  # events, bytes or releases lost: always 0 when the test passes
    test: str  # pytest node id that measured it
    figures: dict[str, Any] = field(default_factory=dict)  # other measured numbers


_ROWS: list[Row] = []


class Recorder:
    """Bound to one test: `row(...)` adds what it measured."""

    def __init__(self, nodeid: str) -> None:
        self.nodeid = nodeid

    def row(self, area: str, case: str, cases: int, result: str, lost: int = 0,
            **figures: Any) -> None:
        _ROWS.append(Row(area, case, cases, result, lost, self.nodeid, dict(figures)))


def known_bug(nodeid: str, reason: str) -> None:
    """A test marked xfail that failed as expected: a bug found and not fixed yet."""
    _ROWS.append(Row(KNOWN_BUG, reason, 1, "xfail", 0, nodeid))


def rows() -> list[Row]:
    return list(_ROWS)


def write_rows(path: Path) -> None:
    """Write every row recorded in this process as a JSON list (merging rows already in the
    file, so several pytest runs may add to one file)."""
    old: list[dict[str, Any]] = []
    if path.is_file():
        old = json.loads(path.read_text())
    path.write_text(json.dumps(old + [asdict(r) for r in _ROWS], indent=1, sort_keys=True))


def target_from_env() -> Path | None:
    value = os.environ.get(FIGURES_ENV)
    return Path(value) if value else None
