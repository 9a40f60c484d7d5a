"""Counters shared by every worker process of `satchel serve`: prometheus_client's
multiprocess mode.

`prepare()` runs in `satchel serve` before any worker starts and before prometheus_client is
imported (it picks its storage at import time): it points $PROMETHEUS_MULTIPROC_DIR at an
empty directory, a fresh one under the temporary directory unless the operator named one
(then its old files are removed). Workers inherit the variable; each writes its counters to
its own files there, and a scrape adds up every file, those of workers that died included,
so a counter never goes back when a worker is replaced. Standard library only: `satchel
serve` imports this in the parent, which serves nothing.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import MutableMapping
from pathlib import Path

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
SERVE_PID_ENV = "SATCHEL_SERVE_PID"  # the `satchel serve` process, parent of the workers


def prepare(environ: MutableMapping[str, str] | None = None) -> Path:
    """An empty multiprocess directory for this run, named in `environ` (os.environ) with
    the serving process's pid. Raises OSError when the directory cannot be made or emptied."""
    env = os.environ if environ is None else environ
    given = env.get(MULTIPROC_DIR_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):  # a previous run's counters must not add up with ours
            stale.unlink()
    else:
        path = Path(tempfile.mkdtemp(prefix="satchel-metrics-"))
        atexit.register(_remove, path, os.getpid())
        env[MULTIPROC_DIR_ENV] = str(path)
    env[SERVE_PID_ENV] = str(os.getpid())
    return path


def _remove(path: Path, owner: int) -> None:
    if os.getpid() == owner:  # not a forked worker leaving
        shutil.rmtree(path, ignore_errors=True)


def multiproc_dir(environ: MutableMapping[str, str] | None = None) -> Path | None:
    """The multiprocess directory of this process, or None when it counts alone."""
    env = os.environ if environ is None else environ
    given = env.get(MULTIPROC_DIR_ENV)
    return Path(given) if given else None
