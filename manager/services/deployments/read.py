"""Reading deployments: one by id (optionally locked), the list, and their JSON-ready views."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

import sqlalchemy as sa
import sqlalchemy.orm as so

from satchel.manager.errors import NotFoundError
from satchel.manager.models import Deployment, DeploymentTarget
from satchel.manager.services.deployments.advance import evaluate, healthy_needed, wave_counts
from satchel.manager.services.deployments.states import FAILED, TARGET_STATES


def get(session: so.Session, deployment_id: int, lock: bool = False) -> Deployment:
    """Raises NotFoundError. With `lock`, the row is locked until the transaction ends."""
    query = sa.select(Deployment).where(Deployment.id == deployment_id)
    if lock:
        # populate_existing: a row this session read before is refreshed to the locked one
        query = query.with_for_update(of=Deployment).execution_options(populate_existing=True)
    dep = session.scalar(query)
    if dep is None:
        raise NotFoundError(f"no deployment {deployment_id}")
    return dep


def list_deployments(session: so.Session, state: str | None = None) -> list[Deployment]:
    query = sa.select(Deployment).order_by(Deployment.id.desc())
    if state:
        query = query.where(Deployment.state == state)
    return list(session.scalars(query))


def summary(session: so.Session, dep: Deployment) -> dict[str, Any]:
    """JSON-ready view: state, bundle, waves with their counts, totals."""
    per_wave = wave_counts(session, dep)
    totals: Counter[str] = Counter()
    waves = []
    for i, size in enumerate(dep.wave_sizes):
        totals.update(per_wave[i])
        waves.append(
            {
                "index": i,
                "spec": dep.waves[i],
                "size": size,
                "released": i <= dep.current_wave,
                "needed": healthy_needed(dep, i, per_wave[i][FAILED]),
                "counts": {s: per_wave[i][s] for s in TARGET_STATES if per_wave[i][s]},
            }
        )
    b = dep.bundle
    return {
        "id": dep.id,
        "state": dep.state,
        "reason": dep.reason,
        "bundle": {
            "name": b.name,
            "version": b.version,
            "sequence": b.sequence,
            "sha256": b.sha256,
        },
        "selectors": dep.selectors,
        "current_wave": dep.current_wave,
        "success_ratio": dep.success_ratio,
        "max_failure_ratio": dep.max_failure_ratio,
        "failures_tolerated": dep.failures_tolerated,
        "waves": waves,
        "counts": {s: totals[s] for s in TARGET_STATES if totals[s]},
        "targets_total": sum(dep.wave_sizes),
        "created_at": dep.created_at.isoformat(),
        "updated_at": dep.updated_at.isoformat(),
    }


def status(session: so.Session, deployment_id: int, now: datetime) -> dict[str, Any]:
    """Evaluate the deployment (it may advance or halt), then describe it with every
    device's progress. Raises NotFoundError."""
    dep = get(session, deployment_id, lock=True)
    evaluate(session, dep, now)
    out = summary(session, dep)
    targets = session.scalars(
        sa.select(DeploymentTarget)
        .where(DeploymentTarget.deployment_id == dep.id)
        .order_by(DeploymentTarget.wave, DeploymentTarget.device_id)
    )
    out["targets"] = [
        {
            "device_id": t.device_id,
            "wave": t.wave,
            "state": t.state,
            "reason": t.reason,
            "updated_at": t.updated_at.isoformat(),
        }
        for t in targets
    ]
    return out
