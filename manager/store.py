"""The content-addressed bundle store: DATA_DIR/store/sha256/<ab>/<sha256>.satchel.

An upload is spooled into `store/incoming/` while its sha256 is computed, verified by the
caller, then moved into place (fsync, rename, fsync the directory) or discarded. A write the
store's disk refuses (full, read-only, not a directory) is a StoreWriteError naming the store,
told apart from a failure to read the upload, and leaves no file behind. Serving a stored file
over HTTP (ETag, Range) is the API's part: `manager/api/bundles.py`.
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

from satchel.bundles.durable import fsync_dir
from satchel.manager.errors import NotFoundError, RequestTooLargeError, StoreWriteError

SUFFIX = ".satchel"


@dataclass(frozen=True)
class Spooled:
    """An upload received into the incoming directory, not yet part of the store."""

    path: Path
    sha256: str
    size: int  # bytes


class BundleStore:
    def __init__(self, root: Path, chunk_bytes: int = 1024 * 1024) -> None:
        self.root = root
        self.chunk_bytes = chunk_bytes
        self.incoming = root / "incoming"
        self.objects = root / "sha256"

    def path_for(self, sha256: str) -> Path:
        return self.objects / sha256[:2] / f"{sha256}{SUFFIX}"

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def require(self, sha256: str) -> Path:
        """The file of a stored bundle. Raises NotFoundError if it is missing."""
        path = self.path_for(sha256)
        if not path.is_file():
            raise NotFoundError(f"bundle {sha256[:12]} is not in the store")
        return path

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """The store's own writes: an OSError inside becomes a StoreWriteError naming it."""
        try:
            yield
        except OSError as e:
            reason = e.strerror or str(e)
            raise StoreWriteError(f"cannot write to the bundle store {self.root}: {reason}") from e

    def receive(self, source: BinaryIO, max_bytes: int) -> Spooled:
        """Copy `source` into the incoming directory, hashing it on the way.

        Raises RequestTooLargeError past `max_bytes`, StoreWriteError when the store cannot
        be written, OSError when reading `source` fails; the partial file is removed then.
        """
        with self._writing():
            self.incoming.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=self.incoming)
        sha = hashlib.sha256()
        size = 0
        try:
            while chunk := source.read(self.chunk_bytes):
                size += len(chunk)
                if size > max_bytes:
                    raise RequestTooLargeError(
                        f"bundle is larger than the {max_bytes} byte upload limit"
                    )
                sha.update(chunk)
                with self._writing():
                    _write_all(fd, chunk)
            with self._writing():
                os.fsync(fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        finally:
            os.close(fd)
        return Spooled(Path(tmp), sha.hexdigest(), size)

    def commit(self, spooled: Spooled) -> tuple[Path, bool]:
        """Move a verified upload into the store, durably. Returns (path, newly_added).

        When the same content is already stored, the upload is discarded. Raises
        StoreWriteError (the upload is discarded then).
        """
        final = self.path_for(spooled.sha256)
        if final.is_file():
            self.discard(spooled)
            return final, False
        try:
            with self._writing():
                final.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(spooled.path, 0o644)
                os.replace(spooled.path, final)
                fsync_dir(final.parent)
        except StoreWriteError:
            self.discard(spooled)
            raise
        return final, True

    def discard(self, spooled: Spooled) -> None:
        with contextlib.suppress(FileNotFoundError):
            spooled.path.unlink()


def _write_all(fd: int, data: bytes) -> None:
    """Write all of `data` (unbuffered, so a refused write surfaces here). Raises OSError."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
