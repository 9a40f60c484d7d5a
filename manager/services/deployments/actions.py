"""What an admin does to a running deployment: pause, resume, abort. The API, the web
dashboard and the CLI all go through `act`."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy.orm as so

from satchel.manager.errors import ConflictError, InvalidRequestError
from satchel.manager.models import Deployment
from satchel.manager.services.deployments.advance import evaluate, wave_counts
from satchel.manager.services.deployments.read import get
from satchel.manager.services.deployments.states import (
    ABORTED,
    ACTIVE,
    COMPLETED,
    FAILED,
    HALTED,
    PAUSED,
)

ACTIONS = ("pause", "resume", "abort")


def pause(session: so.Session, deployment_id: int, now: datetime) -> Deployment:
    """Stop offering the bundle to further devices. Raises NotFoundError, ConflictError."""
    dep = get(session, deployment_id, lock=True)
    if dep.state != ACTIVE:
        raise ConflictError(f"deployment {dep.id} is {dep.state}; only an active one can pause")
    dep.state, dep.updated_at = PAUSED, now
    return dep


def resume(session: so.Session, deployment_id: int, now: datetime) -> Deployment:
    """Continue a paused or halted deployment. Failures that halted it are tolerated from
    now on (they no longer halt it nor block their wave); new ones count again.
    Raises NotFoundError, ConflictError."""
    dep = get(session, deployment_id, lock=True)
    if dep.state not in (PAUSED, HALTED):
        raise ConflictError(
            f"deployment {dep.id} is {dep.state}; only a paused or halted one can resume"
        )
    if dep.state == HALTED:
        failed = sum(c[FAILED] for c in wave_counts(session, dep).values())
        dep.failures_tolerated = failed
    dep.state, dep.reason, dep.updated_at = ACTIVE, None, now
    evaluate(session, dep, now)
    return dep


def abort(session: so.Session, deployment_id: int, now: datetime, reason: str = "") -> Deployment:
    """End a deployment for good: nothing more is offered or served for it.
    Raises NotFoundError, ConflictError."""
    dep = get(session, deployment_id, lock=True)
    if dep.state in (ABORTED, COMPLETED):
        raise ConflictError(f"deployment {dep.id} is already {dep.state}")
    dep.state, dep.updated_at = ABORTED, now
    dep.reason = reason or "aborted by an admin"
    return dep


def act(
    session: so.Session, deployment_id: int, action: str, now: datetime, reason: str = ""
) -> Deployment:
    """Do `action` (one of ACTIONS) to the deployment; `reason` is recorded by an abort.

    Raises NotFoundError, ConflictError, InvalidRequestError (not one of ACTIONS).
    """
    if action == "pause":
        return pause(session, deployment_id, now)
    if action == "resume":
        return resume(session, deployment_id, now)
    if action == "abort":
        return abort(session, deployment_id, now, reason)
    raise InvalidRequestError(f"a deployment can {', '.join(ACTIONS)}, not {action[:40]!r}")
