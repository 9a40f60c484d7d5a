"""Bundle files byte by byte: which region (a member's header, data or padding, or the end
marker) every byte belongs to, and edits of single bytes."""

from __future__ import annotations

from dataclasses import dataclass

from tests.factory.tar import BLOCK, read_members


def truncate(data: bytes, at: int) -> bytes:
    return data[:at]


def flip_byte(data: bytes, offset: int, mask: int = 0xFF) -> bytes:
    """`data` with the byte at `offset` XORed with `mask` (non-zero, so it always changes)."""
    out = bytearray(data)
    out[offset] ^= mask
    return bytes(out)


@dataclass(frozen=True)
class Span:
    """A region of a bundle file: a member's header, data or padding, or the end marker."""

    member: str  # member name, or "" for the end-of-archive marker and what follows
    region: str  # "header" | "data" | "padding" | "end"
    start: int  # byte offset, inclusive
    stop: int  # byte offset, exclusive


def layout(data: bytes) -> list[Span]:
    """Every byte of an honest archive, attributed to the region it belongs to."""
    spans: list[Span] = []
    pos = 0
    for m in read_members(data):
        name = str(m.name)
        size = len(m.data)
        spans.append(Span(name, "header", pos, pos + BLOCK))
        spans.append(Span(name, "data", pos + BLOCK, pos + BLOCK + size))
        pos += BLOCK + size
        pad = -size % BLOCK
        spans.append(Span(name, "padding", pos, pos + pad))
        pos += pad
    spans.append(Span("", "end", pos, len(data)))
    return [s for s in spans if s.stop > s.start]


def span_of(data: bytes, member: str, region: str) -> Span:
    """The span of `region` ("header", "data", "padding") of `member` in `data`."""
    return next(s for s in layout(data) if s.member == member and s.region == region)


def span_at(spans: list[Span], offset: int) -> Span:
    return next(s for s in spans if s.start <= offset < s.stop)
