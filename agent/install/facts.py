"""Gather the facts about this device that compatibility checks judge a bundle against."""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping

from satchel.agent.install.compat import DeviceFacts
from satchel.agent.state import DeviceState
from satchel.bundles.timeutil import utcnow

AGENT_DISTRIBUTION = "satchel"


class RuntimeProbe(Mapping[str, str]):
    """Runtime name -> installed version, found when first asked for.

    Finding a runtime imports it (only an import proves it usable), which costs a few hundred
    milliseconds each: an install asks only for the runtimes its bundle names, so an ONNX
    bundle never loads TFLite. Iterating probes every runtime.
    """

    def __init__(self) -> None:
        self._found: dict[str, str | None] = {}

    def __getitem__(self, name: str) -> str:
        if name not in self._found:
            # Imported here: the runtimes package brings numpy, which status and rollback
            # (they share this package) never need.
            from satchel.agent.runtimes import known_runtimes, runtime_version

            self._found[name] = runtime_version(name) if name in known_runtimes() else None
        version = self._found[name]
        if version is None:
            raise KeyError(name)
        return version

    def __iter__(self) -> Iterator[str]:
        from satchel.agent.runtimes import known_runtimes

        return iter([name for name in known_runtimes() if name in self])

    def __len__(self) -> int:
        return sum(1 for _ in self)


def agent_version() -> str:
    """The installed satchel package's version ("0" when run from an uninstalled tree)."""
    from satchel.agent.distversion import installed_version

    found = installed_version(AGENT_DISTRIBUTION)
    if found is not None:
        return found
    import importlib.metadata

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
        runtimes=RuntimeProbe(),
    )
