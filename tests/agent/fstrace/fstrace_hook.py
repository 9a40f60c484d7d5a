"""Test-only fsync tracer, for power-cut simulation (see tests/agent/test_agent_powercut.py).

Inside the traced process, every `os.fsync(fd)` of something under $SATCHEL_TEST_FSTRACE_ROOT
is followed by a record of what that fsync made durable:
  - a regular file: its full content at that moment (stored once per sha256 as a blob);
  - a directory: its entries at that moment (name -> inode identity and kind).
Inodes are identified by (st_ino, i_generation) so that a recycled inode number is not
mistaken for the file that had it before. The tracer only observes: it calls the real
fsync first and changes nothing the traced program sees.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import stat
import struct
import threading
from pathlib import Path
from typing import Any

FS_IOC_GETVERSION = 0x80087601  # _IOR('v', 1, long): the inode's generation (ext2/3/4)
_lock = threading.Lock()


def inode_identity(fd: int) -> str:
    """"INO:GEN" for an open file or directory (GEN 0 where the filesystem has none)."""
    try:
        gen = struct.unpack("q", fcntl.ioctl(fd, FS_IOC_GETVERSION, b"\0" * 8))[0]
    except OSError:
        gen = 0
    return f"{os.fstat(fd).st_ino}:{gen}"


def path_identity(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        return inode_identity(fd)
    finally:
        os.close(fd)


def dir_entries(path: str) -> dict[str, list[Any]]:
    """name -> [identity, kind, symlink target or None] for every entry of a directory."""
    out: dict[str, list[Any]] = {}
    for entry in os.scandir(path):
        if entry.is_symlink():
            out[entry.name] = [f"link:{entry.inode()}", "l", os.readlink(entry.path)]
        elif entry.is_dir(follow_symlinks=False):
            out[entry.name] = [path_identity(entry.path), "d", None]
        elif entry.is_file(follow_symlinks=False):
            out[entry.name] = [path_identity(entry.path), "f", None]
    return out


def install() -> None:
    log = Path(os.environ["SATCHEL_TEST_FSTRACE"])
    root = os.environ["SATCHEL_TEST_FSTRACE_ROOT"].rstrip("/") + "/"
    blobs = log.parent / "blobs"
    blobs.mkdir(exist_ok=True)
    real_fsync = os.fsync

    def traced_fsync(fd: Any) -> None:
        real_fsync(fd)
        fd = fd if isinstance(fd, int) else fd.fileno()
        path = os.readlink(f"/proc/self/fd/{fd}")
        if not (path + "/").startswith(root) or path.endswith(" (deleted)"):
            return
        mode = os.fstat(fd).st_mode
        record: dict[str, Any] = {"id": inode_identity(fd), "path": path}
        if stat.S_ISDIR(mode):
            record.update(kind="d", entries=dir_entries(path))
        else:
            with open(f"/proc/self/fd/{fd}", "rb") as f:
                data = f.read()
            digest = hashlib.sha256(data).hexdigest()
            blob = blobs / digest
            if not blob.exists():
                blob.write_bytes(data)
            record.update(kind="f", blob=digest)
        line = (json.dumps(record) + "\n").encode()
        with _lock:
            fd_log = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd_log, line)
            finally:
                os.close(fd_log)

    os.fsync = traced_fsync
