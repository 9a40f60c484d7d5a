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


class DeltaBaseMissingError(IncompatibleError):
    """A delta bundle needs a base release this device no longer keeps, or whose files on
    disk differ from the ones its patches were made against: the full bundle is needed."""


class OfferMismatchError(AgentError):
    """The bundle's manifest names another channel, version or sequence than the manager's
    offer or the USB plan's assignment that brought it (a mix-and-match attack, or a mistake
    of whoever made the offer): refused before the installer runs."""


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


class CandidateGoneError(AgentError):
    """A staged release was to be activated or refused, but the channel no longer judges it
    (a newer install replaced it, or it was decided already)."""


class RollbackSupersededError(AgentError):
    """A rollback of one release was asked for, but another release is active by now."""


# --- the manager, the network and USB sticks (agent.sync.client, agent.sync.usb) ------------------


class NotEnrolledError(AgentError):
    """The device has no LAN credential: it was never enrolled, or its credential is gone."""


class AlreadyEnrolledError(AgentError):
    """`enroll` was asked again for a device that already holds a credential."""


class TransportError(AgentError):
    """Talking to the manager failed."""


class ManagerUnreachableError(TransportError):
    """No usable answer from the manager (network down, timeout, 5xx): retry later."""


class ManagerRefusedError(TransportError):
    """The manager answered with a refusal (4xx); `status` is the HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class CredentialRejectedError(ManagerRefusedError):
    """The manager no longer accepts this device's credential (401): enroll again."""


class DownloadError(TransportError):
    """A downloaded bundle does not match what the manager announced (size or sha256)."""


class StickError(AgentError):
    """A USB stick cannot be used: no plan, unreadable, or pulled out while being read."""


class StickBundleMismatchError(StickError):
    """A bundle file on the stick is not the one the plan names (size or sha256 differ, or it
    is not a regular file): nothing is installed from it; the rest of the plan goes on."""


class PlanRefusedError(StickError):
    """The stick's plan is not signed by a threshold of trusted signing keys, or expired."""


class UsbInstallFailedError(AgentError):
    """A bundle the stick's plan gives this device was refused or failed (the report on the
    stick says so too)."""
