"""zstd frames for payload members: honest ones, ones demanding a large window, and bombs."""

from __future__ import annotations

import io

import zstandard

MiB = 1024 * 1024


def zstd_frame(content: bytes, *, window_log: int | None = None) -> bytes:
    """One zstd frame of `content`; with `window_log`, a streamed frame demanding that window."""
    if window_log is None:
        return zstandard.ZstdCompressor(level=3).compress(content)
    params = zstandard.ZstdCompressionParameters(
        window_log=window_log, compression_level=3, write_content_size=False
    )
    out = io.BytesIO()
    with zstandard.ZstdCompressor(compression_params=params).stream_writer(
        out, closefd=False
    ) as writer:
        writer.write(content)
    return out.getvalue()


def zstd_bomb(expanded_bytes: int, *, chunk_bytes: int = MiB) -> bytes:
    """A small zstd frame of `expanded_bytes` zeros, streamed so it never holds them all and
    without a content size in the frame header (as a hostile builder would write it)."""
    cctx = zstandard.ZstdCompressor(level=1, write_content_size=False)
    out = io.BytesIO()
    zeros = bytes(chunk_bytes)
    with cctx.stream_writer(out, closefd=False) as writer:
        remaining = expanded_bytes
        while remaining > 0:
            n = min(remaining, chunk_bytes)
            writer.write(zeros[:n])
            remaining -= n
    return out.getvalue()
