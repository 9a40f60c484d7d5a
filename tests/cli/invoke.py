"""The `satchel` admin command in tests: in-process through click's CliRunner (fast, for the
bulk of the cases), or the installed console script as a real subprocess, for the handful of
cases that prove the script, its exit codes and its stderr. Both return an `Outcome` whose
helpers check the exit-code contract of SPEC.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path

from click.testing import CliRunner

from satchel.manager.cli import main
from tests.factory.outcome import Outcome

SATCHEL_SCRIPT = Path(sys.executable).with_name("satchel")
SPAWN_TIMEOUT_S = 120  # a hung subprocess fails the test instead of the whole run


def _clean_environ() -> dict[str, str]:
    """The environment without any SATCHEL_* setting of the developer's shell."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SATCHEL_")}


class Cli:
    """Runs `satchel` in-process (`run`) or as the installed console script (`spawn`)."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd

    def run(self, *args: str | Path, env: Mapping[str, str] | None = None) -> Outcome:
        """Invoke the click command in-process; stdin is empty and not a terminal."""
        unset: dict[str, str | None] = {k: None for k in os.environ if k.startswith("SATCHEL_")}
        result = CliRunner(env={**unset, **(env or {})}).invoke(
            main, [str(a) for a in args], catch_exceptions=True
        )
        stderr = result.stderr
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            # CliRunner swallows unexpected exceptions: show them as the real script would.
            stderr += "".join(traceback.format_exception(result.exception))
        return Outcome(result.exit_code, result.stdout, stderr)

    def spawn(self, *args: str | Path, env: Mapping[str, str] | None = None) -> Outcome:
        """Run the installed `satchel` console script with stdin closed (not a terminal)."""
        proc = subprocess.run(
            [str(SATCHEL_SCRIPT), *(str(a) for a in args)],
            cwd=self.cwd,
            env={**_clean_environ(), **(env or {})},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=SPAWN_TIMEOUT_S,
            check=False,
        )
        return Outcome(proc.returncode, proc.stdout, proc.stderr)
