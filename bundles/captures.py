"""Capture files: field inputs a device kept because a candidate release tripped on them.

A device in a shadow stage or ramp (SPEC "Staged activation") may keep the inputs of a request
where the candidate disagreed with the active release, gave NaN/Inf, or had a small top-1
margin; it ships them to the manager (LAN upload, USB report) and the manager exports them as
one `.npz` per channel and release for retraining. This module is the one home of the file:

- an `.npz` (a zip of `.npy` members, as `numpy.savez` writes and `numpy.load` reads), one
  array per model input keyed by its input name, each holding ONE feed;
- plus the member `__satchel_meta__.npy`: the meta as canonical JSON, a 1-d uint8 array.

Decoding trusts nothing: the size is bounded before anything is read, every member is read
with a bounded read (a zip member that inflates past the limit is refused, whatever its header
says), each `.npy` header is parsed and its shape checked against the bytes that follow before
any array exists, pickles and object, structured or unicode arrays are refused, and member
names are plain input names (no paths). `encode_capture` applies the same checks, so a device
never writes a file the manager would refuse.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from satchel.bundles.canonical import decode_canonical, encode_canonical
from satchel.bundles.errors import BundleError, CaptureError
from satchel.bundles.identifiers import CHANNEL_RE, VERSION_RE

META_KEY = "__satchel_meta__"  # reserved member name: the meta, canonical JSON as uint8
REASONS = ("disagreement", "nonfinite", "low_margin")  # why a device kept a request's inputs
DEFAULT_MAX_BYTES = 1024 * 1024  # one capture file, as stored (bytes)
DECODED_FACTOR = 8  # the arrays may inflate to this many times the file's limit
MAX_INPUTS = 64  # model inputs in one capture
MAX_META_BYTES = 64 * 1024  # the meta document (bytes)
MAX_DIMS = 16  # dimensions of one array
# An input name as a member name: no '/', no '\\', no leading '.', so never a path.
INPUT_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:;,+=@#()\[\] -]{0,127}")
_DTYPE_KINDS = "biuf"  # bool, signed and unsigned integers, floats: what models take
_NPY_SUFFIX = ".npy"
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # zip member times, so one capture is one byte string
_META_FIELDS = (
    "channel", "version", "sequence", "active_version", "active_sequence", "reason",
    "captured_at", "figures",
)


@dataclass(frozen=True)
class Capture:
    """One decoded capture: the request's inputs (one feed each) and the validated meta."""

    inputs: dict[str, np.ndarray]
    meta: dict[str, Any]

    @property
    def channel(self) -> str:
        return str(self.meta["channel"])

    @property
    def version(self) -> str:
        return str(self.meta["version"])

    @property
    def sequence(self) -> int:
        return int(self.meta["sequence"])

    @property
    def reason(self) -> str:
        return str(self.meta["reason"])

    @property
    def captured_at(self) -> datetime:
        return parse_captured_at(self.meta["captured_at"])

    @property
    def figures(self) -> dict[str, Any]:
        return dict(self.meta["figures"])


def capture_name(data: bytes) -> str:
    """The file name a capture is kept and shipped under: `<sha256 of its bytes>.npz`."""
    return hashlib.sha256(data).hexdigest() + ".npz"


