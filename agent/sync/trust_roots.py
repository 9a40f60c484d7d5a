"""The trust root the device verifies bundles and plans against, and walking it forward.

Both transports bring newer roots (the manager's over the LAN, a stick's root history on USB);
each version is accepted only by the rotation rule from the one before, and saved durably
before the next is tried.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from satchel.agent.config import DEFAULT_CONFIG, AgentConfig
from satchel.agent.errors import StateCorruptError
from satchel.agent.install.lock import device_lock
from satchel.agent.state import DeviceState
from satchel.bundles.durable import atomic_write_bytes
from satchel.bundles.errors import BundleError
from satchel.bundles.trust import Root, load_root, update_root

log = logging.getLogger(__name__)


def trusted_root(state_dir: Path) -> Root:
    """The trust root the device verifies against. Raises StateCorruptError."""
    layout = DeviceState(state_dir).layout
    try:
        return load_root(layout.trust.read_bytes())
    except (OSError, BundleError) as e:
        raise StateCorruptError(f"trust root {layout.trust} cannot be loaded: {e}") from e


def accept_roots(
    state_dir: Path, documents: Mapping[int, bytes], config: AgentConfig = DEFAULT_CONFIG
) -> tuple[int, int]:
    """Walk the trust root forward through `documents` (version -> root.json), one version
    at a time by the rotation rule, saving each accepted root durably before the next.
    Versions not above the trusted one are ignored. Returns (old version, new version).

    Raises bundles' RootRotationError (a version is missing from the chain, or not signed
    by a threshold of the old and of its own root keys), FormatError; LockBusyError,
    StateCorruptError; OSError. A refused version leaves the last accepted root in place.
    """
    layout = DeviceState(state_dir).layout
    with device_lock(layout.lock, config.lock_wait_s, config.lock_poll_s):
        current = trusted_root(state_dir)
        old = current.version
        for version in sorted(v for v in documents if v > old):
            current = update_root(current, documents[version])
            atomic_write_bytes(layout.trust, documents[version])
            log.info("trust root updated to version %d", current.version)
        return old, current.version
