"""A device's released deployment targets, and the health policies they are judged by.

One query and one loader for the check-in (fast and full path alike) and the deployment
progress engine (`deployments.record_progress` and `target_change` take the loader's lookup):
a target is released once its wave is (no longer pending), and followed while its deployment
is tracked (active, paused or halted).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import sqlalchemy as sa
import sqlalchemy.orm as so

from satchel.manager.models import Bundle, Deployment, DeploymentTarget
from satchel.manager.services.deployments import (
    PENDING,
    TRACKED,
    BundleRef,
    DeviceTarget,
    PolicyLookup,
)

TARGETS = cast(sa.Table, DeploymentTarget.__table__)
DEPLOYMENTS = cast(sa.Table, Deployment.__table__)
BUNDLES = cast(sa.Table, Bundle.__table__)

# what a DeviceTarget holds, in `target`'s order
COLUMNS = (
    TARGETS.c.deployment_id,
    TARGETS.c.state,
    TARGETS.c.reason,
    DEPLOYMENTS.c.state,
    BUNDLES.c.id,
    BUNDLES.c.name,
    BUNDLES.c.version,
    BUNDLES.c.sequence,
    BUNDLES.c.sha256,
    BUNDLES.c.size,
)
JOINED = TARGETS.join(DEPLOYMENTS, DEPLOYMENTS.c.id == TARGETS.c.deployment_id).join(
    BUNDLES, BUNDLES.c.id == DEPLOYMENTS.c.bundle_id
)
# an OR, not an expanding IN: the statement keeps one plan (PostgreSQL prepares it)
RELEASED = sa.and_(
    TARGETS.c.state != PENDING,
    sa.or_(*(DEPLOYMENTS.c.state == state for state in TRACKED)),
)
# built once: this runs on every check-in
RELEASED_TARGETS = (
    sa.select(*COLUMNS)
    .select_from(JOINED)
    .where(TARGETS.c.device_id == sa.bindparam("device_id"), RELEASED)
    .order_by(TARGETS.c.deployment_id)
)


def target(row: Sequence[Any]) -> DeviceTarget:
    """The DeviceTarget of a row that starts with `COLUMNS`."""
    return DeviceTarget(
        row[0], row[1], row[2], row[3], BundleRef(row[4], row[5], row[6], row[7], row[8], row[9])
    )


def released_targets(db: so.Session | sa.Connection, device_id: str) -> list[DeviceTarget]:
    """Released targets of `device_id` in deployments still tracking progress, by
    deployment id. Raises sqlalchemy errors."""
    return [target(r) for r in db.execute(RELEASED_TARGETS, {"device_id": device_id})]


# the manifest of a bundle, if it is still the one with this sha256
MANIFEST = sa.select(BUNDLES.c.manifest).where(
    BUNDLES.c.id == sa.bindparam("bundle_id"), BUNDLES.c.sha256 == sa.bindparam("sha256")
)
# reads MANIFEST for a bundle: None when the bundle is gone
ManifestReader = Callable[[BundleRef], Mapping[str, Any] | None]


def manifest_params(bundle: BundleRef) -> dict[str, Any]:
    """The parameters of MANIFEST for `bundle`."""
    return {"bundle_id": bundle.id, "sha256": bundle.sha256}


class HealthPolicies:
    """Health policies of bundles, read once per process: a bundle's manifest never changes,
    and the key includes its sha256, so a reused row id cannot return another's policy.
    One small entry per bundle a device was offered, so it needs no bound of its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._policies: dict[tuple[int, str], dict[str, Any]] = {}

    def policy(self, read: ManifestReader, bundle: BundleRef) -> Mapping[str, Any]:
        """The `health_policy` of `bundle`'s manifest ({} when it has none, or the bundle
        is gone), read by `read` on first need. Raises what `read` raises."""
        key = (bundle.id, bundle.sha256)
        with self._lock:
            found = self._policies.get(key)
        if found is None:
            manifest = read(bundle)
            found = dict((manifest or {}).get("health_policy", {}))
            if manifest is not None:  # a bundle removed meanwhile is not remembered
                with self._lock:
                    self._policies[key] = found
        return found

    def lookup(
        self, db: so.Session | sa.Connection, targets: Iterable[DeviceTarget]
    ) -> PolicyLookup:
        """The policy of a bundle of `targets` by its id, read through `db` on first need.
        The lookup raises sqlalchemy errors."""
        return self.lookup_by(lambda b: db.scalar(MANIFEST, manifest_params(b)), targets)

    def lookup_by(self, read: ManifestReader, targets: Iterable[DeviceTarget]) -> PolicyLookup:
        """The policy of a bundle of `targets` by its id, read by `read` on first need."""
        by_id = {dt.bundle.id: dt.bundle for dt in targets}
        return lambda bundle_id: self.policy(read, by_id[bundle_id])


POLICIES = HealthPolicies()  # one per process; see HealthPolicies
