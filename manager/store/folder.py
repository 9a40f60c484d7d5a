"""The folder store, the embedded default: DATA_DIR/store/sha256/<ab>/<sha256>.satchel.

A verified upload is moved into place from `store/incoming/` (fsync, rename, fsync the
directory); the API serves the file itself (`send_file`: ETag, Range, If-Range).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from satchel.bundles.durable import fsync_dir
from satchel.manager.errors import NotFoundError
from satchel.manager.store import spool
from satchel.manager.store.spool import SUFFIX, Spooled


class BundleStore:
    """Bundles in a folder of this host."""

    def __init__(self, root: Path, chunk_bytes: int = 1024 * 1024) -> None:
        self.root = root
        self.chunk_bytes = chunk_bytes
        self.incoming = root / "incoming"
        self.objects = root / "sha256"

    def describe(self) -> str:
        return str(self.root)

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

    def local_path(self, sha256: str) -> Path | None:
        return self.require(sha256)

    def open(self, sha256: str) -> BinaryIO:
        return open(self.require(sha256), "rb")  # noqa: SIM115  (the caller closes it)

    def read_range(self, sha256: str, start: int, stop: int) -> Iterator[bytes]:
        f = self.open(sha256)  # a missing file raises here, before any byte is answered
        f.seek(start)
        return self._chunks(f, stop - start)

    def _chunks(self, f: BinaryIO, left: int) -> Iterator[bytes]:
        with f:
            while left > 0 and (chunk := f.read(min(self.chunk_bytes, left))):
                left -= len(chunk)
                yield chunk

    def presigned_url(self, sha256: str, ttl_s: int) -> str | None:
        return None

    def public_origins(self) -> tuple[str, ...]:
        return ()

    def receive(self, source: BinaryIO, max_bytes: int) -> Spooled:
        return spool.receive(source, max_bytes, self.incoming, self.chunk_bytes, self.root)

    def commit(self, spooled: Spooled) -> bool:
        """Move a verified upload into the store, durably; False when the same content was
        already stored (the upload is discarded then). Raises StoreWriteError (the upload is
        discarded then)."""
        final = self.path_for(spooled.sha256)
        if final.is_file():
            self.discard(spooled)
            return False
        try:
            with spool.writing(self.root):
                final.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(spooled.path, 0o644)
                os.replace(spooled.path, final)
                fsync_dir(final.parent)
        except BaseException:
            self.discard(spooled)
            raise
        return True

    def discard(self, spooled: Spooled) -> None:
        spool.discard(spooled)

    def delete(self, sha256: str) -> bool:
        """Remove a stored bundle's file. Raises StoreWriteError."""
        path = self.path_for(sha256)
        with spool.writing(self.root):
            try:
                path.unlink()
            except FileNotFoundError:
                return False
            with contextlib.suppress(OSError):
                fsync_dir(path.parent)
        return True
