"""Every limit of the bundle format in one place, with units."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_manifest_bytes: int = 4 * 1024 * 1024  # bytes; manifest.json member
    max_signatures_bytes: int = 256 * 1024  # bytes; manifest.sig member
    max_signatures: int = 32  # entries in manifest.sig
    max_files: int = 1024  # payload files per bundle
    max_path_length: int = 200  # characters of a payload path
    max_path_depth: int = 8  # directory levels of a payload path
    max_payload_bytes: int = 64 * 1024**3  # bytes; declared size of one payload
    chunk_bytes: int = 1024 * 1024  # bytes read or written per step when streaming
    writeback_bytes: int = 16 * 1024 * 1024  # bytes written before starting their writeback
    pipeline_chunks: int = 4  # decompressed chunks queued between decompressing and writing
    max_window_bytes: int = 32 * 1024 * 1024  # bytes; largest zstd window we agree to allocate
    # A chunk of a compressed member is held whole in memory until its signed hash checks out.
    min_index_chunk_bytes: int = 4096  # bytes; smallest chunk a manifest's chunk index may use
    max_index_chunk_bytes: int = 16 * 1024 * 1024  # bytes; largest such chunk
    max_trust_bytes: int = 1024 * 1024  # bytes; a root.json document


@dataclass(frozen=True)
class PackOptions:
    zstd_level: int = 3  # zstd compression level, as `zstd -3`
    zstd_threads: int = -1  # compression worker threads; -1 = one per core, as `zstd -T0`
    chunk_bytes: int = 4 * 1024 * 1024  # bytes read from a payload source per step
    # The signed chunk index (manifest `chunk_size`, `chunk_sha256`) lets a device check and
    # decompress a bundle in one read. 0 = no index, for agents that predate it.
    index_chunk_bytes: int = 1024 * 1024  # bytes per indexed chunk (at least)
    index_max_chunks: int = 8192  # chunks per bundle before chunks grow (bounds manifest size)


DEFAULT_LIMITS = Limits()
DEFAULT_PACK = PackOptions()
