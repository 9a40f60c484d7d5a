"""The fleet as the admin commands see it: one interface, two homes.

`local.DatabaseFleet` runs the service functions on the manager's database (`--data-dir`);
`remote.ApiFleet` asks a manager's REST API (`satchel --url URL`). Both return the same plain
values (the dictionaries the services make and the API sends), so each command formats its
output once, and `--json` prints the same document whichever side answered. Both raise the
`ManagerError` tree, so refusals are the same one line and exit code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from satchel.bundles.keys import SigningKey
    from satchel.manager.sticks import ExportResult, ImportResult


@dataclass(frozen=True)
class NewDeployment:
    """What `deploy create` asks for; None = the manager's configured default."""

    bundle: str  # NAME:VERSION or sha256
    device_classes: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    waves: str | None = None
    success_ratio: float | None = None
    max_failure_ratio: float | None = None

    def selectors(self) -> dict[str, list[str]]:
        return {
            "device_classes": list(self.device_classes),
            "tags": list(self.tags),
            "devices": list(self.devices),
        }


@dataclass(frozen=True)
class NewToken:
    """What `token create` asks for; `ttl_s` None = the manager's default for the kind."""

    kind: str  # "admin" or "enroll"
    name: str = ""
    device_class: str | None = None
    ttl_s: float | None = None


class Fleet(Protocol):
    """Bundles, devices, deployments, tokens and sticks of one manager. Every method raises
    ManagerError subclasses (NotFoundError, ConflictError, AuthError, ...) or BundleError."""

    def add_bundle(self, file: Path) -> tuple[dict[str, Any], bool]:
        """Verify and store a bundle: (its summary, newly stored)."""

    def list_bundles(self, name: str | None) -> list[dict[str, Any]]: ...

    def remove_bundle(self, ref: str) -> dict[str, Any]:
        """Forget a bundle no deployment refers to and delete its file: its summary."""

    def create_deployment(self, new: NewDeployment) -> dict[str, Any]:
        """Create and start a deployment: its summary."""

    def list_deployments(self, state: str | None) -> list[dict[str, Any]]: ...

    def deployment_status(self, deployment_id: int) -> dict[str, Any]: ...

    def act_on_deployment(self, deployment_id: int, action: str, reason: str) -> dict[str, Any]:
        """Pause, resume or abort: the deployment's summary after it."""

    def list_devices(self, device_class: str | None, tag: str | None) -> list[dict[str, Any]]: ...

    def device_detail(self, device_id: str, events: int) -> dict[str, Any]: ...

    def register_device(self, identity: dict[str, str]) -> dict[str, Any]: ...

    def set_device_tags(self, device_id: str, add: list[str], remove: list[str]) -> list[str]: ...

    def remove_device(self, device_id: str) -> None: ...

    def create_token(self, new: NewToken) -> dict[str, Any]:
        """Issue a token: {"token", "kind", "id", "expires_at", "device_class"}."""

    def list_admin_tokens(self, limit: int) -> list[dict[str, Any]]: ...

    def revoke_admin_token(self, token_id: int) -> None: ...

    def export_stick(
        self, path: Path, keys: list[SigningKey], ttl_s: float | None, deployment_id: int | None
    ) -> ExportResult:
        """Write a stick whose plan `keys` sign (here, never on the manager)."""

    def import_stick(self, path: Path) -> ImportResult:
        """Record the device reports on a stick; refusals are collected in the result."""

    def list_samples(
        self, channel: str | None, version: str | None, reasons: list[str], devices: list[str]
    ) -> list[dict[str, Any]]:
        """Stored captures (hard examples), oldest first, without their bytes."""

    def export_samples(
        self, channel: str, version: str, reasons: list[str], devices: list[str]
    ) -> tuple[bytes, dict[str, Any]]:
        """One channel and release's captures: (the .npz for `--samples`, per-row meta)."""
