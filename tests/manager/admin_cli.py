"""The manager's admin CLI in-process through click, against a test's configuration, with the
exit-code contract of SPEC.md checked."""

from __future__ import annotations

from click.testing import CliRunner, Result

from satchel.manager.cli import main
from satchel.manager.config import ManagerConfig


class Cli:
    """`satchel` in-process over a configuration's data dir and database."""

    def __init__(self, config: ManagerConfig) -> None:
        self.config = config
        self.runner = CliRunner()

    def run(self, *args: str, input: str | None = None) -> Result:
        env = {"SATCHEL_DATABASE_URL": self.config.database_url, "SATCHEL_CONFIG": ""}
        return self.runner.invoke(
            main, ["--data-dir", str(self.config.data_dir), *args], env=env, input=input
        )

    def ok(self, *args: str, input: str | None = None) -> str:
        r = self.run(*args, input=input)
        assert r.exit_code == 0, (args, r.output, r.exception)
        return r.stdout

    def refused(self, *args: str, input: str | None = None) -> str:
        r = self.run(*args, input=input)
        assert r.exit_code == 1, (args, r.output)
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
        assert "Traceback" not in r.output
        return lines[0]
