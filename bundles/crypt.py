"""Encrypted bundles: payloads compressed, then encrypted under one random data key, which is
wrapped for each recipient in keys.json, a tar member outside the signed manifest
(docs/ENCRYPTION.md).

- Payloads: each zstd frame is cut into `segment_size` segments, each sealed with AES-256-GCM
  under a per-payload key (HKDF-SHA256 of the data key and the payload path) with the nonce
  `11-byte big-endian counter || last-segment flag` (age's STREAM construction): a segment
  cannot be moved, dropped, repeated or the stream cut short without failing its tag, and a
  device decrypts with one segment in memory. The signed manifest keeps, per payload, the
  ciphertext's size, sha256 and chunk index (the member fields a stock `sha256sum` checks)
  and the plaintext's size and sha256.
- Data key: 32 random bytes; the manifest signs `key_commitment` = HKDF(data key, "commit"),
  so a key unwrapped from a tampered keys.json is refused before a byte is decrypted, and no
  keys.json can make a device accept anything but the signed ciphertext and content.
- Wrapping (as age's X25519 recipients): an ephemeral X25519 key per recipient; the wrap key is
  HKDF-SHA256(shared secret, salt = ephemeral || recipient public key, "satchel/v1/wrap"); the
  data key is sealed under it with AES-256-GCM (nonce zero: each wrap key is used once).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from satchel.bundles.canonical import decode_json, encode_canonical
from satchel.bundles.cryptinfo import (
    DEFAULT_SEGMENT,
    FINGERPRINT_RE,
    KEYS_MEMBER,
    MAX_RECIPIENTS,
    RECIPIENT_NAME_RE,
    SCHEME,
    EncryptionInfo,
)
from satchel.bundles.errors import (
    DecryptionError,
    NotARecipientError,
    PayloadHashError,
    TruncatedBundleError,
    WrappedKeyError,
)
from satchel.bundles.recipients import Identity, Recipient
from satchel.bundles.schema import check_keys, get, get_str

if TYPE_CHECKING:
    from satchel.bundles.reader import VerifiedBundle

TAG = 16  # bytes of GCM tag per segment


def _hkdf(secret: bytes, info: bytes, salt: bytes | None = None) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(secret)


def key_commitment(data_key: bytes) -> str:
    return _hkdf(data_key, b"satchel/v1/commit").hex()


def payload_key(data_key: bytes, path: str) -> bytes:
    return _hkdf(data_key, b"satchel/v1/payload\0" + path.encode("utf-8"))


def _nonce(counter: int, last: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def ciphertext_size(plain_size: int, segment_size: int) -> int:
    """Bytes of ciphertext for `plain_size` bytes of zstd frame (at least one segment)."""
    segments = max(1, -(-plain_size // segment_size))
    return plain_size + TAG * segments


# --- the unsigned part: keys.json -------------------------------------------------------------


@dataclass(frozen=True)
class Stanza:
    """The data key wrapped for one recipient."""

    recipient: str
    fingerprint: str
    ephemeral: bytes  # 32-byte X25519 public key
    wrapped: bytes  # 48 bytes: the sealed data key and its tag

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipient": self.recipient,
            "fingerprint": self.fingerprint,
            "ephemeral": base64.b64encode(self.ephemeral).decode("ascii"),
            "wrapped": base64.b64encode(self.wrapped).decode("ascii"),
        }


def _b64(d: dict[str, Any], name: str, where: str, size: int) -> bytes:
    try:
        raw = base64.b64decode(get_str(d, name, where), validate=True)
    except (binascii.Error, ValueError) as e:
        raise WrappedKeyError(f"{where}: '{name}' is not base64") from e
    if len(raw) != size:
        raise WrappedKeyError(f"{where}: '{name}' is not {size} bytes")
    return raw


@dataclass(frozen=True)
class KeyFile:
    """keys.json: one stanza per recipient. Unsigned; it can only fail to unlock a bundle."""

    stanzas: tuple[Stanza, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.recipient for s in self.stanzas)

    def to_bytes(self) -> bytes:
        return encode_canonical({"format": 1, "stanzas": [s.to_dict() for s in self.stanzas]})

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyFile:
        """Parse keys.json. Raises WrappedKeyError (a DecryptionError)."""
        try:
            d = decode_json(data, KEYS_MEMBER)
            w = KEYS_MEMBER
            check_keys(d, w, {"format", "stanzas"})
            if d["format"] != 1:
                raise WrappedKeyError(f"{w}: unknown format {str(d['format'])[:20]}")
            raw = get(d, "stanzas", list, w)
            if not raw or len(raw) > MAX_RECIPIENTS:
                raise WrappedKeyError(f"{w} must list 1 to {MAX_RECIPIENTS} recipients")
            stanzas = []
            for s in raw:
                check_keys(s, f"{w} stanza", {"recipient", "fingerprint", "ephemeral", "wrapped"})
                stanzas.append(Stanza(
                    recipient=get_str(s, "recipient", f"{w} stanza", RECIPIENT_NAME_RE),
                    fingerprint=get_str(s, "fingerprint", f"{w} stanza", FINGERPRINT_RE),
                    ephemeral=_b64(s, "ephemeral", f"{w} stanza", 32),
                    wrapped=_b64(s, "wrapped", f"{w} stanza", 32 + TAG),
                ))
        except WrappedKeyError:
            raise
        except Exception as e:  # noqa: BLE001 - a FormatError from the shared parsers
            raise WrappedKeyError(f"{KEYS_MEMBER} is malformed: {e}") from e
        return cls(tuple(stanzas))


def _wrap_key(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    if not any(shared):
        raise WrappedKeyError("a recipient key is a low-order point (refused)")
    return _hkdf(shared, b"satchel/v1/wrap", salt=ephemeral + recipient)


def wrap(data_key: bytes, recipient: Recipient) -> Stanza:
    """The data key sealed for `recipient` under a fresh ephemeral key."""
    eph = X25519PrivateKey.generate()
    eph_raw = eph.public_key().public_bytes_raw()
    try:
        shared = eph.exchange(recipient.key)
    except ValueError as e:
        raise WrappedKeyError(f"recipient {recipient.name}: unusable public key") from e
    key = _wrap_key(shared, eph_raw, recipient.raw)
    sealed = AESGCM(key).encrypt(b"\0" * 12, data_key, b"satchel/v1/wrap")
    return Stanza(recipient.name, recipient.fingerprint, eph_raw, sealed)


def unwrap(stanza: Stanza, identity: Identity) -> bytes | None:
    """The data key in `stanza` if `identity` opens it, else None."""
    try:
        shared = identity.key.exchange(X25519PublicKey.from_public_bytes(stanza.ephemeral))
        key = _wrap_key(shared, stanza.ephemeral, identity.recipient.raw)
        return AESGCM(key).decrypt(b"\0" * 12, stanza.wrapped, b"satchel/v1/wrap")
    except (InvalidTag, ValueError, WrappedKeyError):
        return None


def unlock(
    keys: KeyFile,
    info: EncryptionInfo,
    identities: Iterable[Identity],
    what: str,
    who: str,
) -> bytes:
    """The data key of a bundle (`what`, e.g. "bundle kws 2.0.0") for one of `identities`
    (`who`, e.g. "device cam-7"), checked against the signed commitment.

    Raises NotARecipientError (no stanza for any identity) and WrappedKeyError (a stanza for
    us that does not open, or opens to a key the manifest did not commit to).
    """
    identities = list(identities)
    mine = [
        (s, i) for s in keys.stanzas for i in identities if hmac.compare_digest(
            s.fingerprint, i.fingerprint)
    ]
    if not mine:
        shown = [n if len(n) <= 40 else n[:39] + "~" for n in keys.names[:5]]
        names = ", ".join(shown) + (f", ... ({len(keys.names)} in all)"
                                    if len(keys.names) > 5 else "")
        raise NotARecipientError(
            f"{what} is encrypted for other devices (recipients: {names}), not for {who}"
        )
    for stanza, identity in mine:
        data_key = unwrap(stanza, identity)
        if data_key is not None and hmac.compare_digest(
            key_commitment(data_key), info.key_commitment
        ):
            return data_key
    raise WrappedKeyError(
        f"{what}: the key wrapped for {who} in {KEYS_MEMBER} does not unlock it "
        "(keys.json altered or corrupted; refused)"
    )


# --- build side ------------------------------------------------------------------------------


class Writable(Protocol):
    def write(self, data: bytes) -> int: ...


class SegmentSealer:
    """A write-only file that seals what it is given in segments and writes them to `out`.
    `finish` seals the last (possibly empty) segment; until then one segment is held back,
    because the last one carries the flag."""

    def __init__(self, out: Writable, key: bytes, segment_size: int) -> None:
        self.out = out
        self.aead = AESGCM(key)
        self.segment_size = segment_size
        self.counter = 0
        self.buffer = bytearray()

    def write(self, data: bytes) -> int:
        self.buffer += data
        s = self.segment_size
        # keep at least one byte back: the last segment is only known at finish()
        while len(self.buffer) > s:
            self._seal(bytes(self.buffer[:s]), last=False)
            del self.buffer[:s]
        return len(data)

    def flush(self) -> None:
        """Nothing to do: a segment is sealed once it is whole."""

    def _seal(self, segment: bytes, last: bool) -> None:
        self.out.write(self.aead.encrypt(_nonce(self.counter, last), segment, None))
        self.counter += 1

    def finish(self) -> None:
        self._seal(bytes(self.buffer), last=True)
        self.buffer = bytearray()


@dataclass
class BundleEncryption:
    """What a build encrypts with: a fresh data key and the recipients it is wrapped for."""

    recipients: tuple[Recipient, ...]
    segment_size: int = DEFAULT_SEGMENT
    data_key: bytes = b""

    def __post_init__(self) -> None:
        if not self.recipients:
            raise ValueError("an encrypted bundle needs at least one recipient")
        fps = [r.fingerprint for r in self.recipients]
        if len(set(fps)) != len(fps):
            raise ValueError("the same recipient key is given twice")
        if not self.data_key:
            self.data_key = os.urandom(32)

    def sealer(self, path: str, out: Writable) -> SegmentSealer:
        return SegmentSealer(out, payload_key(self.data_key, path), self.segment_size)

    def info(self) -> EncryptionInfo:
        return EncryptionInfo(
            scheme=SCHEME,
            segment_size=self.segment_size,
            key_commitment=key_commitment(self.data_key),
            recipients=tuple((r.name, r.fingerprint) for r in self.recipients),
        )

    def key_file(self) -> KeyFile:
        return KeyFile(tuple(wrap(self.data_key, r) for r in self.recipients))


def rewrapped(
    keys: KeyFile, data_key: bytes, add: Iterable[Recipient], remove: Iterable[str] = ()
) -> KeyFile:
    """`keys` with stanzas for `add` (replacing any with the same fingerprint) and without
    those whose recipient name or fingerprint is in `remove`."""
    add = list(add)
    drop = set(remove) | {r.fingerprint for r in add}
    kept = [s for s in keys.stanzas if s.recipient not in drop and s.fingerprint not in drop]
    stanzas = (*kept, *(wrap(data_key, r) for r in add))
    if not stanzas:
        raise WrappedKeyError("re-wrapping would leave the bundle with no recipient")
    return KeyFile(tuple(stanzas))


# --- device side -----------------------------------------------------------------------------


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes | memoryview: ...


class SegmentOpener:
    """A read-only view of the plaintext of one payload's ciphertext, read from `source`
    (which hands out only bytes already checked against the signed chunk index, or hashed):
    one segment in memory at a time; a segment whose tag fails is refused."""

    def __init__(
        self, source: Readable, key: bytes, segment_size: int, ciphertext_size: int, path: str
    ) -> None:
        self.source = source
        self.aead = AESGCM(key)
        self.sealed_size = segment_size + TAG
        self.remaining = ciphertext_size
        self.counter = 0
        self.path = path
        self.plain = memoryview(b"")

    def read(self, n: int = -1) -> bytes | memoryview:
        if not self.plain:
            if self.remaining <= 0:
                return b""
            self.plain = memoryview(self._open_next())
            if not self.plain:
                return b""
        if n < 0 or n >= len(self.plain):
            out, self.plain = self.plain, memoryview(b"")
        else:
            out, self.plain = self.plain[:n], self.plain[n:]
        return out

    def _open_next(self) -> bytes:
        want = min(self.sealed_size, self.remaining)
        sealed = self._read_exact(want)
        self.remaining -= want
        last = self.remaining == 0
        try:
            plain = self.aead.decrypt(_nonce(self.counter, last), sealed, None)
        except InvalidTag as e:
            raise PayloadHashError(
                f"payload {self.path} segment {self.counter + 1} does not decrypt "
                "(wrong key or altered ciphertext; refused)"
            ) from e
        self.counter += 1
        return plain

    def _read_exact(self, want: int) -> bytes | memoryview:
        if want < TAG:
            raise PayloadHashError(f"payload {self.path}: ciphertext ends inside a segment tag")
        parts: list[bytes | memoryview] = []
        got = 0
        while got < want:
            data = self.source.read(want - got)
            if not data:
                raise TruncatedBundleError(
                    f"bundle file is truncated (ends inside {self.path})"
                )
            parts.append(data)
            got += len(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)  # a view: no copy


OpenPayload = Callable[[str, int, Readable], Readable]


def opener(info: EncryptionInfo, data_key: bytes) -> OpenPayload:
    """A function turning (payload path, ciphertext size, ciphertext source) into a reader
    of its plaintext zstd frame."""

    def open_payload(path: str, size: int, source: Readable) -> Readable:
        return SegmentOpener(source, payload_key(data_key, path), info.segment_size, size, path)

    return open_payload


def no_key(what: str) -> DecryptionError:
    return DecryptionError(f"{what} is encrypted and no key to decrypt it was given")


def unlock_bundle(
    verified: VerifiedBundle, identities: Iterable[Identity], who: str = "this device"
) -> VerifiedBundle:
    """`verified` with its data key, unlocked by one of `identities` (unchanged when it is
    not encrypted). Raises NotARecipientError, WrappedKeyError."""
    info = verified.manifest.encryption
    if info is None:
        return verified
    what = f"bundle {verified.manifest.name} {verified.manifest.version}"
    if verified.keys is None:
        raise WrappedKeyError(f"{what} is encrypted but carries no {KEYS_MEMBER}")
    return replace(verified, data_key=unlock(verified.keys, info, identities, what, who))
