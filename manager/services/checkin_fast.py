"""The check-in fast path: a device whose state did not change costs one database round trip.

Most check-ins of a settled fleet repeat the previous one: the same status; only the health
counters and the clock moved, and maybe a health sample came along as an event. For those,
one statement checks the credential, recognises the unchanged state by its digest
(`devices.state_digest`), records last_seen, state_at and health, and returns the device's
released deployment targets with the trust root version (PostgreSQL: an UPDATE in a CTE, in
autocommit; SQLite: two statements in one transaction). Python then checks that the check-in
moves no target, with the same `deployments.target_change` the full path uses; events that
no deployment acts on are then inserted (idempotent by (device_id, id), as on the full path).

Anything else takes the full path (`checkin.record_with_token`): an unknown, revoked or
foreign credential, a changed state, a report older than the state recorded, an install or
failure event, a target that would move. The fast statement may already have written
last_seen, state_at and health then; that is harmless, the full path writes the same values.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa

from satchel.manager.models import (
    Bundle,
    Deployment,
    DeploymentTarget,
    Device,
    TrustRoot,
    UTCDateTime,
)
from satchel.manager.services import deployments
from satchel.manager.services.deployments import BundleRef, DeviceTarget

_DEVICES = cast(sa.Table, Device.__table__)
_TARGETS = cast(sa.Table, DeploymentTarget.__table__)
_DEPLOYMENTS = cast(sa.Table, Deployment.__table__)
_BUNDLES = cast(sa.Table, Bundle.__table__)
_TRUST = cast(sa.Table, TrustRoot.__table__)


class PolicyCache:
    """Health policies of bundles, read once per process: a bundle's manifest never changes,
    and the key includes its sha256, so a reused row id cannot return another's policy.
    One small entry per bundle a device was offered, so it needs no bound of its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._policies: dict[tuple[int, str], dict[str, Any]] = {}

    def policy(self, conn: sa.Connection, bundle: BundleRef) -> Mapping[str, Any]:
        key = (bundle.id, bundle.sha256)
        with self._lock:
            found = self._policies.get(key)
        if found is None:
            manifest = conn.scalar(
                sa.select(_BUNDLES.c.manifest).where(
                    _BUNDLES.c.id == bundle.id, _BUNDLES.c.sha256 == bundle.sha256
                )
            )
            found = dict((manifest or {}).get("health_policy", {}))
            if manifest is not None:  # a bundle removed meanwhile is not remembered
                with self._lock:
                    self._policies[key] = found
        return found


POLICIES = PolicyCache()  # one per process; see PolicyCache


def _touch_device() -> sa.Update:
    """Record an unchanged check-in of the device holding the credential, if its state digest
    matches and the report is not older than the state recorded (see checkin._record)."""
    d = _DEVICES.c
    seen = sa.bindparam("seen", type_=UTCDateTime())
    capped = sa.bindparam("seen_capped", type_=UTCDateTime())  # seen, but never in the future
    newer = sa.or_(d.last_seen_at.is_(None), d.last_seen_at < seen)
    return (
        sa.update(_DEVICES)
        .where(
            d.id == sa.bindparam("device_id"),
            d.token_hash == sa.bindparam("credential"),
            d.state_digest == sa.bindparam("digest"),
            sa.or_(
                d.state_at.is_(None),
                sa.bindparam("unordered", type_=sa.Boolean),
                d.state_at <= seen,
            ),
        )
        .values(
            state_at=seen,
            health=sa.bindparam("new_health", type_=sa.JSON),
            last_seen_at=sa.case((newer, capped), else_=d.last_seen_at),
            last_via=sa.case((newer, sa.bindparam("new_via")), else_=d.last_via),
        )
        .returning(d.id)
    )


_TRUST_VERSION = sa.select(sa.func.max(_TRUST.c.version))


def _target_columns(device_id: Any) -> sa.Select[Any]:
    t, dep, b = _TARGETS.c, _DEPLOYMENTS.c, _BUNDLES.c
    return sa.select(
        device_id,
        t.deployment_id,
        t.state,
        t.reason,
        dep.state,
        b.id,
        b.name,
        b.version,
        b.sequence,
        b.sha256,
        b.size,
        _TRUST_VERSION.scalar_subquery(),
    )


