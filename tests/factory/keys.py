"""Keys and trust roots, laid out as `satchel keys init` lays them out, and root rotations."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from satchel.bundles.durable import atomic_write_bytes
from satchel.bundles.keys import SigningKey
from satchel.bundles.trust import Root, load_root, make_root, sign_root


@dataclass(frozen=True)
class Keyring:
    """Root and signing keys, the version-1 root they make, and where their files are."""

    directory: Path
    root_keys: list[SigningKey]
    signing_keys: list[SigningKey]
    root: Root
    root_json: bytes

    @property
    def signing(self) -> SigningKey:
        return self.signing_keys[0]


def _write_keypair(directory: Path, stem: str, key: SigningKey) -> None:
    atomic_write_bytes(directory / f"{stem}.key", key.to_pem(), mode=0o600)
    atomic_write_bytes(directory / f"{stem}.pub", key.public.to_pem())


def make_keys(
    tmp_path: Path,
    *,
    root_count: int = 1,
    signing_count: int = 1,
    root_threshold: int = 1,
    signing_threshold: int = 1,
    expires: datetime | None = None,
) -> Keyring:
    """Generate keys and a signed version-1 root, laid out as `satchel keys init` does.

    Files: `root.json`, `root.key`/`root.pub`, `signing.key`/`signing.pub`, and
    `root-N.*` / `signing-N.*` for the second and later keys of each role.
    """
    directory = tmp_path / "keys"
    directory.mkdir(parents=True, exist_ok=True)
    root_keys = [SigningKey.generate() for _ in range(root_count)]
    signing_keys = [SigningKey.generate() for _ in range(signing_count)]
    for role, keys in (("root", root_keys), ("signing", signing_keys)):
        for i, key in enumerate(keys):
            _write_keypair(directory, role if i == 0 else f"{role}-{i + 1}", key)
    root = make_root(
        1,
        [k.public for k in root_keys],
        [k.public for k in signing_keys],
        root_threshold=root_threshold,
        signing_threshold=signing_threshold,
        expires=expires,
    )
    root_json = sign_root(root, root_keys[:root_threshold])
    atomic_write_bytes(directory / "root.json", root_json)
    return Keyring(directory, root_keys, signing_keys, load_root(root_json), root_json)


def next_root(
    trusted: Root,
    *,
    root_keys: list[SigningKey],
    signing_keys: list[SigningKey],
    signed_by: list[SigningKey],
    version: int | None = None,
    root_threshold: int = 1,
    signing_threshold: int = 1,
) -> bytes:
    """root.json bytes of a successor of `trusted` (version + 1 unless given), signed by
    `signed_by` (which must include old root keys for a valid rotation)."""
    new = make_root(
        trusted.version + 1 if version is None else version,
        [k.public for k in root_keys],
        [k.public for k in signing_keys],
        root_threshold=root_threshold,
        signing_threshold=signing_threshold,
    )
    return sign_root(new, signed_by)
