"""A large single-file ONNX model's weights, served from the file itself instead of copied.

onnxruntime loading a .onnx file that holds its weights (TensorProto raw_data) keeps two
copies of them while the session is built: the parsed protobuf and the initializers it
copies out of it, then prepacked weights. A 197 MB model peaks at ~458 MB (2.3x) in a bare
`InferenceSession(path)`. Weights in ONNX external data files instead are mapped from the
file (mmap) and never copied (agent.runtimes.onnx decides whether onnxruntime may prepack
them: `external_tensor_lengths`).

So for a large model file, `external_weights_graph` reads only the protobuf's field headers
(the file is mapped, its weight bytes are not touched) and returns a small derived ModelProto
in memory: the same bytes, except that each large top-level initializer's raw_data is
replaced by an external_data reference to the very same bytes in the model file itself
(location: the file's own name, offset and length of its raw_data). onnxruntime then maps
the weights from the verified, unmodified file. Nothing is written to disk: the signed file
stays as it is, and the session computes on its bytes; the smoke test judges that session.

Anything this reader does not expect (a malformed or unusual file, a tensor with segments or
already external) makes it leave that tensor, or the whole file, to onnxruntime's own loading.
"""

from __future__ import annotations

import mmap
from pathlib import Path

from satchel.bundles.protowire import (
    LENGTH,
    Field,
    WireError,
    fields,
    length_delimited,
    varint_field,
)

# ModelProto.graph, GraphProto.initializer, and TensorProto's fields (onnx.proto3).
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_SEGMENT = 3
_TENSOR_RAW_DATA = 9
_TENSOR_EXTERNAL_DATA = 13
_TENSOR_DATA_LOCATION = 14
_DATA_LOCATION_EXTERNAL = 1
_ENTRY_KEY, _ENTRY_VALUE = 1, 2  # StringStringEntryProto

MIN_TENSOR_BYTES = 64 * 1024  # smaller initializers stay inline: their copy costs nothing


class _Malformed(ValueError):
    """The bytes are not protobuf as this reader expects them."""


def _fields(buf: mmap.mmap | bytes, start: int, end: int) -> list[Field]:
    """The fields in buf[start:end] (bundles/protowire.py). Raises _Malformed."""
    try:
        return list(fields(buf, start, end))
    except WireError as e:
        raise _Malformed(str(e)) from e


def _entry(name: str, value: str) -> bytes:
    return length_delimited(_TENSOR_EXTERNAL_DATA, length_delimited(_ENTRY_KEY, name.encode())
                            + length_delimited(_ENTRY_VALUE, value.encode()))


def _external_tensor(buf: mmap.mmap, start: int, end: int, location: str,
                     min_bytes: int) -> bytes | None:
    """The TensorProto at buf[start:end] with its raw_data as an external reference into the
    model file, or None to keep it as it is."""
    kept: list[bytes] = []
    raw: tuple[int, int] | None = None
    for f in _fields(buf, start, end):
        if f.number in (_TENSOR_SEGMENT, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION):
            return None  # segmented, or already external: onnxruntime's own loading
        if f.number == _TENSOR_RAW_DATA and f.wire == LENGTH and raw is None:
            raw = (f.start, f.end)
        else:
            kept.append(buf[f.field_start:f.end])
    if raw is None or raw[1] - raw[0] < min_bytes:
        return None
    kept += [_entry("location", location), _entry("offset", str(raw[0])),
             _entry("length", str(raw[1] - raw[0])),
             varint_field(_TENSOR_DATA_LOCATION, _DATA_LOCATION_EXTERNAL)]
    return b"".join(kept)


def _graph(buf: mmap.mmap, start: int, end: int, location: str,
           min_bytes: int) -> tuple[bytes, int]:
    parts: list[bytes] = []
    moved = 0
    for f in _fields(buf, start, end):
        if f.number == _GRAPH_INITIALIZER and f.wire == LENGTH:
            tensor = _external_tensor(buf, f.start, f.end, location, min_bytes)
            if tensor is not None:
                parts.append(length_delimited(_GRAPH_INITIALIZER, tensor))
                moved += 1
                continue
        parts.append(buf[f.field_start:f.end])
    return b"".join(parts), moved


def external_weights_graph(path: Path, min_tensor_bytes: int = MIN_TENSOR_BYTES) -> bytes | None:
    """The ONNX model at `path` as a small ModelProto whose large top-level initializers
    reference their raw bytes in `path` itself (ONNX external data, location `path.name`),
    for onnxruntime to load from memory with external data resolved in `path`'s folder.
    None when no initializer moves, or the file is not protobuf as expected (then it is for
    onnxruntime to load, or refuse, as it is). Raises OSError when it cannot be read."""
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            return None
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            try:
                top = _fields(buf, 0, len(buf))
                graphs = [field for field in top if field.number == _MODEL_GRAPH]
                if len(graphs) != 1 or graphs[0].wire != LENGTH:
                    return None  # no graph, or parts of one to merge: onnxruntime's own
                parts: list[bytes] = []
                moved = 0
                for field in top:
                    if field.number == _MODEL_GRAPH:
                        graph, moved = _graph(buf, field.start, field.end, path.name,
                                              min_tensor_bytes)
                        parts.append(length_delimited(_MODEL_GRAPH, graph))
                    else:
                        parts.append(buf[field.field_start:field.end])
            except _Malformed:
                return None
    return b"".join(parts) if moved else None


def external_tensor_lengths(model: bytes) -> list[int] | None:
    """The byte lengths of the top-level initializers a ModelProto (`model`: a graph file's
    bytes, or `external_weights_graph`'s) keeps in external data; None when one of them
    gives no length, or the bytes are not protobuf as expected."""
    try:
        lengths: list[int] = []
        for top in _fields(model, 0, len(model)):
            if top.number != _MODEL_GRAPH or top.wire != LENGTH:
                continue
            for init in _fields(model, top.start, top.end):
                if init.number != _GRAPH_INITIALIZER or init.wire != LENGTH:
                    continue
                entries = [f for f in _fields(model, init.start, init.end)
                           if f.number == _TENSOR_EXTERNAL_DATA and f.wire == LENGTH]
                if not entries:
                    continue  # inline: not mapped
                length = _entry_value(model, entries, b"length")
                if length is None or not length.isdigit():
                    return None
                lengths.append(int(length))
        return lengths
    except _Malformed:
        return None


def _entry_value(model: bytes, entries: list[Field], name: bytes) -> bytes | None:
    """The value of the StringStringEntryProto named `name` among `entries`."""
    for entry in entries:
        key = value = None
        for f in _fields(model, entry.start, entry.end):
            if f.number == _ENTRY_KEY and f.wire == LENGTH:
                key = model[f.start:f.end]
            elif f.number == _ENTRY_VALUE and f.wire == LENGTH:
                value = model[f.start:f.end]
        if key == name:
            return value
    return None
