"""The deployments page: the newest deployments, and what the form that starts one offers
(stored bundles, device classes and tags in use)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
import sqlalchemy.orm as so

from satchel.manager.models import Device, DeviceTag
from satchel.manager.services import bundles as bundle_service
from satchel.manager.services import deployments as deployment_service
from satchel.manager.services.deployments.states import (
    ABORTED,
    COMPLETED,
    FAILED,
    HALTED,
    PAUSED,
    SUCCEEDED,
)


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


def wave_line(deployment: Mapping[str, Any], wave: Mapping[str, Any]) -> str:
    """What one wave of a deployment (`deployments.summary`) is waiting for, or how it ended,
    in words that fit the deployment's state: a halted wave says why it stopped, not how many
    healthy devices it needs."""
    state, current, index = deployment["state"], deployment["current_wave"], wave["index"]
    counts, size = wave.get("counts") or {}, wave["size"]
    healthy, failed = counts.get(SUCCEEDED, 0), counts.get(FAILED, 0)
    tally = f"{healthy} of {size} healthy" + (f", {failed} failed" if failed else "")
    if not wave["released"]:
        if state in (HALTED, ABORTED):
            return f"not released: the deployment is {state}"
        return f"released once wave {index} advances; will need {wave['needed']} healthy"
    if index < current or state == COMPLETED:
        return f"advanced: {tally}"
    if state == HALTED:
        return f"halted here: {tally}"
    if state == ABORTED:
        return f"aborted here: {tally}"
    needed = wave["needed"]
    if needed <= healthy:
        return f"{tally}: advances at the next check"
    paused = "paused; " if state == PAUSED else ""
    return f"{paused}needs {needed - healthy} more healthy to advance: {tally}"
