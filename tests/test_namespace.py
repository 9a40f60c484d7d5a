"""The code is one import namespace, `satchel`: every import of the project's own packages is
written `satchel.bundles`, `satchel.agent` or `satchel.manager`, and the wheel puts nothing
else at the top of site-packages."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

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


@pytest.mark.slow
def test_the_wheel_holds_only_the_satchel_namespace_with_its_migrations(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, timeout=600)
    (wheel,) = tmp_path.glob("satchel-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"satchel"}
    assert not any(n.startswith("satchel/__init__") for n in names)  # a namespace package
    for needed in ("satchel/bundles/manifest.py", "satchel/agent/cli.py",
                   "satchel/manager/app.py", "satchel/manager/templates/base.html",
                   "satchel/migrations/env.py", "satchel/migrations/script.py.mako",
                   "satchel/agent/systemd/satchel-agent.service"):
        assert needed in names
    assert any(n.startswith("satchel/migrations/versions/0001_") for n in names)
