"""The admin's key directory: offline root key, signing keys, and the root.json history.

Layout: `root.json` (current trust document), `N.root.json` (every version, so devices can
walk the rotation chain), `root.key`/`root.pub`, `signing.key`/`signing.pub`, and any
further `NAME.key`/`NAME.pub` signing keys. Private keys are mode 0600, optionally
passphrase-encrypted.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from satchel.bundles.durable import atomic_write_bytes
from satchel.bundles.errors import KeyFileError
from satchel.bundles.keys import PublicKey, SigningKey
from satchel.bundles.trust import Root, load_root, make_root, sign_root, update_root
from satchel.manager.errors import KeyDirError, UsageError

ROOT_JSON = "root.json"
ROOT_KEY = "root.key"
SIGNING_KEY = "signing.key"
KEY_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


@dataclass(frozen=True)
class RotationRequest:
    add_signing: tuple[str, ...] = ()  # names of new signing keys to generate in KEYDIR
    add_signing_pubs: tuple[Path, ...] = ()  # PEM public keys of signing keys held elsewhere
    revoke: tuple[str, ...] = ()  # key ids (or unique prefixes) or key names to remove
    signing_threshold: int | None = None
    new_root_key: bool = False  # replace the root key (old one signs the handover)
    expires: datetime | None = None


def _write_private(path: Path, key: SigningKey, passphrase: bytes | None) -> None:
    if path.exists():
        raise KeyDirError(f"{path} already exists; refusing to overwrite a private key")
    atomic_write_bytes(path, key.to_pem(passphrase), mode=0o600)


def _write_public(path: Path, key: PublicKey) -> None:
    atomic_write_bytes(path, key.to_pem(), mode=0o644)


def _write_root(keydir: Path, data: bytes, version: int) -> None:
    atomic_write_bytes(keydir / f"{version}.root.json", data)
    atomic_write_bytes(keydir / ROOT_JSON, data)


def init_keydir(
    keydir: Path, passphrase: bytes | None = None, expires: datetime | None = None
) -> Root:
    """Create root and signing keys and a version-1 root.json in `keydir`.

    Raises KeyDirError if `keydir` already holds keys or a root.json, or cannot be written.
    """
    for name in (ROOT_JSON, ROOT_KEY, SIGNING_KEY):
        if (keydir / name).exists():
            raise KeyDirError(f"{keydir / name} already exists; use a new directory")
    root_key, signing_key = SigningKey.generate(), SigningKey.generate()
    root = make_root(1, [root_key.public], [signing_key.public], expires=expires)
    try:
        keydir.mkdir(parents=True, exist_ok=True)
        os.chmod(keydir, 0o700)
        _write_private(keydir / ROOT_KEY, root_key, passphrase)
        _write_private(keydir / SIGNING_KEY, signing_key, passphrase)
        _write_public(keydir / "root.pub", root_key.public)
        _write_public(keydir / "signing.pub", signing_key.public)
        _write_root(keydir, sign_root(root, [root_key]), 1)
    except OSError as e:
        raise KeyDirError(f"cannot write key directory {keydir}: {e.strerror or e}") from e
    return load_root((keydir / ROOT_JSON).read_bytes())


def read_root(keydir_or_file: Path) -> Root:
    """Load root.json from a key directory or a file path. Raises KeyDirError, BundleError."""
    path = keydir_or_file / ROOT_JSON if keydir_or_file.is_dir() else keydir_or_file
    try:
        data = path.read_bytes()
    except OSError as e:
        raise KeyDirError(f"cannot read trust root {path}: {e.strerror}") from e
    return load_root(data)


def load_key(path: Path, passphrase: bytes | None) -> SigningKey:
    """Load a private key file. Raises KeyDirError (unreadable), KeyFileError (bad key)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise KeyDirError(f"cannot read key {path}: {e.strerror}") from e
    try:
        return SigningKey.from_pem(data, passphrase)
    except KeyFileError as e:
        raise KeyFileError(f"{path}: {e}") from e


