"""Recipients of encrypted bundles: X25519 key pairs in PEM files (docs/ENCRYPTION.md).

A recipient is an X25519 public key: a device's own, which is its Ed25519 device key (made by
`satchel-agent init`, sent at enrollment, given to `satchel device add`) converted to X25519
as age does with ssh-ed25519 keys, so the manager knows every device's recipient already; a
device class's or a fleet's (`satchel keys recipient init NAME`); or the manager's, which lets
the manager re-wrap a bundle for devices enrolled later. Its fingerprint is the lowercase hex of
the first 16 bytes of the sha256 of the raw 32-byte public key, so `openssl pkey -pubin
-outform DER | tail -c 32 | sha256sum` recomputes it.

Public keys are SubjectPublicKeyInfo PEM ("PUBLIC KEY"), private keys PKCS#8 PEM ("PRIVATE
KEY"), both readable by `openssl pkey`; private keys are written mode 0600 and never leave the
machine that made them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from satchel.bundles.cryptinfo import RECIPIENT_NAME_RE
from satchel.bundles.errors import KeyFileError

PRIVATE_MODE = 0o600
_RAW = serialization.Encoding.Raw


def fingerprint(raw_public: bytes) -> str:
    """The fingerprint of a raw 32-byte X25519 public key."""
    return hashlib.sha256(raw_public).hexdigest()[:32]


def check_name(name: str) -> str:
    """Return `name` if it may name a recipient, else raise KeyFileError."""
    if not RECIPIENT_NAME_RE.fullmatch(name):
        raise KeyFileError(
            f"recipient name {name[:60]!r} must be letters, digits and . _ : @ - "
            "(up to 128, not starting with a punctuation mark)"
        )
    return name


@dataclass(frozen=True)
class Recipient:
    """Someone a bundle's data key is wrapped for: a name and an X25519 public key."""

    name: str
    raw: bytes  # 32 bytes

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.raw)

    @property
    def key(self) -> X25519PublicKey:
        return X25519PublicKey.from_public_bytes(self.raw)

    def to_pem(self) -> bytes:
        return self.key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @classmethod
    def from_pem(cls, name: str, data: bytes) -> Recipient:
        """Load a PEM X25519 public key, or a device's Ed25519 public key (its `device.pub`),
        converted. Raises KeyFileError."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            key = serialization.load_pem_public_key(data)
        except ValueError as e:
            raise KeyFileError(f"recipient {name}: not a PEM public key") from e
        raw_format = serialization.PublicFormat.Raw
        if isinstance(key, Ed25519PublicKey):
            return device_recipient_of(name, key.public_bytes(_RAW, raw_format))
        if not isinstance(key, X25519PublicKey):
            raise KeyFileError(f"recipient {name}: the public key is neither X25519 nor Ed25519")
        return cls(check_name(name), key.public_bytes(_RAW, raw_format))


@dataclass(frozen=True)
class Identity:
    """The private half of a recipient: what unwraps a data key."""

    name: str
    key: X25519PrivateKey

    @property
    def recipient(self) -> Recipient:
        raw = self.key.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)
        return Recipient(self.name, raw)

    @property
    def fingerprint(self) -> str:
        return self.recipient.fingerprint

    def to_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @classmethod
    def generate(cls, name: str) -> Identity:
        return cls(check_name(name), X25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, name: str, data: bytes) -> Identity:
        """Load a PEM X25519 private key. Raises KeyFileError."""
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as e:
            raise KeyFileError(
                f"identity {name}: not an unencrypted PEM private key (give NAME.key, not "
                "NAME.pub)"
            ) from e
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        if isinstance(key, Ed25519PrivateKey):  # a device key: its X25519 twin
            return device_identity_of(name, data)
        if not isinstance(key, X25519PrivateKey):
            raise KeyFileError(f"identity {name}: the private key is neither X25519 nor Ed25519")
        return cls(check_name(name), key)


def name_of(path: Path) -> str:
    """The recipient name a key file stands for: its file name without .pub/.key/.pem."""
    name = path.name
    for suffix in (".pem", ".pub", ".key", ".recipient"):
        name = name.removesuffix(suffix)
    return name


def parse_recipient_arg(arg: str) -> tuple[str, Path]:
    """`NAME=FILE` or `FILE` (named after the file) as given to `--encrypt-to`."""
    name, sep, path = arg.partition("=")
    if sep and name and "/" not in name:
        return name, Path(path)
    return name_of(Path(arg)), Path(arg)


def load_recipient(arg: str) -> Recipient:
    """Load a recipient from `NAME=FILE` or `FILE`. Raises KeyFileError."""
    name, path = parse_recipient_arg(arg)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise KeyFileError(f"cannot read recipient key {path}: {e.strerror}") from e
    return Recipient.from_pem(name, data)


def load_identity(path: Path, name: str | None = None) -> Identity:
    """Load an identity (X25519 private key) from `path`. Raises KeyFileError."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise KeyFileError(f"cannot read private key {path}: {e.strerror}") from e
    return Identity.from_pem(name or name_of(path), data)


# --- a device's recipient is its Ed25519 device key, converted (as age does with ssh-ed25519) --

_P = 2**255 - 19  # the field of Curve25519 and of Ed25519


def x25519_from_ed25519_public(raw: bytes) -> bytes:
    """The X25519 public key (Montgomery u = (1 + y) / (1 - y)) of the raw 32-byte Ed25519
    public key `raw` (libsodium's crypto_sign_ed25519_pk_to_curve25519). Raises KeyFileError
    for a key that is not 32 bytes or whose y is out of the field or 1 (no u)."""
    if len(raw) != 32:
        raise KeyFileError("an Ed25519 public key is 32 bytes")
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    if y >= _P or y == 1:
        raise KeyFileError("not a usable Ed25519 public key")
    u = (1 + y) * pow(1 - y, _P - 2, _P) % _P
    return u.to_bytes(32, "little")


def x25519_from_ed25519_seed(seed: bytes) -> X25519PrivateKey:
    """The X25519 private key whose public key is `x25519_from_ed25519_public` of the Ed25519
    key made from the 32-byte `seed`: the first half of SHA-512(seed), the same scalar the
    Ed25519 key signs with (X25519 clamps it the same way)."""
    if len(seed) != 32:
        raise KeyFileError("an Ed25519 private seed is 32 bytes")
    return X25519PrivateKey.from_private_bytes(hashlib.sha512(seed).digest()[:32])


def device_recipient_of(name: str, ed25519_public: bytes) -> Recipient:
    """The recipient of a device whose Ed25519 device key (the one it enrolled or was
    registered with) is `ed25519_public`."""
    return Recipient(check_name(name), x25519_from_ed25519_public(ed25519_public))


def device_identity_of(name: str, ed25519_pem: bytes) -> Identity:
    """The identity (X25519 private key) of a device, from its Ed25519 device key (PEM).
    Raises KeyFileError."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(ed25519_pem, password=None)
    except (ValueError, TypeError) as e:
        raise KeyFileError(f"device key of {name}: not an unencrypted PEM private key") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"device key of {name} is not Ed25519")
    seed = key.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    return Identity(check_name(name), x25519_from_ed25519_seed(seed))
