"""The device's decryption keys: what unlocks an encrypted bundle (docs/ENCRYPTION.md).

The device's own key is its Ed25519 device key (`STATE/device.key`, mode 0600, made by
`satchel-agent init`), converted to X25519 as age does with ssh-ed25519 keys: its public half
is the `device.pub` the device enrolls with (or the admin registers with `satchel device
add`), so the manager can wrap a bundle for any device it knows without anything new being
reported. Keys shared by a device class or a fleet are added with `satchel-agent init
--decryption-key FILE` or `satchel-agent recipient --add FILE`: copied into
`STATE/decryption/` (mode 0700), each mode 0600. No private key ever leaves the device:
nothing here sends or prints one.
"""

from __future__ import annotations

import contextlib
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
KEY_MODE = 0o600
DIR_MODE = 0o700


def key_dir(state_dir: Path) -> Path:
    return Path(state_dir) / DECRYPTION_DIR


def own_identity(state_dir: Path, device_id: str) -> Identity:
    """The device's own X25519 key, from its Ed25519 device key. Raises KeyFileError,
    OSError."""
    from satchel.agent.state import Layout
    from satchel.bundles.recipients import device_identity_of

    return device_identity_of(device_id, Layout(state_dir).device_key.read_bytes())


def device_recipient(state_dir: Path, device_id: str) -> Recipient:
    """The device's own recipient (public key). Raises KeyFileError, OSError."""
    return own_identity(state_dir, device_id).recipient


def add_key(state_dir: Path, source: Path, name: str | None = None) -> Recipient:
    """Copy the X25519 private key `source` (a device class's or a fleet's) into the device's
    keys, mode 0600; return its recipient. Raises KeyFileError, OSError."""
    from satchel.bundles.recipients import load_identity, name_of

    identity = load_identity(source, name)
    stem = name or name_of(source)
    directory = key_dir(state_dir)
    if not directory.is_dir():
        directory.mkdir(mode=DIR_MODE)
        fsync_dir(directory.parent)
    os.chmod(directory, DIR_MODE)
    atomic_write_bytes(directory / f"{stem}.key", identity.to_pem(), KEY_MODE)
    return identity.recipient


def load_identities(state_dir: Path, device_id: str) -> list[Identity]:
    """Every private key the device holds, its own first. A key file that cannot be read is
    skipped (it unlocks nothing)."""
    from satchel.bundles.recipients import load_identity

    identities = []
    # an unreadable device key is reported by what else needs it; the others may still unlock
    with contextlib.suppress(KeyFileError, OSError):
        identities.append(own_identity(state_dir, device_id))
    directory = key_dir(state_dir)
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        names = []
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
    identities = load_identities(state.layout.root, device_id)
    return unlock_bundle(verified, identities, f"device {device_id}")
