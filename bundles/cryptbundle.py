"""Whole-bundle operations on encrypted bundles: re-wrap the data key for other recipients
without touching the signed manifest or the payloads, and describe the encryption for
`satchel bundle inspect` (docs/ENCRYPTION.md)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

from satchel.bundles.crypt import KeyFile, rewrapped, unlock
from satchel.bundles.cryptinfo import KEYS_MEMBER, MAX_KEYS_BYTES
from satchel.bundles.errors import DecryptionError, TruncatedBundleError
from satchel.bundles.manifest import Manifest, parse_manifest
from satchel.bundles.reader import _read_small_member
from satchel.bundles.recipients import Identity, Recipient
from satchel.bundles.tarformat import encode_header, padding


def _member(name: str, data: bytes, mtime: int) -> bytes:
    return encode_header(name, len(data), mtime) + data + b"\0" * padding(len(data))


def read_encrypted_head(f: BinaryIO) -> tuple[Manifest, bytes, bytes, KeyFile]:
    """(manifest, manifest.json bytes, manifest.sig bytes, keys.json) from the start of an
    encrypted bundle, unverified; `f` is left at the first payload member. Raises
    FormatError, DecryptionError (not encrypted, bad keys.json)."""
    from satchel.bundles.config import DEFAULT_LIMITS as L

    manifest_bytes = _read_small_member(f, "manifest.json", L.max_manifest_bytes)
    sig_bytes = _read_small_member(f, "manifest.sig", L.max_signatures_bytes)
    manifest = parse_manifest(manifest_bytes, L)
    if manifest.encryption is None:
        raise DecryptionError(f"bundle {manifest.name} {manifest.version} is not encrypted")
    keys = KeyFile.from_bytes(_read_small_member(f, KEYS_MEMBER, MAX_KEYS_BYTES))
    return manifest, manifest_bytes, sig_bytes, keys


def rewrap_bundle(
    source: Path,
    out: BinaryIO,
    identities: Iterable[Identity],
    add: Iterable[Recipient],
    remove: Iterable[str] = (),
) -> tuple[Manifest, KeyFile]:
    """Write to `out` the bundle at `source` with its data key also wrapped for `add` (and no
    longer for the recipient names or fingerprints in `remove`). One of `identities` must
    unlock it (the manager's recipient key, typically). The signed manifest, its signatures
    and the payload members are copied byte for byte: nothing is re-signed or re-encrypted.
    Returns the manifest and the new keys.json. Raises FormatError, NotARecipientError,
    WrappedKeyError, OSError."""
    add = list(add)
    with open(source, "rb") as f:
        manifest, manifest_bytes, sig_bytes, keys = read_encrypted_head(f)
        assert manifest.encryption is not None
        what = f"bundle {manifest.name} {manifest.version}"
        data_key = unlock(keys, manifest.encryption, identities, what, "the given key")
        new_keys = rewrapped(keys, data_key, add, remove)
        mtime = int(manifest.created.timestamp())
        out.write(_member("manifest.json", manifest_bytes, mtime))
        out.write(_member("manifest.sig", sig_bytes, mtime))
        out.write(_member(KEYS_MEMBER, new_keys.to_bytes(), mtime))
        start = f.tell()
        end = os.fstat(f.fileno()).st_size
        if end < start:
            raise TruncatedBundleError(f"bundle {source} is truncated")
        out.flush()
        remaining, at = end - start, start
        try:  # the payload members, in-kernel, from the offset the buffered reader is at
            while remaining > 0:
                n = os.copy_file_range(f.fileno(), out.fileno(), remaining, at)
                if n == 0:
                    raise TruncatedBundleError(f"bundle {source} changed while it was copied")
                remaining -= n
                at += n
            out.seek(0, os.SEEK_END)
        except OSError:  # no in-kernel copy here: copy what is left through user space
            out.seek(0, os.SEEK_END)
            f.seek(at)
            while chunk := f.read(4 * 1024 * 1024):
                out.write(chunk)
    return manifest, new_keys


def describe_encryption(manifest: Manifest, keys: KeyFile | None) -> dict[str, Any]:
    """What `bundle inspect` shows of an encrypted bundle."""
    info = manifest.encryption
    assert info is not None
    return {
        "scheme": info.scheme,
        "segment_size": info.segment_size,
        "built_for": [{"name": n, "fingerprint": fp} for n, fp in info.recipients],
        "recipients": (
            [{"name": s.recipient, "fingerprint": s.fingerprint} for s in keys.stanzas]
            if keys is not None else None
        ),
    }
