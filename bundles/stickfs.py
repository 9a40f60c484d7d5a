"""Files on a USB stick, reached without ever following a link.

Whoever had the stick in hand may have put a symbolic link anywhere in it (`reports/` pointing
at /var/lib/satchel-agent, a bundle pointing at /dev/zero). So every path is walked from the
stick's root one component at a time, each opened relative to its parent's descriptor with
O_NOFOLLOW (openat style): nothing read from or written to a stick leaves it. The rule is
simply "no links", even one that points inside the stick, and a refusal names the path.

Writes go through `bundles.durable.atomic_writer_at`: a temp file created with O_CREAT | O_EXCL |
O_NOFOLLOW in the target's directory, written, fsynced, renamed within that directory, and
the directory fsynced.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import BinaryIO

from satchel.bundles.durable import atomic_writer_at
from satchel.bundles.errors import StickLinkError

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO for reading would wait for a writer that may never come
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True)
class Entry:
    """One entry of a directory on the stick (never a link: a listing refuses those)."""

    name: str
    is_dir: bool
    is_file: bool  # a regular file


def _parts(rel: str) -> list[str]:
    parts = list(PurePosixPath(rel).parts)
    if not parts or any(p in ("/", ".", "..") for p in parts):
        raise ValueError(f"{rel!r} is not a path inside a stick")
    return parts


def _is_link(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


class StickDir:
    """An open stick (or any directory laid out as one): read, list and write paths relative
    to it, never through a link. Use as a context manager. Raises OSError when `path` is not
    a directory that can be opened."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # the stick itself is where the technician or admin said it is; below it, no links
        self._fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> StickDir:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @staticmethod
    def link_error(rel: str) -> StickLinkError:
        return StickLinkError(f"stick path {rel} is a link; refusing to follow it out of the "
                              "stick")

    # --- walking ------------------------------------------------------------------------

    def _open_at(self, dir_fd: int, name: str, flags: int, rel: str) -> int:
        try:
            return os.open(name, flags, 0o644, dir_fd=dir_fd)
        except OSError as e:
            # O_NOFOLLOW on a link: ELOOP, or ENOTDIR with O_DIRECTORY
            if e.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(dir_fd, name):
                raise self.link_error(rel) from None
            raise

    @contextlib.contextmanager
    def _directory(self, parts: Sequence[str], create: bool = False) -> Iterator[int]:
        """The descriptor of the directory `parts` below the root, made (each new one durable
        in its parent) when `create`. Raises StickLinkError, OSError."""
        fd = os.dup(self._fd)
        try:
            for i, name in enumerate(parts):
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, 0o755, dir_fd=fd)
                        os.fsync(fd)
                child = self._open_at(fd, name, _DIR, "/".join(parts[: i + 1]))
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    def lstat(self, rel: str) -> os.stat_result | None:
        """What `rel` is, or None when it (or a directory on its way) does not exist.
        Raises StickLinkError when it or a directory on its way is a link."""
        parts = _parts(rel)
        try:
            with self._directory(parts[:-1]) as d:
                st = os.stat(parts[-1], dir_fd=d, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISLNK(st.st_mode):
            raise self.link_error(rel)
        return st

    def is_file(self, rel: str) -> bool:
        """Raises StickLinkError."""
        st = self.lstat(rel)
        return st is not None and stat.S_ISREG(st.st_mode)

    def entries(self, rel: str) -> list[Entry]:
        """The entries of directory `rel` (none when it does not exist), sorted by name.
        Raises StickLinkError when it, a directory on its way or any entry is a link;
        OSError."""
        found = []
        try:
            # judged while the directory is open: an entry may need an lstat through it
            with self._directory(_parts(rel)) as d, os.scandir(d) as it:
                for e in it:
                    if e.is_symlink():
                        raise self.link_error(f"{rel}/{e.name}")
                    found.append(Entry(e.name, e.is_dir(follow_symlinks=False),
                                       e.is_file(follow_symlinks=False)))
        except FileNotFoundError:
            return []
        return sorted(found, key=lambda e: e.name)

    def refuse_links(self, rel: str, depth: int = 0) -> None:
        """Raise StickLinkError if `rel`, a directory on its way, or anything down to `depth`
        levels below it is a link. What does not exist is no link. OSError."""
        st = self.lstat(rel)
        if st is None or depth <= 0 or not stat.S_ISDIR(st.st_mode):
            return
        for entry in self.entries(rel):
            if depth > 1 and entry.is_dir:
                self.refuse_links(f"{rel}/{entry.name}", depth - 1)

    # --- reading ------------------------------------------------------------------------

    def open_file(self, rel: str) -> int:
        """A read-only descriptor of `rel`, opened without blocking (a FIFO). The caller
        closes it and checks what it is. Raises StickLinkError, OSError."""
        parts = _parts(rel)
        with self._directory(parts[:-1]) as d:
            return self._open_at(d, parts[-1], _READ, rel)

    def read_bytes(self, rel: str, limit: int) -> bytes:
        """At most `limit` + 1 bytes of regular file `rel` (so a caller sees one too long).
        Raises StickLinkError, OSError (also for a FIFO or a device)."""
        fd = self.open_file(rel)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", rel)
            return f.read(limit + 1)

    # --- writing ------------------------------------------------------------------------

    def make_dirs(self, rel: str) -> None:
        """mkdir -p below the root, each new directory durable in its parent. Raises
        StickLinkError, OSError."""
        with self._directory(_parts(rel), create=True):
            pass

    @contextlib.contextmanager
    def writer(self, rel: str) -> Iterator[BinaryIO]:
        """A binary file that replaces `rel` atomically and durably when the block ends (its
        directories are made). On an exception the temp file is removed and `rel` is as it
        was. Raises StickLinkError, OSError."""
        parts = _parts(rel)
        with self._directory(parts[:-1], create=True) as d, atomic_writer_at(d, parts[-1]) as f:
            yield f

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Replace `rel` with `data`, atomically and durably. Raises StickLinkError, OSError."""
        with self.writer(rel) as f:
            f.write(data)

    def rename(self, src: str, dst: str) -> None:
        """Move `src` to `dst` (replacing a file there; its directories are made), durably.
        Raises StickLinkError, OSError."""
        s, t = _parts(src), _parts(dst)
        with self._directory(s[:-1]) as sd, self._directory(t[:-1], create=True) as td:
            os.replace(s[-1], t[-1], src_dir_fd=sd, dst_dir_fd=td)
            os.fsync(td)
            os.fsync(sd)

    def remove(self, rel: str) -> None:
        """Remove file or directory tree `rel` (a link is removed, never followed); nothing
        when it is not there. Raises StickLinkError (a directory on its way is a link),
        OSError."""
        parts = _parts(rel)
        try:
            with self._directory(parts[:-1]) as d:
                st = os.stat(parts[-1], dir_fd=d, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    shutil.rmtree(parts[-1], dir_fd=d)
                else:
                    os.unlink(parts[-1], dir_fd=d)
                os.fsync(d)
        except FileNotFoundError:
            return
