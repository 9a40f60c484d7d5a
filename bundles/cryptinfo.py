"""The signed half of an encrypted bundle: the manifest's `encryption` object (bundles/crypt.py
does the cryptography; this module imports none, so reading a manifest stays light).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from satchel.bundles.errors import WrongTypeError
from satchel.bundles.schema import check_keys, get, get_int, get_str

SCHEME = "x25519-hkdf-sha256+aes-256-gcm-stream/1"
KEYS_MEMBER = "keys.json"  # the tar member after manifest.sig in an encrypted bundle
DEFAULT_SEGMENT = 64 * 1024  # bytes of plaintext per sealed segment (as age)
MIN_SEGMENT = 4096
MAX_SEGMENT = 4 * 1024 * 1024
MAX_KEYS_BYTES = 4 * 1024 * 1024  # keys.json
MAX_RECIPIENTS = 10_000
RECIPIENT_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._:@-]{0,127}")
FINGERPRINT_RE = re.compile(r"[0-9a-f]{32}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


# --- the signed part: manifest "encryption" ---------------------------------------------------


@dataclass(frozen=True)
class EncryptionInfo:
    """The manifest's `encryption` object: how every payload is encrypted, the commitment to
    the data key, and whom the bundle was built for (keys.json may list more, re-wrapped
    later)."""

    scheme: str
    segment_size: int
    key_commitment: str
    recipients: tuple[tuple[str, str], ...]  # (name, fingerprint) at build time

    @classmethod
    def from_dict(cls, d: Any) -> EncryptionInfo:
        w = "manifest encryption"
        check_keys(d, w, {"scheme", "segment_size", "key_commitment", "recipients"})
        scheme = get_str(d, "scheme", w)
        if scheme != SCHEME:
            raise WrongTypeError(f"{w}: unknown scheme {scheme[:60]!r} (update the agent)")
        recipients = get(d, "recipients", list, w)
        if not recipients or len(recipients) > MAX_RECIPIENTS:
            raise WrongTypeError(f"{w}: 'recipients' must list 1 to {MAX_RECIPIENTS}")
        parsed = []
        for r in recipients:
            check_keys(r, f"{w} recipient", {"name", "fingerprint"})
            parsed.append((
                get_str(r, "name", f"{w} recipient", RECIPIENT_NAME_RE),
                get_str(r, "fingerprint", f"{w} recipient", FINGERPRINT_RE),
            ))
        return cls(
            scheme=scheme,
            segment_size=get_int(d, "segment_size", w, MIN_SEGMENT, MAX_SEGMENT),
            key_commitment=get_str(d, "key_commitment", w, _HEX64),
            recipients=tuple(parsed),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme,
            "segment_size": self.segment_size,
            "key_commitment": self.key_commitment,
            "recipients": [{"name": n, "fingerprint": f} for n, f in self.recipients],
        }
