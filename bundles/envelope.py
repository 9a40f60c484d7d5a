"""Signed JSON envelopes `{"signed": {...}, "signatures": [...]}` and threshold checks.

Used by the trust root, USB plans and device reports. Signatures cover the canonical
encoding of the `signed` object.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from satchel.bundles.canonical import decode_json, encode_canonical
from satchel.bundles.errors import (
    MalformedJSONError,
    SignatureError,
    ThresholdError,
    TooLargeError,
    UnknownKeyError,
)
from satchel.bundles.keys import PublicKey, Signature, SigningKey, parse_signatures, sign_all


@dataclass(frozen=True)
class Role:
    """Which keys may sign for a role, and how many of them must."""

    keyids: tuple[str, ...]
    threshold: int

    def to_dict(self) -> dict[str, Any]:
        return {"keyids": sorted(self.keyids), "threshold": self.threshold}


def check_threshold(
    data: bytes,
    signatures: list[Signature],
    keys: Mapping[str, PublicKey],
    role: Role,
    what: str,
) -> set[str]:
    """Return the key ids of `role` with a valid signature over `data`.

    Raises UnknownKeyError when no signature comes from a key of the role, SignatureError
    when a key of the role signed but the signature does not match (tampering), and
    ThresholdError when valid signatures are fewer than the role's threshold.
    """
    valid: set[str] = set()
    bad: list[str] = []
    unknown: list[str] = []
    for s in signatures:
        key = keys.get(s.keyid)
        if s.keyid not in role.keyids or key is None:
            unknown.append(s.keyid)
        elif key.verify(s.sig, data):
            valid.add(s.keyid)
        else:
            bad.append(s.keyid)
    if len(valid) >= role.threshold:
        return valid
    if bad:
        raise SignatureError(
            f"{what}: signature by key {bad[0][:12]} does not match (altered or corrupted)"
        )
    if not valid:
        names = ", ".join(k[:12] for k in unknown) or "none"
        raise UnknownKeyError(
            f"{what} is signed only by keys the trust root does not list ({names})"
        )
    raise ThresholdError(
        f"{what} has {len(valid)} valid signature(s) from trusted keys, {role.threshold} required"
    )


def sign_envelope(signed: dict[str, Any], keys: list[SigningKey]) -> bytes:
    """Return the canonical bytes of `{"signed": signed, "signatures": [...]}`."""
    body = encode_canonical(signed)
    sigs = [s.to_dict() for s in sign_all(body, keys)]
    return encode_canonical({"signed": signed, "signatures": sigs})


def open_envelope(
    data: bytes, what: str, max_bytes: int, max_signatures: int = 32
) -> tuple[dict[str, Any], list[Signature]]:
    """Parse an envelope without checking signatures. Raises FormatError / SignatureError."""
    if len(data) > max_bytes:
        raise TooLargeError(f"{what} is too large ({len(data)} bytes > {max_bytes})")
    obj = decode_json(data, what)
    if not isinstance(obj, dict) or set(obj) != {"signed", "signatures"}:
        raise MalformedJSONError(f"{what} must be an object with 'signed' and 'signatures'")
    signed = obj["signed"]
    if not isinstance(signed, dict):
        raise MalformedJSONError(f"{what}: 'signed' must be an object")
    return signed, parse_signatures(obj["signatures"], max_signatures)


def verify_envelope(
    data: bytes,
    keys: Mapping[str, PublicKey],
    role: Role,
    what: str,
    max_bytes: int = 16 * 1024 * 1024,
) -> dict[str, Any]:
    """Parse an envelope and check it is signed by a threshold of `role`; return `signed`.

    Raises FormatError subclasses for malformed input and TrustError subclasses for bad,
    unknown or too few signatures.
    """
    signed, sigs = open_envelope(data, what, max_bytes)
    check_threshold(encode_canonical(signed), sigs, keys, role, what)
    return signed
