"""Capture files (`satchel.bundles.captures`): what a device writes round-trips exactly, and
every hostile file a device (or a stick) could hand the manager is refused in one line."""

from __future__ import annotations

import io
import zipfile
from typing import Any

import numpy as np
import pytest

from satchel.bundles.canonical import encode_canonical
from satchel.bundles.captures import (
    META_KEY,
    capture_name,
    decode_capture,
    encode_capture,
)
from satchel.bundles.errors import CaptureError

LIMIT = 1024 * 1024


def _meta(**over: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "channel": "kws", "version": "1.1", "sequence": 2, "active_version": "1.0",
        "active_sequence": 1, "reason": "disagreement", "captured_at": "2026-12-01T07:00:00Z",
        "figures": {"agreement": 0.25, "top1_active": 3, "top1_candidate": 7},
    }
    meta.update(over)
    return meta


def _zip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return out.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=True)
    return buf.getvalue()


def _meta_member(meta: dict[str, Any]) -> bytes:
    return _npy(np.frombuffer(encode_canonical(meta), dtype=np.uint8))


def test_capture_round_trips_inputs_and_meta() -> None:
    inputs = {"audio": np.linspace(-1, 1, 160, dtype=np.float32).reshape(1, 160),
              "state": np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3))}
    data = encode_capture(inputs, _meta())
    capture = decode_capture(data, LIMIT)
    assert set(capture.inputs) == {"audio", "state"}
    for name, array in inputs.items():
        assert capture.inputs[name].dtype == array.dtype
        np.testing.assert_array_equal(capture.inputs[name], array)
    assert capture.meta == _meta()
    assert (capture.channel, capture.version, capture.sequence) == ("kws", "1.1", 2)
    assert capture.reason == "disagreement"
    assert capture.captured_at.isoformat() == "2026-12-01T07:00:00+00:00"


def test_capture_is_a_plain_npz_numpy_reads() -> None:
    data = encode_capture({"x": np.ones((1, 4), np.float32)}, _meta())
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted(["x", META_KEY])


def test_same_capture_gives_same_bytes_and_name() -> None:
    one = encode_capture({"x": np.ones((1, 4), np.float32)}, _meta())
    two = encode_capture({"x": np.ones((1, 4), np.float32)}, _meta())
    assert one == two
    assert capture_name(one) == capture_name(two)
    assert capture_name(one).endswith(".npz") and len(capture_name(one)) == 64 + 4


def test_fractional_seconds_in_captured_at_are_accepted() -> None:
    data = encode_capture({"x": np.zeros(3, np.float32)},
                          _meta(captured_at="2026-12-01T07:00:00.123456+00:00"))
    assert decode_capture(data, LIMIT).captured_at.microsecond == 123456


def test_pickled_object_array_is_refused() -> None:
    evil = np.array([{"__reduce__": "os.system"}], dtype=object)
    data = _zip({"x.npy": _npy(evil), f"{META_KEY}.npy": _meta_member(_meta())})
    with pytest.raises(CaptureError, match="dtype"):
        decode_capture(data, LIMIT)


def test_savez_with_object_array_is_refused() -> None:
    buf = io.BytesIO()
    np.savez(buf, x=np.array([1, "a"], dtype=object),
             **{META_KEY: np.frombuffer(encode_canonical(_meta()), np.uint8)})
    with pytest.raises(CaptureError):
        decode_capture(buf.getvalue(), LIMIT)


def test_structured_and_unicode_arrays_are_refused() -> None:
    for array in (np.zeros(2, dtype=[("a", "f4"), ("b", "i4")]), np.array(["abc"])):
        data = _zip({"x.npy": _npy(array), f"{META_KEY}.npy": _meta_member(_meta())})
        with pytest.raises(CaptureError, match="dtype"):
            decode_capture(data, LIMIT)


def test_zip_bomb_is_refused_before_it_inflates() -> None:
    # 200 MB of zeros deflates to ~200 KB: under the file limit, far over the decoded one.
    bomb = _npy(np.zeros(50_000_000, dtype=np.float32))
    data = _zip({"x.npy": bomb, f"{META_KEY}.npy": _meta_member(_meta())})
    assert len(data) < LIMIT
    with pytest.raises(CaptureError, match="inflate"):
        decode_capture(data, LIMIT)


def test_zip_member_that_lies_about_its_size_is_refused() -> None:
    data = bytearray(_zip({"x.npy": _npy(np.zeros(100_000, np.float32)),
                           f"{META_KEY}.npy": _meta_member(_meta())}))
    # Shrink the declared uncompressed size in the central directory of the first member.
    cd = data.find(b"PK\x01\x02")
    data[cd + 24:cd + 28] = (16).to_bytes(4, "little")
    with pytest.raises(CaptureError):
        decode_capture(bytes(data), LIMIT)


