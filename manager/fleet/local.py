"""The fleet on the manager's own database (`satchel --data-dir DIR ...`): each call is one
transaction of the service functions, as the API's views make it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from satchel.bundles.timeutil import now
from satchel.manager.config import ManagerConfig
from satchel.manager.db import open_database
from satchel.manager.errors import UsageError
from satchel.manager.fleet import NewDeployment, NewToken
from satchel.manager.services import bundles, deployments, devices, rewrap, samples, tokens
from satchel.manager.services.credentials import ADMIN
from satchel.manager.services.deployments import Selectors
from satchel.manager.services.devices import Identity
from satchel.manager.sticks import ExportResult, ImportResult
from satchel.manager.store import Store, open_store
from satchel.manager.usb import export_stick, import_stick

if TYPE_CHECKING:
    import sqlalchemy.orm as so

    from satchel.bundles.keys import SigningKey

T = TypeVar("T")
LISTED_DEVICES = 1_000_000  # devices `device list` shows at most


class DatabaseFleet:
    """`Fleet` over the database and bundle store named by `config`."""

    def __init__(self, config: ManagerConfig) -> None:
        self.config = config

    def run(self, work: Callable[[so.Session], T]) -> T:
        """`work(session)` in one transaction. Raises DatabaseNotReadyError (schema not at
        head) and what `work` raises."""
        db = open_database(self.config)
        try:
            return db.run(work)
        finally:
            db.dispose()

    def _store(self) -> Store:
        return open_store(self.config)

    def add_bundle(self, file: Path) -> tuple[dict[str, Any], bool]:
        store, t = self._store(), now()

        def work(s: so.Session) -> tuple[dict[str, Any], bool]:
            with open(file, "rb") as f:
                added = bundles.add(s, store, f, t, self.config.max_bundle_bytes)
            return bundles.summary(added.bundle), added.created

        try:
            return self.run(work)
        except OSError as e:  # the store's own writes raise StoreWriteError, not this
            raise UsageError(f"cannot read {file}: {e.strerror or e}") from e

    def remove_bundle(self, ref: str) -> dict[str, Any]:
        removed = self.run(lambda s: bundles.remove(s, bundles.get_by_ref(s, ref)))
        self._store().delete(removed["sha256"])  # after the commit: see bundles.remove
        return removed

    def list_bundles(self, name: str | None) -> list[dict[str, Any]]:
        return self.run(lambda s: [bundles.summary(b) for b in bundles.list_bundles(s, name)])

    def create_deployment(self, new: NewDeployment) -> dict[str, Any]:
        cfg, t = self.config, now()
        selectors = Selectors.from_dict(new.selectors())

        def work(s: so.Session) -> tuple[dict[str, Any], str | None]:
            dep = deployments.create(
                s,
                new.bundle,
                selectors,
                new.waves or cfg.deploy_default_waves,
                cfg.deploy_success_ratio if new.success_ratio is None else new.success_ratio,
                cfg.deploy_max_failure_ratio
                if new.max_failure_ratio is None
                else new.max_failure_ratio,
                t,
            )
            replaced = rewrap.for_deployment(s, store, cfg, dep, t)  # encrypted: its devices
            return deployments.summary(s, dep), replaced

        store = self._store()
        out, replaced = self.run(work)
        if replaced is not None:
            store.delete(replaced)  # after the commit: no offer names it any more
        return out

    def list_deployments(self, state: str | None) -> list[dict[str, Any]]:
        if state is not None and state not in deployments.DEPLOYMENT_STATES:
            raise UsageError(f"state must be one of {', '.join(deployments.DEPLOYMENT_STATES)}")
        return self.run(
            lambda s: [deployments.summary(s, d) for d in deployments.list_deployments(s, state)]
        )

    def deployment_status(self, deployment_id: int) -> dict[str, Any]:
        t = now()
        return self.run(lambda s: deployments.status(s, deployment_id, t))

    def act_on_deployment(self, deployment_id: int, action: str, reason: str) -> dict[str, Any]:
        t = now()
        return self.run(
            lambda s: deployments.summary(s, deployments.act(s, deployment_id, action, t, reason))
        )

    def list_devices(self, device_class: str | None, tag: str | None) -> list[dict[str, Any]]:
        return self.run(
            lambda s: [
                devices.summary(d)
                for d in devices.list_devices(s, device_class, tag, LISTED_DEVICES)
            ]
        )

    def device_detail(self, device_id: str, events: int) -> dict[str, Any]:
        return self.run(lambda s: devices.detail(s, device_id, events))

    def register_device(self, identity: dict[str, str]) -> dict[str, Any]:
        ident, t = Identity.from_dict(identity), now()
        return self.run(lambda s: devices.summary(devices.register(s, ident, t)))

    def set_device_tags(self, device_id: str, add: list[str], remove: list[str]) -> list[str]:
        return self.run(lambda s: devices.set_tags(s, device_id, add, remove))

    def remove_device(self, device_id: str) -> None:
        self.run(lambda s: devices.remove(s, device_id))

    def create_token(self, new: NewToken) -> dict[str, Any]:
        t = now()
        if new.kind == ADMIN:
            return self.run(
                lambda s: tokens.create_admin_token(s, new.name, now=t, ttl_s=new.ttl_s).to_dict()
            )
        lifetime = new.ttl_s if new.ttl_s is not None else self.config.enroll_token_ttl_s
        return self.run(
            lambda s: tokens.create_enrollment_token(s, t, lifetime, new.device_class).to_dict()
        )

    def list_admin_tokens(self, limit: int) -> list[dict[str, Any]]:
        t = now()
        return self.run(lambda s: [v.to_dict() for v in tokens.list_admin_tokens(s, t, limit)])

    def revoke_admin_token(self, token_id: int) -> None:
        t = now()
        self.run(lambda s: tokens.revoke_admin_token(s, token_id, t))

    def export_stick(
        self, path: Path, keys: list[SigningKey], ttl_s: float | None, deployment_id: int | None
    ) -> ExportResult:
        db = open_database(self.config)
        try:
            return export_stick(
                db,
                self._store(),
                path,
                keys,
                now(),
                ttl_s if ttl_s is not None else self.config.usb_plan_ttl_s,
                deployment_id,
            )
        finally:
            db.dispose()

    def list_samples(
        self, channel: str | None, version: str | None, reasons: list[str], devices: list[str]
    ) -> list[dict[str, Any]]:
        return self.run(lambda s: samples.list_samples(
            s, channel, version, reasons, devices, limit=samples.MAX_LIST))

    def export_samples(
        self, channel: str, version: str, reasons: list[str], devices: list[str]
    ) -> tuple[bytes, dict[str, Any]]:
        found = self.run(lambda s: samples.export(s, channel, version, reasons, devices))
        return found.npz_bytes(), found.sidecar()

    def import_stick(self, path: Path) -> ImportResult:
        cfg = self.config
        db = open_database(cfg)
        try:
            return import_stick(
                db,
                path,
                now(),
                cfg.max_reports_per_import,
                cfg.max_report_bytes,
                cfg.max_events_per_checkin,
            )
        finally:
            db.dispose()
