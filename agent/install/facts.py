"""Gather the facts about this device that compatibility checks judge a bundle against."""

from __future__ import annotations

import importlib.metadata
import shutil

from satchel.agent.install.compat import DeviceFacts
from satchel.agent.runtimes import installed_runtimes
from satchel.agent.state import DeviceState
from satchel.bundles.timeutil import utcnow

AGENT_DISTRIBUTION = "satchel"


def agent_version() -> str:
    """The installed satchel package's version ("0" when run from an uninstalled tree)."""
    try:
        return importlib.metadata.version(AGENT_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "0"


def gather_facts(state: DeviceState) -> DeviceFacts:
    """Read identity, clock, runtimes and free disk. Raises NotInitializedError,
    StateCorruptError, OSError."""
    identity = state.identity()
    return DeviceFacts(
        device_class=identity.device_class,
        architecture=identity.architecture,
        agent_version=agent_version(),
        free_disk_bytes=shutil.disk_usage(state.layout.root).free,
        now=utcnow(),
        trusted_clock=identity.trusted_clock,
        newest_signed_time=state.newest_signed_time(),
        runtimes=installed_runtimes(),
    )
