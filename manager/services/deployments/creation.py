"""Creating a deployment: a bundle to a set of devices, in waves.

Targets are resolved to devices when the deployment is created: explicitly named devices come
first (so `--device canary-1` chooses the canary), then the rest in device-id order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
import sqlalchemy.orm as so

from satchel.manager.errors import InvalidRequestError, NotFoundError
from satchel.manager.models import Bundle, Deployment, DeploymentTarget, Device, DeviceTag
from satchel.manager.services import bundles as bundle_service
from satchel.manager.services.deployments.advance import evaluate, release_wave
from satchel.manager.services.deployments.states import ACTIVE, PENDING
from satchel.manager.services.deployments.waves import parse_waves, wave_sizes
from satchel.manager.services.devices import check_label


@dataclass(frozen=True)
class Selectors:
    """Which devices a deployment targets; a device matching any of them is a target.
    All empty means every device compatible with the bundle."""

    device_classes: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, list[str]]:
        return {
            "device_classes": list(self.device_classes),
            "tags": list(self.tags),
            "devices": list(self.devices),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Selectors:
        """Raises InvalidRequestError."""
        out: dict[str, tuple[str, ...]] = {}
        for key in ("device_classes", "tags", "devices"):
            values = d.get(key) or []
            if not isinstance(values, list):
                raise InvalidRequestError(f"'{key}' must be a list of names")
            out[key] = tuple(check_label(v, key) for v in values)
        return cls(**out)


def resolve_targets(session: so.Session, bundle: Bundle, selectors: Selectors) -> list[str]:
    """Device ids targeted by `selectors`, named devices first, then by id; devices whose
    class the bundle does not support are left out unless named (then it is refused).

    Raises NotFoundError (a named device does not exist), InvalidRequestError (a named device
    is incompatible, or nothing matches).
    """
    classes = tuple(bundle.manifest.get("compatibility", {}).get("device_classes", []))
    named = []
    for device_id in dict.fromkeys(selectors.devices):
        device = session.get(Device, device_id)
        if device is None:
            raise NotFoundError(f"no device {device_id!r}")
        if classes and device.device_class not in classes:
            raise InvalidRequestError(
                f"device {device_id} is of class {device.device_class}, which bundle "
                f"{bundle.name} {bundle.version} does not support"
            )
        named.append(device_id)
    conditions: list[Any] = []
    if selectors.device_classes:
        conditions.append(Device.device_class.in_(selectors.device_classes))
    if selectors.tags:
        tagged = sa.select(DeviceTag.device_id).where(DeviceTag.tag.in_(selectors.tags))
        conditions.append(Device.id.in_(tagged))
    query = sa.select(Device.id).order_by(Device.id)
    if conditions:
        query = query.where(sa.or_(*conditions))
    elif selectors.devices:
        query = query.where(sa.false())
    if classes:
        query = query.where(Device.device_class.in_(classes))
    rest = [d for d in session.scalars(query) if d not in set(named)]
    targets = named + rest
    if not targets:
        raise InvalidRequestError("no enrolled device matches the deployment's targets")
    return targets


def create(
    session: so.Session,
    bundle_ref: str,
    selectors: Selectors,
    waves: str,
    success_ratio: float,
    max_failure_ratio: float,
    now: datetime,
) -> Deployment:
    """Create and start a deployment of the bundle `bundle_ref` (NAME:VERSION or sha256).

    The first wave is released at once. Raises NotFoundError, InvalidRequestError.
    """
    if not 0 < success_ratio <= 1:
        raise InvalidRequestError("success ratio must be in (0, 1]")
    if not 0 <= max_failure_ratio < 1:
        raise InvalidRequestError("max failure ratio must be in [0, 1)")
    bundle = bundle_service.get_by_ref(session, bundle_ref)
    targets = resolve_targets(session, bundle, selectors)
    specs, sizes = wave_sizes(parse_waves(waves), len(targets))
    dep = Deployment(
        bundle_id=bundle.id,
        bundle=bundle,
        state=ACTIVE,
        selectors=selectors.to_dict(),
        waves=specs,
        wave_sizes=sizes,
        current_wave=0,
        success_ratio=success_ratio,
        max_failure_ratio=max_failure_ratio,
        failures_tolerated=0,
        created_at=now,
        updated_at=now,
    )
    session.add(dep)
    session.flush()
    rows = []
    position = 0
    for wave, size in enumerate(sizes):
        for device_id in targets[position : position + size]:
            rows.append(
                {
                    "deployment_id": dep.id,
                    "device_id": device_id,
                    "wave": wave,
                    "state": PENDING,
                    "updated_at": now,
                }
            )
        position += size
    session.execute(sa.insert(DeploymentTarget), rows)
    release_wave(session, dep, 0, now)
    evaluate(session, dep, now)
    return dep
