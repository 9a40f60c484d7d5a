"""The device's decryption keys: what unlocks an encrypted bundle (docs/ENCRYPTION.md).

`satchel-agent init` makes the device's own X25519 key pair in `STATE/decryption/`
(`device.key`, mode 0600, in a directory mode 0700; `device.pub` beside it, which the device
reports and the admin encrypts to). Keys shared by a device class or a fleet are added with
`satchel-agent init --decryption-key FILE` or `satchel-agent decryption-key add FILE`; they
are copied in, mode 0600. No private key ever leaves the device: nothing here sends or prints
one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from satchel.bundles.durable import atomic_write_bytes, fsync_dir
from satchel.bundles.errors import KeyFileError

if TYPE_CHECKING:
    from satchel.agent.state import DeviceState
    from satchel.bundles.reader import VerifiedBundle
    from satchel.bundles.recipients import Identity, Recipient

DECRYPTION_DIR = "decryption"
DEVICE_KEY = "device.key"
DEVICE_PUB = "device.pub"
KEY_MODE = 0o600
DIR_MODE = 0o700


def key_dir(state_dir: Path) -> Path:
    return Path(state_dir) / DECRYPTION_DIR


def _ensure_dir(state_dir: Path) -> Path:
    directory = key_dir(state_dir)
    if not directory.is_dir():
        directory.mkdir(mode=DIR_MODE)
        fsync_dir(directory.parent)
    os.chmod(directory, DIR_MODE)
    return directory


def device_recipient(state_dir: Path, device_id: str) -> Recipient:
    """The device's own recipient (public key), made on first use. Raises OSError."""
    from satchel.bundles.recipients import Identity, Recipient

    directory = key_dir(state_dir)
    pub = directory / DEVICE_PUB
    if (directory / DEVICE_KEY).exists() and pub.exists():
        return Recipient.from_pem(device_id, pub.read_bytes())
    directory = _ensure_dir(state_dir)
    identity = Identity.generate(device_id)
    atomic_write_bytes(directory / DEVICE_KEY, identity.to_pem(), KEY_MODE)
    atomic_write_bytes(pub, identity.recipient.to_pem())
    return identity.recipient


def add_key(state_dir: Path, source: Path, name: str | None = None) -> Recipient:
    """Copy the X25519 private key `source` (a device class's or a fleet's) into the device's
    keys, mode 0600; return its recipient. Raises KeyFileError, OSError."""
    from satchel.bundles.recipients import load_identity, name_of

    identity = load_identity(source, name)
    stem = name or name_of(source)
    if stem in ("device",):
        raise KeyFileError("the name 'device' is the device's own key; give the key another name")
    directory = _ensure_dir(state_dir)
    atomic_write_bytes(directory / f"{stem}.key", identity.to_pem(), KEY_MODE)
    return identity.recipient


def load_identities(state_dir: Path) -> list[Identity]:
    """Every private key the device holds, its own first. A key file that cannot be read is
    skipped (it unlocks nothing)."""
    from satchel.bundles.recipients import load_identity

    directory = key_dir(state_dir)
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    names.sort(key=lambda n: n != DEVICE_KEY)
    identities = []
    for name in names:
        if not name.endswith(".key") or name.startswith("."):
            continue
        try:
            identities.append(load_identity(directory / name))
        except KeyFileError:
            continue
    return identities


def unlock_for_device(verified: VerifiedBundle, state: DeviceState) -> VerifiedBundle:
    """`verified` with its data key unlocked by one of this device's keys. Raises bundles'
    NotARecipientError ("... is encrypted for other devices ..., not for device ID"),
    WrappedKeyError."""
    from satchel.bundles.crypt import unlock_bundle

    device_id = state.identity().device_id
    return unlock_bundle(verified, load_identities(state.layout.root), f"device {device_id}")
