"""The Protocol Buffers wire format, read and written by hand: the one reader behind every
place that looks inside an ONNX model without the `onnx` package (manager.onnx_graph,
manager.external_data, agent.runtimes.onnx_weights).

Pure: it walks bytes, a memoryview or a memory map given to it, and touches only the bytes
of the keys and lengths it reads, so a model's weights are stepped over, never paged in. Each
caller turns `WireError` into its own error at its edge.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple, Protocol

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5  # the wire types protobuf 3 writes
_MAX_VARINT_SHIFT = 63


class Buffer(Protocol):
    """What the reader indexes: bytes, a memoryview, an mmap."""

    def __getitem__(self, index: int, /) -> int: ...

    def __len__(self) -> int: ...


class WireError(ValueError):
    """The bytes are not protobuf wire format."""


class Field(NamedTuple):
    number: int
    wire: int
    field_start: int  # where its key begins
    start: int  # its content (length-delimited) or its value's first byte (the others)
    end: int  # where it ends: a length-delimited field's content is data[start:end]
    value: int  # a varint's value; 0 for the other wire types


def read_varint(data: Buffer, pos: int, end: int) -> tuple[int, int]:
    """The varint at data[pos:end] and the position after it. Raises WireError."""
    value = shift = 0
    while True:
        if pos >= end or shift > _MAX_VARINT_SHIFT:
            raise WireError("a truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def fields(data: Buffer, pos: int, end: int) -> Iterator[Field]:
    """Every field of the message in data[pos:end], in order. Raises WireError (field number
    0, a group or unknown wire type, a field running past the message's end)."""
    while pos < end:
        field_start = pos
        key, pos = read_varint(data, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireError(f"field number 0 at byte {field_start}")
        value = 0
        start = pos
        if wire == VARINT:
            value, pos = read_varint(data, pos, end)
        elif wire == LENGTH:
            length, start = read_varint(data, pos, end)
            pos = start + length
        elif wire == FIXED64:
            pos += 8
        elif wire == FIXED32:
            pos += 4
        else:  # groups (3, 4): not in ONNX; 6, 7: not protobuf
            raise WireError(f"wire type {wire} of field {number} is not valid")
        if pos > end:
            raise WireError(f"field {number} runs past the end of its message")
        yield Field(number, wire, field_start, start, pos, value)


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def key(number: int, wire: int) -> bytes:
    return encode_varint(number << 3 | wire)


def length_delimited(number: int, content: bytes) -> bytes:
    """A length-delimited field: its key, its length, `content`."""
    return key(number, LENGTH) + encode_varint(len(content)) + content


def varint_field(number: int, value: int) -> bytes:
    return key(number, VARINT) + encode_varint(value)
