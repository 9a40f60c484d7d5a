"""Tensors the Open Inference Protocol carries beyond plain numbers, bytes in, arrays out, no
I/O: `BYTES` tensors (JSON strings, or Triton's binary form: each element a 4-byte
little-endian length then its bytes) and the classification extension's answers (the top-k
classes of a class-score output as "score:index" strings).

A `BYTES` tensor is a numpy object array of `str` (what onnxruntime feeds to and returns
from a `tensor(string)`): elements must be UTF-8, as every string model reads text.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from satchel.agent.runtimes.base import NUMPY_TO_DATATYPE
from satchel.agent.server.errors import BadRequestError

BYTES = "BYTES"
BYTES_DTYPE = np.dtype(object)
_LENGTH = struct.Struct("<I")


def is_bytes(array: np.ndarray) -> bool:
    return array.dtype == BYTES_DTYPE


def datatype_of(array: np.ndarray) -> str:
    """The protocol's datatype name of an array ("FP32", "BYTES", ...)."""
    if array.dtype == BYTES_DTYPE:
        return BYTES
    return NUMPY_TO_DATATYPE.get(array.dtype) or str(array.dtype)  # str(): ~7 us, rarely


def _text(element: bytes, name: str) -> str:
    try:
        return element.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequestError(f"input {name!r}: a BYTES element is not UTF-8 text") from None


def strings_from_binary(chunk: memoryview, count: int, name: str) -> np.ndarray:
    """`count` length-prefixed elements filling `chunk` exactly, as a flat object array.

    Raises BadRequestError when the chunk holds more or fewer, or an element is not UTF-8.
    """
    out = np.empty(count, dtype=BYTES_DTYPE)
    offset, end = 0, len(chunk)
    for i in range(count):
        if offset + _LENGTH.size > end:
            raise BadRequestError(f"input {name!r}: its BYTES data holds {i} elements,"
                                  f" the shape needs {count}")
        (length,) = _LENGTH.unpack_from(chunk, offset)
        offset += _LENGTH.size
        if offset + length > end:
            raise BadRequestError(f"input {name!r}: BYTES element {i} runs past its data")
        out[i] = _text(bytes(chunk[offset : offset + length]), name)
        offset += length
    if offset != end:
        raise BadRequestError(f"input {name!r}: its BYTES data holds more than {count} elements")
    return out


def strings_from_json(data: Any, count: int, name: str) -> np.ndarray:
    """JSON `data` (a list of strings, flat or nested) as a flat object array of `count`.

    Raises BadRequestError for anything but strings, or the wrong number of them.
    """
    if not isinstance(data, list):
        raise BadRequestError(f"input {name!r}: 'data' must be a list")
    flat: list[str] = []
    stack: list[Any] = [iter(data)]
    while stack:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
        elif isinstance(item, list):
            if len(stack) > 32:
                raise BadRequestError(f"input {name!r}: 'data' is nested too deeply")
            stack.append(iter(item))
        elif isinstance(item, str):
            flat.append(item)
            if len(flat) > count:
                break
        else:
            raise BadRequestError(f"input {name!r}: BYTES data must be strings")
    if len(flat) != count:
        raise BadRequestError(
            f"input {name!r}: 'data' holds {len(flat)} strings but its shape needs {count}"
        )
    out = np.empty(count, dtype=BYTES_DTYPE)
    out[:] = flat
    return out


_END = object()


def _as_bytes(element: object) -> bytes:
    if isinstance(element, bytes):
        return element
    return str(element).encode("utf-8")


def encode_binary(array: np.ndarray) -> bytes:
    """A BYTES tensor in Triton's binary form, row-major."""
    parts = []
    for element in array.ravel():
        raw = _as_bytes(element)
        parts.append(_LENGTH.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def json_strings(array: np.ndarray) -> list[str]:
    """A BYTES tensor as JSON strings, row-major (bytes that are not UTF-8 replaced)."""
    return [e.decode("utf-8", "replace") if isinstance(e, bytes) else str(e)
            for e in array.ravel()]


def classify(scores: np.ndarray, k: int, name: str) -> np.ndarray:
    """The classification extension: the top `k` classes of each row of `scores` (classes
    on the last axis) as "score:index" strings, best first; a 1-D output is one row.

    Raises BadRequestError for an output that holds no class scores.
    """
    a = np.asarray(scores)
    if a.ndim == 0 or a.dtype.kind not in "biuf" or a.shape[-1] == 0:
        raise BadRequestError(f"output {name!r} holds no class scores to classify")
    k = min(k, a.shape[-1])
    order = np.argsort(-a.astype(np.float64), axis=-1, kind="stable")[..., :k]
    top = np.take_along_axis(a, order, axis=-1)
    out = np.empty(order.shape, dtype=BYTES_DTYPE)
    for index in np.ndindex(order.shape):
        out[index] = f"{top[index].item()}:{int(order[index])}"
    return out
