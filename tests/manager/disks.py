"""Real full disks for tests: a small tmpfs mounted for a block (root only), filled to its last
byte."""

from __future__ import annotations

import contextlib
import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(where: Path, size: str, owner: str | None = None) -> Iterator[Path]:
    """A small tmpfs mounted at `where` for the block; skips the test where mounting is not
    possible (not root, no mount privilege)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    options = f"size={size},mode=0700"
    if owner is not None:
        user = pwd.getpwnam(owner)
        options += f",uid={user.pw_uid},gid={user.pw_gid}"
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def fill(directory: Path) -> Path:
    """Write a file into `directory` until its filesystem has no byte left; return it."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        for block in (1 << 20, 4096, 1):  # bytes: big writes first, then what remains
            with contextlib.suppress(OSError):
                while f.write(b"\0" * block):
                    pass
    assert os.statvfs(directory).f_bavail == 0
    return filler
