"""Receiving an upload: copied into a local incoming directory while its sha256 is computed,
so the caller can verify the bundle before any store makes it visible. A write the disk
refuses (full, read-only, not a directory) is a StoreWriteError naming the directory, told
apart from a failure to read the upload, and leaves no file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from satchel.manager.errors import RequestTooLargeError, StoreWriteError

SUFFIX = ".satchel"


@dataclass(frozen=True)
class Spooled:
    """An upload received into the incoming directory, not yet part of the store."""

    path: Path
    sha256: str
    size: int  # bytes


@contextlib.contextmanager
def writing(where: object) -> Iterator[None]:
    """The store's own writes: an OSError inside becomes a StoreWriteError naming `where`."""
    try:
        yield
    except OSError as e:
        reason = e.strerror or str(e)
        raise StoreWriteError(f"cannot write to the bundle store {where}: {reason}") from e


def receive(source: BinaryIO, max_bytes: int, incoming: Path, chunk_bytes: int,
            where: object) -> Spooled:
    """Copy `source` into `incoming`, hashing it on the way.

    Raises RequestTooLargeError past `max_bytes`, StoreWriteError (naming `where`) when the
    directory cannot be written, OSError when reading `source` fails; the partial file is
    removed then.
    """
    with writing(where):
        incoming.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=incoming)
    sha = hashlib.sha256()
    size = 0
    try:
        while chunk := source.read(chunk_bytes):
            size += len(chunk)
            if size > max_bytes:
                raise RequestTooLargeError(
                    f"bundle is larger than the {max_bytes} byte upload limit"
                )
            sha.update(chunk)
            with writing(where):
                _write_all(fd, chunk)
        with writing(where):
            os.fsync(fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    finally:
        os.close(fd)
    return Spooled(Path(tmp), sha.hexdigest(), size)


def discard(spooled: Spooled) -> None:
    with contextlib.suppress(FileNotFoundError):
        spooled.path.unlink()


def _write_all(fd: int, data: bytes) -> None:
    """Write all of `data` (unbuffered, so a refused write surfaces here). Raises OSError."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
