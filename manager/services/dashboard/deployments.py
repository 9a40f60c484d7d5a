"""The deployments page: the newest deployments, and what the form that starts one offers
(stored bundles, device classes and tags in use)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
import sqlalchemy.orm as so

from satchel.manager.models import Device, DeviceTag
from satchel.manager.services import bundles as bundle_service
from satchel.manager.services import deployments as deployment_service


@dataclass(frozen=True)
class DeploymentsPage:
    deployments: list[dict[str, Any]]  # `deployments.summary`, newest first, at most the limit
    total: int  # how many deployments there are
    bundles: list[dict[str, Any]]  # `bundles.summary` of every stored bundle
    classes: list[str]  # every device class in use
    tags: list[str]  # every tag in use


def fleet_labels(session: so.Session) -> tuple[list[str], list[str]]:
    """Every device class and every tag in use, sorted (for the deployment form)."""
    classes = session.scalars(
        sa.select(Device.device_class).distinct().order_by(Device.device_class)
    )
    tags = session.scalars(sa.select(DeviceTag.tag).distinct().order_by(DeviceTag.tag))
    return list(classes), list(tags)


def deployments_page(session: so.Session, limit: int) -> DeploymentsPage:
    """The newest `limit` deployments with the total, and the form's choices."""
    found = deployment_service.list_deployments(session)
    classes, tags = fleet_labels(session)
    shown = [deployment_service.summary(session, d) for d in found[:limit]]
    stored = [bundle_service.summary(b) for b in bundle_service.list_bundles(session)]
    return DeploymentsPage(shown, len(found), stored, classes, tags)
