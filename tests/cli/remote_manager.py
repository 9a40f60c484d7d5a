"""A manager for the remote admin CLI's tests: `satchel serve` as a real process on 127.0.0.1
over its own data dir (a migrated SQLite database, a trust root, an admin token), and the
`satchel` command in-process against its database (`local`) or its API (`remote`)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from tests.cli.invoke import Cli
from tests.factory.outcome import Outcome

SATCHEL = Path(sys.executable).with_name("satchel")
STOP_TIMEOUT_S = 30


class RemoteManager:
    """`satchel serve` on a free port of 127.0.0.1; `stop()` ends it."""

    def __init__(self, root: Path, sqlite_template: Path, trust_root: Path) -> None:
        self.data_dir = root / "manager"
        self.data_dir.mkdir()
        shutil.copyfile(sqlite_template, self.data_dir / "satchel.db")
        self.cli = Cli(root)
        self.local("trust", "import", trust_root).ok()
        self.token = self.local("token", "create", "--admin").ok().stdout.splitlines()[-1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SATCHEL_")}
        self.proc = subprocess.Popen(
            [str(SATCHEL), "--data-dir", str(self.data_dir), "serve", "--port", "0",
             "--threads", "4"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        line = self.proc.stdout.readline()
        if "listening on " not in line:
            self.proc.kill()
            raise AssertionError(f"satchel serve did not start: {line!r} {self.proc.stderr.read()}")
        self.url = line.split("listening on ")[1].split()[0]
        for stream in (self.proc.stdout, self.proc.stderr):  # keep the pipes drained
            threading.Thread(target=stream.read, daemon=True).start()

    def local(self, *args: str | Path) -> Outcome:
        """`satchel --data-dir DIR ARGS...` on the manager's own database."""
        return self.cli.run("--data-dir", self.data_dir, *args)

    def remote(self, *args: str | Path, token: str | None = None,
               env: dict[str, str] | None = None) -> Outcome:
        """`satchel --url URL ARGS...` with the admin token in SATCHEL_TOKEN."""
        settings = {"SATCHEL_TOKEN": token or self.token, **(env or {})}
        return self.cli.run("--url", self.url, *args, env=settings)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
