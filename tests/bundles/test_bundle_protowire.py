"""bundles/protowire.py, the one protobuf wire reader behind the ONNX readers: fields as
protobuf writes them, and one clear refusal for every malformed byte sequence."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from satchel.bundles.protowire import (
    FIXED32,
    FIXED64,
    LENGTH,
    VARINT,
    Field,
    WireError,
    encode_varint,
    fields,
    key,
    length_delimited,
    read_varint,
    varint_field,
)


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**31, 2**63 - 1, 2**64 - 1])
def test_a_varint_reads_back_as_written(value: int) -> None:
    data = encode_varint(value)
    assert read_varint(data, 0, len(data)) == (value, len(data))


def test_fields_are_what_protobuf_wrote() -> None:
    tensor = numpy_helper.from_array(np.array([1.0, 2.0], dtype=np.float32), name="w")
    data = tensor.SerializeToString()

    got = {f.number: f for f in fields(data, 0, len(data))}

    assert got[1].wire == VARINT and got[1].value == 2  # dims
    assert got[2].wire == VARINT and got[2].value == TensorProto.FLOAT  # data_type
    assert bytes(data[got[8].start:got[8].end]) == b"w"  # name
    assert bytes(data[got[9].start:got[9].end]) == tensor.raw_data  # raw_data
    assert onnx.TensorProto.FromString(b"".join(
        bytes(data[f.field_start:f.end]) for f in got.values())) == tensor


def test_written_fields_read_back() -> None:
    data = (varint_field(3, 7) + length_delimited(5, b"abc") + key(6, FIXED64) + bytes(8)
            + key(7, FIXED32) + bytes(4))

    assert list(fields(data, 0, len(data))) == [
        Field(3, VARINT, 0, 1, 2, 7), Field(5, LENGTH, 2, 4, 7, 0),
        Field(6, FIXED64, 7, 8, 16, 0), Field(7, FIXED32, 16, 17, 21, 0),
    ]


@pytest.mark.parametrize(("data", "reason"), [
    (b"\x80", "truncated or overlong varint"),  # a varint cut short
    (b"\x08" + b"\xff" * 10 + b"\x01", "truncated or overlong varint"),  # over 64 bits
    (b"\x00\x01", "field number 0"),
    (b"\x0b", "wire type 3"),  # a group: not in ONNX
    (b"\x0e", "wire type 6"),
    (b"\x0a\x05abc", "runs past the end"),  # a length beyond the message
    (b"\x09\x00\x00", "runs past the end"),  # a fixed64 cut short
])
def test_malformed_bytes_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(WireError, match=reason):
        list(fields(data, 0, len(data)))
