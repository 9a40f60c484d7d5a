"""Where bundles live: one interface (`Store`), two homes.

- `BundleStore` (`folder.py`): a folder under the data dir, DATA_DIR/store/sha256/<ab>/<sha256>
  .satchel; the embedded default.
- `S3Store` (`s3.py`): any S3-compatible object store (AWS S3, MinIO, Ceph RGW, SeaweedFS),
  chosen by `store = "s3://BUCKET/PREFIX"` (SATCHEL_STORE), so managers on several hosts
  serve one fleet.

Both are content-addressed: a bundle's name is the sha256 of its file. An upload is spooled
to a local file while its sha256 is computed (`spool.py`), verified by the caller, and only
then made visible (`commit`), or discarded. Serving a stored bundle over HTTP (ETag, Range,
If-Range, or a redirect to a pre-signed URL) is the API's part: `manager/api/bundles.py`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, BinaryIO, Protocol

from satchel.bundles.offer import origin_of
from satchel.manager.store.folder import BundleStore
from satchel.manager.store.spool import SUFFIX, Spooled

if TYPE_CHECKING:
    from pathlib import Path

    from satchel.manager.config import ManagerConfig

__all__ = [
    "SUFFIX", "BundleStore", "Spooled", "Store", "download_origins", "object_name", "open_store",
]


class Store(Protocol):
    """A content-addressed home of bundle files."""

    def describe(self) -> str:
        """Where the store is, for messages (a folder, or s3://BUCKET/PREFIX; no secret)."""

    def receive(self, source: BinaryIO, max_bytes: int) -> Spooled:
        """Spool `source` to a local file, hashing it. Raises RequestTooLargeError,
        StoreWriteError, OSError (reading `source`); nothing is left behind then."""

    def commit(self, spooled: Spooled) -> bool:
        """Make a verified upload visible under its sha256; False when it already was (the
        upload is discarded either way). Raises StoreWriteError; nothing is visible then."""

    def discard(self, spooled: Spooled) -> None:
        """Forget an upload that will not be committed."""

    def exists(self, sha256: str) -> bool:
        """Whether the bundle is stored. Raises StoreUnavailableError."""

    def open(self, sha256: str) -> BinaryIO:
        """The bundle's bytes, read from the start (the caller closes it). Raises
        NotFoundError, StoreUnavailableError."""

    def read_range(self, sha256: str, start: int, stop: int) -> Iterator[bytes]:
        """Bytes [start, stop) of the bundle, in chunks. Raises NotFoundError,
        StoreUnavailableError (also while iterating)."""

    def delete(self, sha256: str) -> bool:
        """Remove the bundle's file; False when it was not there. Raises StoreWriteError."""

    def local_path(self, sha256: str) -> Path | None:
        """The bundle's file on this host, when the store is a folder (None otherwise).
        Raises NotFoundError."""

    def presigned_url(self, sha256: str, ttl_s: int) -> str | None:
        """A URL that fetches the bundle straight from the store for `ttl_s` seconds, or None
        when the store has no such thing. Raises StoreUnavailableError."""

    def public_origins(self) -> tuple[str, ...]:
        """The origins (scheme://host[:port]) `presigned_url` points at."""


def object_name(sha256: str) -> str:
    """A bundle's name inside a store: sha256/<first two hex digits>/<sha256>.satchel."""
    return f"sha256/{sha256[:2]}/{sha256}{SUFFIX}"


@functools.lru_cache(maxsize=4)
def download_origins(config: ManagerConfig) -> tuple[str, ...]:
    """The origins devices may be redirected to for a download (named in check-in offers):
    the object store's public origin when the manager hands out pre-signed URLs, else none.
    Computed once per configuration (it is on the check-in path)."""
    if not (config.store and config.store_presign):
        return ()
    from satchel.manager.store import s3

    _endpoint, public, _region = s3.endpoints(config, os.environ)
    return (origin_of(public),)


def open_store(config: ManagerConfig) -> Store:
    """The store `config` names: the folder under the data dir, or an S3 bucket. Raises
    UsageError (a malformed store URL, no S3 client installed)."""
    if not config.store:
        return BundleStore(config.store_dir, config.upload_chunk_bytes)
    from satchel.manager.store import s3  # boto3 is imported only when an S3 store is used

    return s3.S3Store.from_config(config)
