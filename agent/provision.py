"""`satchel-agent init`: give a device its identity, its own key and its trust root."""

from __future__ import annotations

import platform
from pathlib import Path

from satchel.agent.errors import AlreadyInitializedError, InvalidIdentityError, StateCorruptError
from satchel.agent.state import DeviceIdentity, Layout, read_json, write_json
from satchel.bundles.durable import atomic_write_bytes, fsync_dir
from satchel.bundles.identifiers import IDENTIFIER_WORDS, is_identifier
from satchel.bundles.keys import SigningKey
from satchel.bundles.timeutil import utcnow
from satchel.bundles.trust import check_root_expiry, load_root

KEY_MODE = 0o600  # the device's private key is readable by the agent's user only


def init_device(
    state_dir: Path,
    trust: bytes,
    device_id: str,
    device_class: str,
    *,
    trusted_clock: bool = True,
    architecture: str | None = None,
    decryption_keys: tuple[Path, ...] = (),
) -> DeviceIdentity:
    """Set up an empty state directory: trust root, a fresh Ed25519 device key, identity.

    device.json is written last, so a device is initialised only once everything else is.
    Raises InvalidIdentityError, AlreadyInitializedError, bundles' FormatError/TrustError
    for a bad root.json (ExpiredError for an expired one on a device with a trusted clock),
    OSError.
    """
    for what, value in (("device id", device_id), ("device class", device_class)):
        if not is_identifier(value):
            raise InvalidIdentityError(f"{what} {value[:70]!r} must be {IDENTIFIER_WORDS}")
    root = load_root(trust)
    if trusted_clock:
        check_root_expiry(root, utcnow())
    layout = Layout(state_dir)
    if layout.device.exists():
        raise AlreadyInitializedError(f"{state_dir} already holds device "
                                      f"{_existing_id(layout)}; refusing to overwrite it")
    layout.root.mkdir(parents=True, exist_ok=True, mode=0o755)
    key = SigningKey.generate()
    atomic_write_bytes(layout.device_key, key.to_pem(), KEY_MODE)
    atomic_write_bytes(layout.device_pub, key.public.to_pem())
    atomic_write_bytes(layout.trust, trust)
    # Class or fleet keys that encrypted bundles may be wrapped for (the device's own is its
    # device key, converted: agent/install/decrypt.py).
    from satchel.agent.install.decrypt import add_key

    for path in decryption_keys:
        add_key(state_dir, path)
    if not layout.channels.is_dir():
        layout.channels.mkdir(mode=0o755)
        fsync_dir(layout.root)
    identity = DeviceIdentity(
        device_id=device_id,
        device_class=device_class,
        architecture=architecture or platform.machine(),
        trusted_clock=trusted_clock,
        device_keyid=key.keyid,
    )
    write_json(layout.device, identity.to_dict())
    fsync_dir(layout.root.parent)
    return identity


def _existing_id(layout: Layout) -> str:
    try:
        return str(read_json(layout.device, "device record")["device_id"])
    except (StateCorruptError, KeyError, TypeError):
        return "(unreadable device.json)"