def encode_capture(inputs: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> bytes:
    """The capture file for `inputs` (input name -> one feed) and `meta`.

    Raises CaptureError (one line) if the meta is invalid, an input name could be a path or
    is reserved, or an array is not a plain numeric one.
    """
    checked = validate_meta(dict(meta))
    meta_bytes = encode_canonical(checked)
    if len(meta_bytes) > MAX_META_BYTES:
        raise CaptureError(f"capture meta is {len(meta_bytes)} bytes, over {MAX_META_BYTES}")
    if not inputs:
        raise CaptureError("a capture needs at least one input")
    if len(inputs) > MAX_INPUTS:
        raise CaptureError(f"a capture holds at most {MAX_INPUTS} inputs, not {len(inputs)}")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(inputs):
            array = np.asarray(inputs[name])
            _check_input_name(name)
            _check_array(name, array.dtype, array.shape)
            _write_member(zf, name, array)
        _write_member(zf, META_KEY, np.frombuffer(meta_bytes, dtype=np.uint8))
    return out.getvalue()


def decode_capture(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> Capture:
    """Read a capture file that came from a device, trusting nothing in it.

    Raises CaptureError (one line): over `max_bytes`, not a zip of `.npy` members, a member
    name that is a path or repeated, a pickle or an object/structured array, an array header
    that does not match its bytes, arrays inflating past `DECODED_FACTOR * max_bytes`, a
    missing or invalid meta.
    """
    if len(data) > max_bytes:
        raise CaptureError(f"capture is {len(data)} bytes, over the limit of {max_bytes}")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise CaptureError("capture is not an .npz file (not a zip archive)") from e
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_INPUTS + 1:
            raise CaptureError(f"capture has {len(infos)} members, more than {MAX_INPUTS + 1}")
        budget = DECODED_FACTOR * max_bytes
        arrays: dict[str, np.ndarray] = {}
        for info in infos:
            name = _member_key(info.filename)
            if name in arrays:
                raise CaptureError(f"capture repeats the member {name!r}")
            raw = _read_member(zf, info, budget)
            budget -= len(raw)
            arrays[name] = _parse_npy(name, raw)
    meta_array = arrays.pop(META_KEY, None)
    if meta_array is None:
        raise CaptureError(f"capture has no {META_KEY} member (not written by a Satchel agent)")
    if meta_array.dtype != np.uint8 or meta_array.ndim != 1:
        raise CaptureError(f"capture's {META_KEY} must be a 1-d uint8 array")
    if meta_array.size > MAX_META_BYTES:
        raise CaptureError(f"capture meta is {meta_array.size} bytes, over {MAX_META_BYTES}")
    try:
        meta = decode_canonical(meta_array.tobytes(), "capture meta")
    except BundleError as e:
        raise CaptureError(str(e)) from e
    if not isinstance(meta, dict):
        raise CaptureError("capture meta must be a JSON object")
    if not arrays:
        raise CaptureError("capture holds no input arrays")
    return Capture(inputs=arrays, meta=validate_meta(meta))


def validate_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """Check a capture's meta and return it. Fields beyond the required ones are kept as they
    are (a newer agent may add some). Raises CaptureError naming the first bad field."""
    for field in _META_FIELDS:
        if field not in meta:
            raise CaptureError(f"capture meta lacks {field!r}")
    _check_name(meta, "channel", CHANNEL_RE)
    _check_name(meta, "version", VERSION_RE)
    _check_name(meta, "active_version", VERSION_RE)
    _check_sequence(meta, "sequence")
    _check_sequence(meta, "active_sequence")
    if meta["reason"] not in REASONS:
        raise CaptureError(
            f"capture reason must be one of {', '.join(REASONS)}, not {str(meta['reason'])[:40]!r}"
        )
    parse_captured_at(meta["captured_at"])
    if not isinstance(meta["figures"], dict):
        raise CaptureError("capture meta 'figures' must be an object")
    return meta


def parse_captured_at(value: object) -> datetime:
    """An ISO 8601 UTC time (`2026-01-31T12:00:00Z`, fractions of a second allowed).
    Raises CaptureError."""
    text = value if isinstance(value, str) else ""
    try:
        when = datetime.fromisoformat(text) if text.endswith(("Z", "+00:00")) else None
    except ValueError:
        when = None
    if when is None or when.utcoffset() is None or when.utcoffset() != timezone.utc.utcoffset(None):
        raise CaptureError(
            f"capture meta 'captured_at' must be a UTC time like 2026-01-31T12:00:00Z, "
            f"not {str(value)[:40]!r}"
        )
    return when.astimezone(timezone.utc)


def _check_name(meta: dict[str, Any], field: str, rule: re.Pattern[str]) -> None:
    value = meta[field]
    if not isinstance(value, str) or rule.fullmatch(value) is None:
        raise CaptureError(f"capture meta {field!r} is not a valid name: {str(value)[:40]!r}")


def _check_sequence(meta: dict[str, Any], field: str) -> None:
    value = meta[field]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise CaptureError(f"capture meta {field!r} must be a non-negative integer")


def _check_input_name(name: object) -> None:
    if not isinstance(name, str) or INPUT_NAME_RE.fullmatch(name) is None or name == META_KEY:
        raise CaptureError(
            f"capture input name {str(name)[:60]!r} is not allowed (a plain name, no path)"
        )


def _check_array(name: str, dtype: np.dtype[Any], shape: tuple[int, ...]) -> None:
    if dtype.kind not in _DTYPE_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise CaptureError(f"capture input {name!r} has dtype {dtype.str}, not a numeric one")
    if len(shape) > MAX_DIMS:
        raise CaptureError(f"capture input {name!r} has {len(shape)} dimensions, over {MAX_DIMS}")


def _write_member(zf: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
    info = zipfile.ZipInfo(name + _NPY_SUFFIX, date_time=_FIXED_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o600 << 16
    zf.writestr(info, buf.getvalue())


def _member_key(filename: str) -> str:
    if not filename.endswith(_NPY_SUFFIX):
        raise CaptureError(f"capture member {filename[:60]!r} is not an .npy array")
    key = filename[: -len(_NPY_SUFFIX)]
    if key != META_KEY:
        _check_input_name(key)
    return key


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: int) -> bytes:
    """The member's bytes, never more than `budget` inflated, whatever its header claims."""
    if info.flag_bits & 0x1:
        raise CaptureError(f"capture member {info.filename[:60]!r} is encrypted")
    if info.file_size > budget:
        raise CaptureError(
            f"capture arrays inflate past {budget} bytes (member {info.filename[:60]!r})"
        )
    try:
        with zf.open(info) as member:
            raw = member.read(budget + 1)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as e:
        raise CaptureError(f"capture member {info.filename[:60]!r} cannot be read: {e}") from e
    if len(raw) > budget:
        raise CaptureError(
            f"capture arrays inflate past {budget} bytes (member {info.filename[:60]!r})"
        )
    return raw


def _parse_npy(name: str, raw: bytes) -> np.ndarray:
    """An array from `.npy` bytes: header first, its shape checked against the data's length
    before any array is made, never a pickle."""
    fp = io.BytesIO(raw)
    try:
        major, minor = np.lib.format.read_magic(fp)
        if (major, minor) == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp, max_header_size=10000)
        elif major in (2, 3) and minor == 0:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp, max_header_size=10000)
        else:
            raise CaptureError(f"capture member {name!r} has .npy format {major}.{minor}")
    except CaptureError:
        raise
    except (ValueError, TypeError, SyntaxError, OverflowError) as e:
        first = str(e).splitlines()[0][:80] if str(e) else type(e).__name__
        raise CaptureError(f"capture member {name!r} is not a valid .npy array: {first}") from e
    _check_array(name, dtype, shape)
    if any(not isinstance(d, int) or d < 0 for d in shape):
        raise CaptureError(f"capture member {name!r} has an invalid shape {shape}")
    data = raw[fp.tell():]
    expected = math.prod(shape) * dtype.itemsize
    if expected != len(data):
        raise CaptureError(
            f"capture member {name!r} declares {expected} bytes of data but holds {len(data)}"
        )
    flat = np.frombuffer(data, dtype=dtype)
    if fortran:
        return np.array(flat.reshape(shape[::-1]).transpose())
    return flat.reshape(shape).copy()