def key_names(keydir: Path) -> dict[str, str]:
    """Map key id -> file stem for every `*.pub` in the key directory."""
    names: dict[str, str] = {}
    for pub in sorted(keydir.glob("*.pub")):
        try:
            names[PublicKey.from_pem(pub.read_bytes()).keyid] = pub.stem
        except Exception:  # noqa: BLE001 - a stray file must not break listing
            continue
    return names


def _resolve(root: Root, names: dict[str, str], token: str) -> str:
    by_name = [kid for kid, name in names.items() if name == token and kid in root.keys]
    if by_name:
        return by_name[0]
    matches = [kid for kid in root.keys if kid.startswith(token.lower())]
    if len(matches) != 1:
        raise UsageError(f"{token!r} names no single key of the trust root")
    return matches[0]


def rotate(
    keydir: Path,
    req: RotationRequest,
    passphrase: bytes | None = None,
    extra_root_keys: tuple[SigningKey, ...] = (),
) -> Root:
    """Write the next root.json: signing keys added or revoked, threshold or root key changed.

    Signed by the current root key(s) (`root.key` plus `extra_root_keys` for thresholds
    above one) and, when the root key is replaced, by the new one too. Nothing is written
    unless the new root.json is one a device trusting the current one would accept.
    Raises KeyDirError, UsageError, KeyFileError, BundleError (RootRotationError).
    """
    current = read_root(keydir)
    names = key_names(keydir)
    signing = {kid: current.keys[kid] for kid in current.signing_role.keyids}
    for token in req.revoke:
        kid = _resolve(current, names, token)
        if kid not in signing:
            raise UsageError(f"key {kid[:12]} is not a signing key")
        del signing[kid]
    new_keys: list[tuple[str, SigningKey]] = []
    for name in req.add_signing:
        if not KEY_NAME_RE.fullmatch(name) or name in ("root", "signing"):
            raise UsageError(f"invalid key name {name!r}")
        if (keydir / f"{name}.key").exists():
            raise KeyDirError(f"{keydir / name}.key already exists; choose another key name")
        key = SigningKey.generate()
        new_keys.append((name, key))
        signing[key.keyid] = key.public
    for pub_path in req.add_signing_pubs:
        pub = PublicKey.from_pem(pub_path.read_bytes())
        signing[pub.keyid] = pub
    if not signing:
        raise UsageError("the trust root would have no signing key left")
    threshold = req.signing_threshold or min(current.signing_role.threshold, len(signing))
    if threshold > len(signing):
        raise UsageError(f"signing threshold {threshold} exceeds the {len(signing)} signing key(s)")
    old_root_key = load_key(keydir / ROOT_KEY, passphrase)
    signers = [old_root_key, *extra_root_keys]
    root_pubs = [current.keys[k] for k in current.root_role.keyids]
    root_threshold = current.root_role.threshold
    new_root_key = None
    if req.new_root_key:
        new_root_key = SigningKey.generate()
        root_pubs, root_threshold = [new_root_key.public], 1
        signers.append(new_root_key)
    new = make_root(
        current.version + 1,
        root_pubs,
        list(signing.values()),
        root_threshold=root_threshold,
        signing_threshold=threshold,
        expires=req.expires if req.expires else current.expires,
    )
    data = sign_root(new, signers)
    # Refuse here, with nothing written, what every device would refuse.
    update_root(current, data)
    for name, key in new_keys:
        _write_private(keydir / f"{name}.key", key, passphrase)
        _write_public(keydir / f"{name}.pub", key.public)
    if new_root_key is not None:
        os.replace(keydir / ROOT_KEY, keydir / f"root.v{current.version}.key")
        os.replace(keydir / "root.pub", keydir / f"root.v{current.version}.pub")
        _write_private(keydir / ROOT_KEY, new_root_key, passphrase)
        _write_public(keydir / "root.pub", new_root_key.public)
    _write_root(keydir, data, new.version)
    return read_root(keydir)
