"""A private, throwaway PostgreSQL cluster: `initdb` and `pg_ctl` on a Unix socket in a temp
dir (as the `postgres` user when we are root), stopped and removed on exit.

The one home of this bootstrap: the manager's test fixtures start their server here, and so
does `bench/bench_checkin.py`, which imports it from tests/ (both run from the repository root).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

DEBIAN_INITDB = "/usr/lib/postgresql/*/bin/initdb"  # one per installed major version
COMMAND_TIMEOUT_S = 120  # an initdb or a start that takes longer has hung
STOP_TIMEOUT_S = 60

# Settings for data nobody keeps: no waiting on the disk.
NO_DURABILITY = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


@dataclass(frozen=True)
class Cluster:
    """A running private cluster."""

    url: str  # SQLAlchemy URL of its `postgres` database, as the `postgres` superuser
    directory: Path  # its Unix socket, server log and data directory (`data/`)

    @property
    def data(self) -> Path:
        return self.directory / "data"

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])


def find_bindir() -> Path | None:
    """Where `initdb` and `pg_ctl` are: Debian's newest version, else the ones on PATH; None
    when PostgreSQL is not installed."""
    found = sorted(glob.glob(DEBIAN_INITDB))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run `cmd` as the `postgres` user when we are root."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextlib.contextmanager
def private_cluster(
    bindir: Path, settings: Mapping[str, str], *, prefix: str = "satchel-pg-"
) -> Iterator[Cluster]:
    """Start a cluster whose server runs with `settings` (postgresql.conf names and values),
    listening on a Unix socket only; on exit stop it and delete everything it wrote.

    Raises subprocess.CalledProcessError when initdb or pg_ctl fails, and
    subprocess.TimeoutExpired when either hangs.
    """
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        shutil.chown(tmp, "postgres", "postgres")
    cluster = Cluster(f"postgresql+psycopg://postgres@/postgres?host={tmp}", tmp)
    initdb = [str(bindir / "initdb"), "-D", str(cluster.data), "-A", "trust", "-U", "postgres",
              "--no-sync", "-E", "UTF8"]
    options = " ".join(
        [f"-k {tmp}", "-c listen_addresses=''", *(f"-c {k}={v}" for k, v in settings.items())]
    )
    start = [str(bindir / "pg_ctl"), "-D", str(cluster.data), "-l", str(tmp / "server.log"),
             "-o", options, "-w", "start"]
    try:
        for cmd in (initdb, start):
            subprocess.run(
                _as_postgres(cmd), check=True, capture_output=True, timeout=COMMAND_TIMEOUT_S
            )
        yield cluster
    finally:
        # immediate: the data is thrown away, nothing needs a clean shutdown
        subprocess.run(
            _as_postgres([str(bindir / "pg_ctl"), "-D", str(cluster.data), "-m", "immediate",
                          "stop"]),
            capture_output=True,
            timeout=STOP_TIMEOUT_S,
        )
        shutil.rmtree(tmp, ignore_errors=True)
