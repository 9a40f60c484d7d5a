"""The key that signs dashboard session cookies, kept in the data directory.

Made once, on first start, and shared by every server process of this data directory, so a
login works whichever worker answers and survives restarts. Deleting the file logs everyone
out. Several processes may start at once: the key is written to a temp file and linked into
place, which fails for all but the first, and every process then reads the file that won.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from satchel.bundles.durable import atomic_write_bytes, fsync_dir
from satchel.manager.web.errors import SessionKeyError


def load_or_create(path: Path, size: int) -> bytes:
    """The session key stored at `path`, made (mode 0600) if it does not exist yet.

    Raises SessionKeyError when the file cannot be read or written, or is too short.
    """
    try:
        if not path.exists():
            _create(path, secrets.token_bytes(size))
        key = path.read_bytes()
    except OSError as e:
        raise SessionKeyError(f"cannot read or write the session key {path}: {e}") from e
    if len(key) < 16:
        raise SessionKeyError(f"session key {path} is shorter than 16 bytes; delete it")
    return key


def _create(path: Path, key: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    atomic_write_bytes(candidate, key, mode=0o600)
    try:
        os.link(candidate, path)  # fails if another process got there first
        fsync_dir(path.parent)
    except FileExistsError:
        pass
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(candidate)
