"""Does a verified bundle fit this device? Pure functions over `DeviceFacts`.

The facts are gathered elsewhere (`agent.install.facts.gather_facts`) and passed in, so these checks
can be exercised with any device one cares to describe.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

from satchel.agent.errors import (
    AgentTooOldError,
    ArchitectureError,
    DeviceClassError,
    InsufficientDiskError,
    RuntimeMissingError,
    SequenceRollbackError,
)
from satchel.bundles.manifest import Manifest
from satchel.bundles.reader import check_expiry
from satchel.bundles.versions import at_least

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# The satchel extra that installs each runtime, named in the refusal so that a technician
# knows the one command that fixes it.
RUNTIME_EXTRAS = {"onnxruntime": "agent-onnx", "tflite": "agent-tflite"}


@dataclass(frozen=True)
class DeviceFacts:
    device_class: str
    architecture: str  # platform.machine()
    agent_version: str
    free_disk_bytes: int  # free on the state directory's filesystem
    now: datetime  # the device clock's reading
    trusted_clock: bool  # False: `now` means nothing, expiry is judged on signed times seen
    newest_signed_time: datetime | None  # newest signed time from an installed bundle
    runtimes: Mapping[str, str] = field(default_factory=dict)  # runtime name -> version


def expiry_clock(facts: DeviceFacts) -> tuple[datetime, datetime | None]:
    """(now, not_before) to judge expiry with.

    With a trusted clock: its reading. Without one, the clock may say anything (a flat RTC
    battery says 1970, a bad NTP answer says 2099), so it is not read at all: the only time
    known to have passed is the newest signed time seen, and a manifest that expired before
    it is refused.
    """
    if facts.trusted_clock:
        return facts.now, None
    return EPOCH, facts.newest_signed_time


def check_not_expired(manifest: Manifest, facts: DeviceFacts) -> None:
    """Raises bundles.errors.ExpiredError."""
    now, not_before = expiry_clock(facts)
    check_expiry(manifest, now, not_before)


def check_device(manifest: Manifest, facts: DeviceFacts) -> None:
    """Device class, CPU architecture, runtimes and agent version.

    Raises DeviceClassError, ArchitectureError, RuntimeMissingError, AgentTooOldError.
    """
    what = f"bundle {manifest.name} {manifest.version}"
    compat = manifest.compatibility
    if compat.device_classes and facts.device_class not in compat.device_classes:
        raise DeviceClassError(
            f"{what} is for device classes {', '.join(compat.device_classes)}, "
            f"not {facts.device_class}"
        )
    if compat.architectures and facts.architecture not in compat.architectures:
        raise ArchitectureError(
            f"{what} is for CPU architectures {', '.join(compat.architectures)}, "
            f"not {facts.architecture}"
        )
    needed = {m.runtime: compat.runtimes.get(m.runtime, "0") for m in manifest.models}
    needed.update(compat.runtimes)
    for runtime, minimum in sorted(needed.items()):
        installed = facts.runtimes.get(runtime)
        if installed is None:
            extra = RUNTIME_EXTRAS.get(runtime, "agent")
            raise RuntimeMissingError(
                f"{what} needs runtime {runtime}, not installed here: "
                f"pip install 'satchel[{extra}]'"
            )
        if not at_least(installed, minimum):
            raise RuntimeMissingError(
                f"{what} needs {runtime} >= {minimum}, this device has {installed}"
            )
    if not at_least(facts.agent_version, compat.min_agent_version):
        raise AgentTooOldError(
            f"{what} needs satchel-agent >= {compat.min_agent_version}, "
            f"this device runs {facts.agent_version}; update the agent first"
        )


def check_disk(manifest: Manifest, facts: DeviceFacts, margin_bytes: int) -> None:
    """Raises InsufficientDiskError unless the unpacked payloads plus the margin fit."""
    needed = manifest.unpacked_size + margin_bytes
    if facts.free_disk_bytes < needed:
        raise InsufficientDiskError(
            f"bundle {manifest.name} {manifest.version} needs {_mib(needed)} free "
            f"({_mib(manifest.unpacked_size)} unpacked + {_mib(margin_bytes)} margin), "
            f"only {_mib(facts.free_disk_bytes)} free"
        )


def check_sequence(manifest: Manifest, highest_installed: int | None) -> None:
    """Anti-rollback. Raises SequenceRollbackError unless the sequence is strictly newer."""
    if highest_installed is not None and manifest.sequence <= highest_installed:
        raise SequenceRollbackError(
            f"bundle {manifest.name} {manifest.version} has sequence {manifest.sequence}, "
            f"not newer than {highest_installed} already installed on channel "
            f"{manifest.name} (rollback refused)"
        )


def check_compatible(
    manifest: Manifest, facts: DeviceFacts, highest_installed: int | None, margin_bytes: int
) -> None:
    """Every check, in the order a technician would look. Raises the first refusal:
    ExpiredError, SequenceRollbackError, then IncompatibleError subclasses."""
    check_not_expired(manifest, facts)
    check_sequence(manifest, highest_installed)
    check_device(manifest, facts)
    check_disk(manifest, facts, margin_bytes)


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"
