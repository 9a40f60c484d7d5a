"""The code is one import namespace, `satchel`: every import of the project's own packages is
written `satchel.bundles`, `satchel.agent` or `satchel.manager` (what the wheel holds is
checked by tests/test_wheel.py)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OWN = {"bundles", "agent", "manager", "migrations"}
SOURCES = ["bundles", "agent", "manager", "migrations", "tests", "bench"]


def _old_style_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names
                  if n.split(".")[0] in OWN]
    return found


def test_every_import_of_the_project_goes_through_the_satchel_namespace() -> None:
    files = [p for folder in SOURCES for p in (ROOT / folder).rglob("*.py")]
    offenders = [line for p in files for line in _old_style_imports(p)]
    assert files and offenders == []
