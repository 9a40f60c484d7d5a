"""One exception tree for the device agent, grouped by whose fault it is.

Every refusal a technician can meet has its own class and a one-line message. The CLI maps
`AgentError` (and `bundles.errors.BundleError`, for refusals of the bundle format) to exit
code 1 and prints `error: <message>`.
"""

from __future__ import annotations

from typing import Any


class AgentError(Exception):
    """Base of every refusal raised by the agent."""


# --- the device itself is not ready ---------------------------------------------------------


class NotInitializedError(AgentError):
    """The state directory has not been set up with `satchel-agent init`."""


class AlreadyInitializedError(AgentError):
    """`init` was asked to set up a state directory that already holds a device."""


class InvalidIdentityError(AgentError):
    """A device id or class given to `init` is not a valid label."""


class StateCorruptError(AgentError):
    """A state file exists but cannot be read back (edited by hand, or a disk fault)."""


class LockBusyError(AgentError):
    """Another install or rollback held the device lock for longer than the configured wait."""


class BundleFileError(AgentError):
    """The bundle file cannot be opened or read."""


# --- the bundle does not fit this device ----------------------------------------------------


class IncompatibleError(AgentError):
    """The bundle is valid but not meant for, or does not fit on, this device."""


class DeviceClassError(IncompatibleError):
    """The bundle lists device classes and this device's class is not one of them."""


class ArchitectureError(IncompatibleError):
    """The bundle lists CPU architectures and this device's is not one of them."""


class RuntimeMissingError(IncompatibleError):
    """A runtime the bundle needs is absent here, or older than the bundle requires."""


class AgentTooOldError(IncompatibleError):
    """The bundle needs a newer Satchel agent than the one installed."""


class InsufficientDiskError(IncompatibleError):
    """The unpacked bundle plus the safety margin does not fit on the state filesystem."""


class SequenceRollbackError(AgentError):
    """The bundle's sequence is not greater than the highest ever installed on its channel."""


# --- the bundle fits but fails on this device -----------------------------------------------


class SmokeTestFailedError(AgentError):
    """The model failed its smoke test here; `report` holds every measured figure."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


# --- rollback -------------------------------------------------------------------------------


class UnknownChannelError(AgentError):
    """The channel has no active release on this device."""


class NoPreviousReleaseError(AgentError):
    """A rollback was asked for but the channel keeps no older good release."""
