"""What a `satchel` or `satchel-agent` invocation did, and the CLI contract it must keep."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Outcome:
    """What a `satchel` or `satchel-agent` invocation did: exit code and both output streams."""

    exit_code: int
    stdout: str
    stderr: str

    def ok(self) -> Outcome:
        """Assert success: exit 0, no traceback. Returns self for chaining."""
        assert self.exit_code == 0, f"exit {self.exit_code}\n{self.stdout}\n{self.stderr}"
        assert "Traceback" not in self.stdout + self.stderr
        return self

    def refusal(self) -> str:
        """Assert a refusal: exit 1, one `error: ` line on stderr, no traceback. Returns it."""
        assert "Traceback" not in self.stdout + self.stderr, self.stderr
        assert self.exit_code == 1, f"exit {self.exit_code}\n{self.stdout}\n{self.stderr}"
        lines = self.stderr.splitlines()
        assert len(lines) == 1, f"stderr is not one line: {self.stderr!r}"
        assert lines[0].startswith("error: "), lines[0]
        return lines[0]

    def usage_error(self) -> str:
        """Assert a usage error: exit 2, click's message on stderr, no traceback."""
        assert "Traceback" not in self.stdout + self.stderr, self.stderr
        assert self.exit_code == 2, f"exit {self.exit_code}\n{self.stdout}\n{self.stderr}"
        return self.stderr

    def json(self) -> Any:
        """stdout parsed as JSON (the command must have succeeded)."""
        return json.loads(self.ok().stdout)
