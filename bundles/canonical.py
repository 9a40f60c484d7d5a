"""Canonical JSON: UTF-8, sorted keys, no insignificant whitespace, no NaN/Infinity.

The signed bytes of every document are its canonical encoding, so that anyone can
re-encode a parsed document and get the same bytes back.
"""

from __future__ import annotations

import json
from typing import Any

from satchel.bundles.errors import MalformedJSONError


def encode_canonical(obj: Any) -> bytes:
    """Encode `obj` as canonical JSON bytes.

    Raises MalformedJSONError if `obj` holds NaN/Infinity or a non-JSON type.
    """
    try:
        text = json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
        return text.encode("utf-8")  # fails on lone surrogates such as "\ud800"
    except (TypeError, ValueError) as e:
        raise MalformedJSONError(f"cannot encode as canonical JSON: {e}") from e


def _reject_constant(name: str) -> Any:
    raise MalformedJSONError(f"JSON contains {name}, which is not allowed")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise MalformedJSONError(f"JSON object repeats the key {key!r}")
        out[key] = value
    return out


def decode_json(data: bytes, what: str) -> Any:
    """Parse strict JSON (UTF-8, no duplicate keys, no NaN); `what` names the document.

    Raises MalformedJSONError with a one-line message.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MalformedJSONError(f"{what} is not valid UTF-8") from e
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except MalformedJSONError:
        raise
    except (ValueError, RecursionError) as e:
        raise MalformedJSONError(f"{what} is not valid JSON: {str(e).splitlines()[0]}") from e


def decode_canonical(data: bytes, what: str) -> Any:
    """Parse JSON that must already be in canonical form (signed documents).

    Raises MalformedJSONError if it does not parse or is not canonical.
    """
    obj = decode_json(data, what)
    if encode_canonical(obj) != data:
        raise MalformedJSONError(f"{what} is not canonical JSON")
    return obj
