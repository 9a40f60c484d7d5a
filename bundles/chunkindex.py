"""The chunk index of a compressed member: the sha256 of each `chunk_size` bytes of it (the
last chunk shorter), listed in the signed manifest, so a device checks every chunk before the
decompressor sees a byte of it and reads a bundle once (as dm-verity and casync check blocks
against a signed list of their hashes).

`ChunkHasher` computes an index as a member is written; `IndexedChunks` reads a member and
hands out only chunks that match it.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, BinaryIO

from satchel.bundles.config import DEFAULT_LIMITS, PackOptions
from satchel.bundles.errors import PayloadHashError, TruncatedBundleError

if TYPE_CHECKING:  # the manifest imports chunk_count from here
    from satchel.bundles.manifest import FileEntry


def chunk_count(compressed_size: int, chunk_size: int) -> int:
    """How many chunks of `chunk_size` bytes (the last one shorter) cover a compressed member."""
    return -(-compressed_size // chunk_size)


def chunk_size_for(payload_bytes: int, options: PackOptions) -> int | None:
    """The chunk size for a bundle of `payload_bytes`: `options.index_chunk_bytes`, doubled
    until the bundle needs at most `options.index_max_chunks` chunks (up to the largest chunk
    a device accepts), so the manifest stays small. None when the index is off."""
    if options.index_chunk_bytes <= 0:
        return None
    size = max(options.index_chunk_bytes, DEFAULT_LIMITS.min_index_chunk_bytes)
    while (
        chunk_count(payload_bytes, size) > options.index_max_chunks
        and size * 2 <= DEFAULT_LIMITS.max_index_chunk_bytes
    ):
        size *= 2
    return min(size, DEFAULT_LIMITS.max_index_chunk_bytes)


def chunk_mismatch(entry: FileEntry, index: int) -> PayloadHashError:
    """The refusal for chunk `index` (from 0) of `entry` not matching its signed hash."""
    return PayloadHashError(
        f"payload {entry.path} chunk {index + 1} of {len(entry.chunk_sha256)} does not match "
        "its signed hash (altered or corrupted)"
    )


class ChunkHasher:
    """Hashes every `chunk_size` bytes of what it is given, however it is split."""

    def __init__(self, chunk_size: int) -> None:
        self.chunk_size = chunk_size
        self.hashes: list[str] = []
        self._sha = hashlib.sha256()
        self._filled = 0  # bytes of the current chunk so far

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            take = min(len(view), self.chunk_size - self._filled)
            self._sha.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == self.chunk_size:
                self._close()

    def _close(self) -> None:
        self.hashes.append(self._sha.hexdigest())
        self._sha = hashlib.sha256()
        self._filled = 0

    def finish(self) -> tuple[str, ...]:
        """The index of everything given (the last chunk may be short)."""
        if self._filled:
            self._close()
        return tuple(self.hashes)


class IndexedChunks:
    """A read-only view of one compressed member at the position of `f` that hands out a
    chunk only once its sha256 has matched the signed index: nothing unauthenticated reaches
    the decompressor. `read` raises TruncatedBundleError and PayloadHashError."""

    def __init__(self, f: BinaryIO, entry: FileEntry) -> None:
        if entry.chunk_size is None:
            raise ValueError(f"payload {entry.path} has no chunk index")
        self.f = f
        self.entry = entry
        self.chunk_size = entry.chunk_size
        self.index = 0  # of the next chunk to read
        self.remaining = entry.compressed_size
        self.pending = memoryview(b"")  # checked bytes not handed out yet

    def read(self, n: int = -1) -> memoryview:
        if not self.pending:
            self.pending = memoryview(self._next_chunk())
        if n < 0 or n >= len(self.pending):
            out, self.pending = self.pending, memoryview(b"")
        else:
            out, self.pending = self.pending[:n], self.pending[n:]
        return out

    def _next_chunk(self) -> bytes:
        if not self.remaining:
            return b""
        want = min(self.chunk_size, self.remaining)
        data = self.f.read(want)
        if len(data) != want:
            raise TruncatedBundleError(f"bundle file is truncated (ends inside {self.entry.path})")
        if hashlib.sha256(data).hexdigest() != self.entry.chunk_sha256[self.index]:
            raise chunk_mismatch(self.entry, self.index)
        self.index += 1
        self.remaining -= want
        return data
