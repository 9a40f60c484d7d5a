"""Durable file writes: temp file in the same directory, write, fsync, rename, fsync the dir.

The one helper every part of Satchel calls when a write must survive a power cut.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def fsync_dir(path: Path) -> None:
    """fsync a directory so that renames and creations inside it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_CREATE_AT = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@contextlib.contextmanager
def atomic_writer_at(dir_fd: int, name: str, mode: int = 0o644) -> Iterator[BinaryIO]:
    """`atomic_writer` for the file `name` of the open directory `dir_fd` (openat style: no
    path is resolved, so no link outside it is followed; the temp file is never a link).

    On an exception the temp file is removed and `name` is untouched. Raises OSError.
    """
    tmp = f".{name}.{uuid.uuid4().hex[:12]}.tmp"
    fd = os.open(tmp, _CREATE_AT, mode, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.fsync(dir_fd)


@contextlib.contextmanager
def atomic_writer(path: Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces `path` atomically and durably when the block ends.

    On an exception the temp file is removed and `path` is untouched. Raises OSError.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data`, atomically and durably. Raises OSError."""
    with atomic_writer(path, mode) as f:
        f.write(data)