def test_oversize_file_is_refused_unread() -> None:
    data = encode_capture({"x": np.random.default_rng(0).random(40_000)}, _meta())
    with pytest.raises(CaptureError, match="over the limit"):
        decode_capture(data, 100_000)


def test_missing_meta_is_refused() -> None:
    data = _zip({"x.npy": _npy(np.zeros(3, np.float32))})
    with pytest.raises(CaptureError, match=META_KEY):
        decode_capture(data, LIMIT)


def test_bad_reason_is_refused() -> None:
    data = _zip({"x.npy": _npy(np.zeros(3, np.float32)),
                 f"{META_KEY}.npy": _meta_member(_meta(reason="curiosity"))})
    with pytest.raises(CaptureError, match="reason"):
        decode_capture(data, LIMIT)
    with pytest.raises(CaptureError, match="reason"):
        encode_capture({"x": np.zeros(3)}, _meta(reason="curiosity"))


@pytest.mark.parametrize(
    ("field", "value"),
    [("channel", "../etc"), ("sequence", -1), ("sequence", True), ("active_sequence", "1"),
     ("captured_at", "2026-12-01 07:00:00"), ("captured_at", "2026-12-01T07:00:00+02:00"),
     ("figures", [1, 2]), ("version", "")],
)
def test_invalid_meta_field_is_refused(field: str, value: Any) -> None:
    data = _zip({"x.npy": _npy(np.zeros(3, np.float32)),
                 f"{META_KEY}.npy": _meta_member(_meta(**{field: value}))})
    with pytest.raises(CaptureError, match=field):
        decode_capture(data, LIMIT)


def test_meta_that_is_not_canonical_json_is_refused() -> None:
    loose = np.frombuffer(b'{ "channel": "kws" }', dtype=np.uint8)
    data = _zip({"x.npy": _npy(np.zeros(3, np.float32)), f"{META_KEY}.npy": _npy(loose)})
    with pytest.raises(CaptureError, match="canonical"):
        decode_capture(data, LIMIT)


@pytest.mark.parametrize("member", ["../x.npy", "a/b.npy", "/abs.npy", ".hidden.npy",
                                    "x\\y.npy", "notes.txt"])
def test_path_like_member_names_are_refused(member: str) -> None:
    data = _zip({member: _npy(np.zeros(3, np.float32)), f"{META_KEY}.npy": _meta_member(_meta())})
    with pytest.raises(CaptureError, match="member|input name"):
        decode_capture(data, LIMIT)


def test_path_like_input_name_is_refused_when_encoding() -> None:
    with pytest.raises(CaptureError, match="input name"):
        encode_capture({"../x": np.zeros(3)}, _meta())
    with pytest.raises(CaptureError, match="input name"):
        encode_capture({META_KEY: np.zeros(3)}, _meta())


def test_repeated_member_is_refused() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf, pytest.warns(UserWarning):
        zf.writestr("x.npy", _npy(np.zeros(3, np.float32)))
        zf.writestr("x.npy", _npy(np.ones(3, np.float32)))
        zf.writestr(f"{META_KEY}.npy", _meta_member(_meta()))
    with pytest.raises(CaptureError, match="repeats"):
        decode_capture(out.getvalue(), LIMIT)


def test_npy_header_claiming_more_data_than_present_is_refused() -> None:
    honest = _npy(np.zeros(4, np.float32))
    lying = honest.replace(b"(4,)", b"(9999999999,)".ljust(4))
    header_len = int.from_bytes(honest[8:10], "little")
    pad = len(lying) - len(honest)
    lying = lying[:8] + (header_len + pad).to_bytes(2, "little") + lying[10:]
    data = _zip({"x.npy": lying, f"{META_KEY}.npy": _meta_member(_meta())})
    with pytest.raises(CaptureError):
        decode_capture(data, LIMIT)


def test_garbage_is_refused_in_one_line() -> None:
    for data in (b"", b"not a zip at all", b"PK\x03\x04" + b"\0" * 40):
        with pytest.raises(CaptureError) as err:
            decode_capture(data, LIMIT)
        assert "\n" not in str(err.value)


def test_capture_without_inputs_is_refused() -> None:
    with pytest.raises(CaptureError, match="at least one input"):
        encode_capture({}, _meta())
    with pytest.raises(CaptureError, match="no input"):
        decode_capture(_zip({f"{META_KEY}.npy": _meta_member(_meta())}), LIMIT)
