"""The device lock: installs, rollbacks and recoveries run one at a time, across processes.

`fcntl.flock` on STATE/lock, exclusive. The kernel drops it when its holder dies, so a
killed installer never leaves the device locked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from satchel.agent.errors import LockBusyError


def _open(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _try(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def device_lock(path: Path, wait_s: float, poll_s: float) -> Iterator[None]:
    """Hold the device lock for the block, waiting up to `wait_s` seconds for it.

    Raises LockBusyError when another holder keeps it longer, OSError if it cannot be opened.
    """
    fd = _open(path)
    try:
        deadline = time.monotonic() + wait_s
        while not _try(fd):
            if time.monotonic() >= deadline:
                raise LockBusyError(
                    f"another install or rollback is still running on this device "
                    f"(waited {wait_s:g} s); try again when it is done"
                )
            time.sleep(poll_s)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def try_device_lock(path: Path) -> Iterator[bool]:
    """Take the device lock if it is free; yield whether it was taken. A reader without
    write access to the state directory (a technician's `status`) is not given it either.
    Raises OSError other than a permission or read-only refusal."""
    try:
        fd = _open(path)
    except OSError as e:
        if isinstance(e, PermissionError) or e.errno == errno.EROFS:
            yield False
            return
        raise
    try:
        yield _try(fd)
    finally:
        os.close(fd)
