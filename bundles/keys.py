"""Ed25519 keys, key ids and detached signatures.

A key id is the lowercase hex sha256 of the raw 32-byte public key, so it can be
recomputed from the PEM public key with stock tools.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from satchel.bundles.errors import KeyFileError, SignatureError
from satchel.bundles.identifiers import SHA256_RE

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# cryptography (~13 MB of memory, ~20 ms of imports) loads when a key first signs or checks a
# signature: a plain PKCS#8 signing key is read without it, so `satchel bundle build` runs
# its model before the library is in memory (issue 14: the build's peak is while the model
# runs). Its `serialization` (PEM, PKCS#8, with its SSH and cipher modules) is imported only
# where keys are written or read in any other form.

# A PKCS#8 Ed25519 private key without attributes, as DER: this prefix, then the 32-byte seed
# (RFC 8410; what cryptography writes for an unencrypted key).
_PKCS8_ED25519_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
_PEM_PRIVATE = (b"-----BEGIN PRIVATE KEY-----", b"-----END PRIVATE KEY-----")


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key."""

    raw: bytes

    @property
    def keyid(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True if `signature` is a valid Ed25519 signature of `data` by this key."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except (InvalidSignature, ValueError):
            return False
        return True

    def to_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        key = Ed25519PublicKey.from_public_bytes(self.raw)
        return key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def to_dict(self) -> dict[str, Any]:
        return {"keytype": "ed25519", "public": self.raw.hex()}

    @classmethod
    def from_dict(cls, d: Any) -> PublicKey:
        """Parse `{"keytype": "ed25519", "public": HEX}`. Raises KeyFileError."""
        if not isinstance(d, dict) or d.get("keytype") != "ed25519":
            raise KeyFileError("trust document lists a key that is not ed25519")
        try:
            raw = bytes.fromhex(str(d.get("public", "")))
        except ValueError as e:
            raise KeyFileError("trust document lists a key whose public value is not hex") from e
        if len(raw) != 32:
            raise KeyFileError("trust document lists an ed25519 key that is not 32 bytes")
        return cls(raw)

    @classmethod
    def from_pem(cls, data: bytes) -> PublicKey:
        """Load a PEM public key. Raises KeyFileError."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            key = serialization.load_pem_public_key(data)
        except ValueError as e:
            raise KeyFileError("not a PEM public key") from e
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError("public key is not Ed25519")
        return cls(key.public_bytes_raw())


class SigningKey:
    """An Ed25519 private key that signs bundles, plans, reports or trust documents: a
    cryptography key, or the 32-byte seed of one made when first needed."""

    def __init__(self, private: Ed25519PrivateKey | None = None, *,
                 seed: bytes | None = None) -> None:
        if (private is None) == (seed is None):
            raise ValueError("give a private key or its seed")
        self._key = private
        self._seed = seed
        self._public: PublicKey | None = None

    def _private(self) -> Ed25519PrivateKey:
        if self._key is None:
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

            assert self._seed is not None
            self._key = Ed25519PrivateKey.from_private_bytes(self._seed)
        return self._key

    @property
    def public(self) -> PublicKey:
        if self._public is None:
            self._public = PublicKey(self._private().public_key().public_bytes_raw())
        return self._public

    @property
    def keyid(self) -> str:
        return self.public.keyid

    @classmethod
    def generate(cls) -> SigningKey:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return cls(Ed25519PrivateKey.generate())

    def sign(self, data: bytes) -> bytes:
        return self._private().sign(data)

    def to_pem(self, passphrase: bytes | None = None) -> bytes:
        """PKCS#8 PEM, encrypted with the best available cipher when a passphrase is given."""
        from cryptography.hazmat.primitives import serialization

        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase)
            if passphrase
            else serialization.NoEncryption()
        )
        return self._private().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )

    @classmethod
    def from_pem(cls, data: bytes, passphrase: bytes | None = None) -> SigningKey:
        """Load a PEM private key. Raises KeyFileError (wrong passphrase, not Ed25519...)."""
        if not passphrase:
            seed = _plain_pkcs8_seed(data)
            if seed is not None:
                return cls(seed=seed)
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        try:
            key = serialization.load_pem_private_key(data, password=passphrase or None)
        except TypeError as e:
            if passphrase:
                raise KeyFileError("key file is not encrypted but a passphrase was given") from e
            raise KeyFileError("key file is encrypted: give its passphrase") from e
        except ValueError as e:
            if passphrase:
                raise KeyFileError("cannot decrypt key file: wrong passphrase?") from e
            raise KeyFileError("not a PEM private key") from e
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError("private key is not Ed25519")
        return cls(key)


def _plain_pkcs8_seed(data: bytes) -> bytes | None:
    """The seed of `data` when it is exactly one unencrypted PKCS#8 Ed25519 key in PEM (any
    32 bytes are a valid seed); None for anything else, which cryptography then reads."""
    lines = data.strip().splitlines()
    if len(lines) < 3 or (lines[0].strip(), lines[-1].strip()) != _PEM_PRIVATE:
        return None
    try:
        der = base64.b64decode(b"".join(line.strip() for line in lines[1:-1]), validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(der) != len(_PKCS8_ED25519_PREFIX) + 32 or not der.startswith(_PKCS8_ED25519_PREFIX):
        return None
    return der[len(_PKCS8_ED25519_PREFIX):]


@dataclass(frozen=True)
class Signature:
    keyid: str
    sig: bytes

    def to_dict(self) -> dict[str, str]:
        return {"keyid": self.keyid, "sig": base64.b64encode(self.sig).decode("ascii")}

    @classmethod
    def from_dict(cls, d: Any) -> Signature:
        """Parse `{"keyid": HEX, "sig": BASE64}`. Raises SignatureError."""
        if not isinstance(d, dict) or set(d) != {"keyid", "sig"}:
            raise SignatureError("signature entry must have exactly 'keyid' and 'sig'")
        keyid, sig = d["keyid"], d["sig"]
        if not isinstance(keyid, str) or not isinstance(sig, str):
            raise SignatureError("signature 'keyid' and 'sig' must be strings")
        if not SHA256_RE.fullmatch(keyid):  # a key id is a sha256
            raise SignatureError("signature 'keyid' is not a lowercase hex sha256")
        try:
            raw = base64.b64decode(sig, validate=True)
        except (binascii.Error, ValueError) as e:
            raise SignatureError(f"signature by key {keyid[:12]} is not base64") from e
        if len(raw) != 64:
            raise SignatureError(f"signature by key {keyid[:12]} is not 64 bytes")
        # The unused low bits of the last base64 digit must be zero: one spelling per signature.
        if base64.b64encode(raw).decode("ascii") != sig:
            raise SignatureError(f"signature by key {keyid[:12]} is not canonical base64")
        return cls(keyid, raw)


def sign_all(data: bytes, keys: list[SigningKey]) -> list[Signature]:
    """Sign `data` with every key, one signature each, ordered by key id."""
    unique = {k.keyid: k for k in keys}
    return [Signature(kid, unique[kid].sign(data)) for kid in sorted(unique)]


def parse_signatures(obj: Any, max_count: int) -> list[Signature]:
    """Parse a JSON list of signature entries. Raises SignatureError."""
    if not isinstance(obj, list):
        raise SignatureError("signatures must be a JSON list")
    if not obj:
        raise SignatureError("no signatures")
    if len(obj) > max_count:
        raise SignatureError(f"too many signatures ({len(obj)} > {max_count})")
    return [Signature.from_dict(d) for d in obj]
