"""The content-addressed bundle store: DATA_DIR/store/sha256/<ab>/<sha256>.satchel.

An upload is spooled into `store/incoming/` while its sha256 is computed, verified by the
caller, then moved into place (fsync, rename, fsync the directory) or discarded. Downloads are
served with ETag (the sha256), If-None-Match, Range and If-Range, so they resume.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from flask import Response, send_file

from bundles.durable import fsync_dir
from manager.errors import NotFoundError, RequestTooLargeError

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

    def receive(self, source: BinaryIO, max_bytes: int) -> Spooled:
        """Copy `source` into the incoming directory, hashing it on the way.

        Raises RequestTooLargeError past `max_bytes` (the partial file is removed), OSError.
        """
        self.incoming.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=self.incoming)
        sha = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := source.read(self.chunk_bytes):
                    size += len(chunk)
                    if size > max_bytes:
                        raise RequestTooLargeError(
                            f"bundle is larger than the {max_bytes} byte upload limit"
                        )
                    sha.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return Spooled(Path(tmp), sha.hexdigest(), size)

    def commit(self, spooled: Spooled) -> tuple[Path, bool]:
        """Move a verified upload into the store, durably. Returns (path, newly_added).

        When the same content is already stored, the upload is discarded. Raises OSError.
        """
        final = self.path_for(spooled.sha256)
        if final.is_file():
            self.discard(spooled)
            return final, False
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(spooled.path, 0o644)
        os.replace(spooled.path, final)
        fsync_dir(final.parent)
        return final, True

    def discard(self, spooled: Spooled) -> None:
        with contextlib.suppress(FileNotFoundError):
            spooled.path.unlink()

    def remove(self, sha256: str) -> None:
        """Delete a stored bundle file (used to undo a commit whose database row failed)."""
        path = self.path_for(sha256)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            fsync_dir(path.parent)


def download_response(path: Path, sha256: str, max_age_s: int) -> Response:
    """Serve a stored bundle: strong ETag = its sha256, 304 on a matching If-None-Match,
    206 for one satisfiable Range (honouring If-Range), 416 for an unsatisfiable one."""
    response = send_file(
        path.resolve(),  # Flask resolves a relative path against the app, not the cwd
        mimetype="application/vnd.satchel.bundle",
        as_attachment=True,
        download_name=f"{sha256}{SUFFIX}",
        conditional=True,
        etag=sha256,
        max_age=max_age_s,
    )
    response.headers["Accept-Ranges"] = "bytes"
    return response
