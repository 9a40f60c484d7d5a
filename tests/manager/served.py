"""`satchel serve` as a real process on a data dir of its own, on a database given by URL:
what the multi-manager tests start twice (tests/manager/test_concurrency_two_managers.py) and
the retention test once."""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.e2e.commands import SATCHEL, satchel_env


class Served:
    """`satchel serve` on a data dir of its own, on the shared database."""

    def __init__(self, data_dir: Path, database_url: str,
                 env: dict[str, str] | None = None) -> None:
        data_dir.mkdir()
        self.data_dir = data_dir
        env = satchel_env({"SATCHEL_DATABASE_URL": database_url,
                           "SATCHEL_LOG_REQUESTS": "false", "SATCHEL_THREADS": "8",
                           **(env or {})})
        self.log = open(data_dir / "serve.log", "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [str(SATCHEL), "--data-dir", str(data_dir), "serve", "--port", "0"],
            stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert "listening on" in line, f"satchel serve did not start: {line!r}"
        port = int(line.split("listening on ")[1].split()[0].rsplit(":", 1)[1])
        self.url = f"http://127.0.0.1:{port}"
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@contextmanager
def two_managers(database_url: str, tmp_path: Path) -> Iterator[tuple[Served, Served]]:
    """Managers A and B on data dirs of their own and one database; both stopped on leaving,
    then neither may have logged a traceback."""
    a = Served(tmp_path / "manager-a", database_url)
    try:
        b = Served(tmp_path / "manager-b", database_url)
    except BaseException:
        a.stop()
        raise
    try:
        yield a, b
    finally:
        for m in (a, b):
            m.stop()
    for m in (a, b):
        assert "Traceback" not in (m.data_dir / "serve.log").read_text()