def _released(t: Any, dep: Any) -> sa.ColumnElement[bool]:
    """Released targets of deployments still tracked (an OR, not an expanding IN: one plan)."""
    return sa.and_(
        t.state != deployments.PENDING,
        sa.or_(*(dep.state == state for state in deployments.TRACKED)),
    )


def _targets_joined() -> Any:
    t, dep, b = _TARGETS.c, _DEPLOYMENTS.c, _BUNDLES.c
    return _TARGETS.join(_DEPLOYMENTS, dep.id == t.deployment_id).join(
        _BUNDLES, b.id == dep.bundle_id
    )


def _pg_statement() -> sa.Select[Any]:
    """The device touched by `_touch_device` with its released targets (none: one row of
    NULLs) and the trust root version on every row; no row when the touch did not apply."""
    device = _touch_device().cte("device")
    t = _TARGETS.c
    on = sa.and_(t.device_id == device.c.id, _released(t, _DEPLOYMENTS.c))
    return (
        _target_columns(device.c.id)
        .select_from(sa.outerjoin(device, _targets_joined(), on))
        .order_by(t.deployment_id)
    )


def _sqlite_targets() -> sa.Select[Any]:
    """The released targets of device `device_id`, with the trust root version. (An outer join
    from the device, as on PostgreSQL, makes SQLite materialize every tracked target.)"""
    t = _TARGETS.c
    return (
        _target_columns(t.device_id)
        .select_from(_targets_joined())
        .where(t.device_id == sa.bindparam("device_id"), _released(t, _DEPLOYMENTS.c))
        .order_by(t.deployment_id)
    )


# built once: these run on every check-in (PostgreSQL prepares them after a few runs)
_PG_STATEMENT = _pg_statement()
_SQLITE_TOUCH = _touch_device()
_SQLITE_TARGETS = _sqlite_targets()


def touch(
    conn: sa.Connection,
    token_hash: str,
    device_id: str,
    digest: str,
    health: Mapping[str, Any],
    sent_at: datetime | None,
    via: str,
    now: datetime,
) -> tuple[list[DeviceTarget], int | None] | None:
    """Record an unchanged check-in; return the device's targets and the trust root version,
    or None when the fast path does not apply (nothing was written then). PostgreSQL: `conn`
    should be in autocommit; SQLite: in a transaction. Raises sqlalchemy errors."""
    seen = sent_at or now
    params = {
        "device_id": device_id,
        "credential": token_hash,
        "digest": digest,
        "unordered": sent_at is None,
        "seen": seen,
        "seen_capped": min(seen, now),
        "new_health": dict(health),
        "new_via": via,
    }
    if conn.dialect.name == "postgresql":
        rows = conn.execute(_PG_STATEMENT, params).all()
        if not rows:
            return None
    else:
        if conn.execute(_SQLITE_TOUCH, params).first() is None:
            return None
        rows = conn.execute(_SQLITE_TARGETS, {"device_id": device_id}).all()
        if not rows:
            return [], conn.scalar(_TRUST_VERSION)
    targets = [
        DeviceTarget(r[1], r[2], r[3], r[4], BundleRef(r[5], r[6], r[7], r[8], r[9], r[10]))
        for r in rows
        if r[1] is not None
    ]
    return targets, rows[0][11]


def may_move_a_target(event: deployments.ReportedEvent) -> bool:
    """Whether deployments act on this kind of event (a failure or an install step); others,
    such as health samples, are only stored."""
    return event.is_failure or event.kind in deployments.PROGRESS_EVENTS


def moves_a_target(
    conn: sa.Connection,
    targets: list[DeviceTarget],
    channels: Mapping[str, deployments.ChannelReport],
    health: Mapping[str, Any],
    policies: PolicyCache = POLICIES,
) -> bool:
    """True when this check-in (with no event that `may_move_a_target`) would change one of
    the device's targets, i.e. the full path must record its progress."""
    by_id = {dt.bundle.id: dt.bundle for dt in targets}

    def policy_of(bundle_id: int) -> Mapping[str, Any]:
        return policies.policy(conn, by_id[bundle_id])

    return any(
        deployments.target_change(dt, channels, health, (), policy_of) is not None for dt in targets
    )
