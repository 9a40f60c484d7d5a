"""The fast path: a device whose state did not change costs one database round trip.

Most check-ins of a settled fleet repeat the previous one: the same status; only the health
counters and the clock moved, and maybe a health sample came along as an event. For those,
one statement checks the credential, recognises the unchanged state by its digest
(`devices.state_digest`), records last_seen, state_at and health by the rules of device_row,
and returns the device's released deployment targets (`services/targets.py`) with the trust
root version (PostgreSQL: an UPDATE in a CTE, in autocommit; SQLite: two statements in one
transaction). Python then checks that the check-in moves no target, with the same
`deployments.target_change` and health-policy loader the full path uses; events that no
deployment acts on are then inserted (idempotent by (device_id, id), as on the full path).

Anything else takes the full path (`record.record_with_token`): an unknown, revoked or
foreign credential, a changed state, a report older than the state recorded, an install or
failure event, a target that would move. The fast statement may already have written
last_seen, state_at and health then; that is harmless, the full path writes the same values.
`tests/manager/test_manager_checkin_parity.py` holds both paths to the same rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa

from satchel.manager.checkin.answer import CheckinResult, offers
from satchel.manager.checkin.device_row import (
    DEVICES,
    SEEN,
    Sighting,
    seen_is_newer,
    state_applies,
)
from satchel.manager.checkin.parse import CheckinReport
from satchel.manager.checkin.record import LAN, insert_events
from satchel.manager.db import Database
from satchel.manager.errors import DiskFullError
from satchel.manager.models import TrustRoot, UTCDateTime
from satchel.manager.services import deployments, targets
from satchel.manager.services.credentials import DEVICE, hash_token, token_kind
from satchel.manager.services.deployments import DeviceTarget
from satchel.manager.services.targets import POLICIES, HealthPolicies

_TRUST = cast(sa.Table, TrustRoot.__table__)
_TRUST_VERSION = sa.select(sa.func.max(_TRUST.c.version))


def _touch_device() -> sa.Update:
    """Record an unchanged check-in of the device holding the credential, if its state digest
    matches and the report's state applies (see device_row)."""
    d = DEVICES.c
    newer = seen_is_newer()
    capped = sa.bindparam("seen_capped", type_=UTCDateTime())  # seen, never in the future
    return (
        sa.update(DEVICES)
        .where(
            d.id == sa.bindparam("device_id"),
            d.token_hash == sa.bindparam("credential"),
            d.state_digest == sa.bindparam("digest"),
            state_applies(),
        )
        .values(
            state_at=SEEN,
            health=sa.bindparam("new_health", type_=sa.JSON),
            last_seen_at=sa.case((newer, capped), else_=d.last_seen_at),
            last_via=sa.case((newer, sa.bindparam("new_via")), else_=d.last_via),
        )
        .returning(d.id)
    )


def _pg_statement() -> sa.Select[Any]:
    """The device touched by `_touch_device` with its released targets (none: one row of
    NULLs) and the trust root version on every row; no row when the touch did not apply."""
    device = _touch_device().cte("device")
    t = targets.TARGETS.c
    on = sa.and_(t.device_id == device.c.id, targets.RELEASED)
    return (
        sa.select(*targets.COLUMNS, _TRUST_VERSION.scalar_subquery())
        .select_from(sa.outerjoin(device, targets.JOINED, on))
        .order_by(t.deployment_id)
    )


# built once: these run on every check-in (PostgreSQL prepares them after a few runs)
_PG_STATEMENT = _pg_statement()
_SQLITE_TOUCH = _touch_device()
# (an outer join from the device, as on PostgreSQL, makes SQLite materialize every target)
_SQLITE_TARGETS = targets.RELEASED_TARGETS.add_columns(_TRUST_VERSION.scalar_subquery())
_TRUST_COLUMN = len(targets.COLUMNS)


def touch(
    conn: sa.Connection,
    token_hash: str,
    device_id: str,
    digest: str,
    health: Mapping[str, Any],
    sighting: Sighting,
    via: str,
) -> tuple[list[DeviceTarget], int | None] | None:
    """Record an unchanged check-in; return the device's targets and the trust root version,
    or None when the fast path does not apply (nothing was written then). PostgreSQL: `conn`
    should be in autocommit; SQLite: in a transaction. Raises sqlalchemy errors."""
    params = {
        "device_id": device_id,
        "credential": token_hash,
        "digest": digest,
        **sighting.params(),
        "seen_capped": sighting.seen_capped,
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
    found = [targets.target(r) for r in rows if r[0] is not None]
    return found, rows[0][_TRUST_COLUMN]


def may_move_a_target(event: deployments.ReportedEvent) -> bool:
    """Whether deployments act on this kind of event (a failure or an install step); others,
    such as health samples, are only stored."""
    return event.is_failure or event.kind in deployments.PROGRESS_EVENTS


def moves_a_target(
    conn: sa.Connection,
    found: list[DeviceTarget],
    channels: Mapping[str, deployments.ChannelReport],
    health: Mapping[str, Any],
    policies: HealthPolicies = POLICIES,
) -> bool:
    """True when this check-in (with no event that `may_move_a_target`) would change one of
    the device's targets, i.e. the full path must record its progress. Raises sqlalchemy
    errors (reading a health policy)."""
    policy_of = policies.lookup(conn, found)
    return any(
        deployments.target_change(dt, channels, health, (), policy_of) is not None for dt in found
    )


def record_unchanged(
    db: Database, token: str, device_id: str, report: CheckinReport, now: datetime
) -> CheckinResult | None:
    """Record a check-in on the fast path; None when it needs the full one (nothing but
    last_seen, state_at and health may have been written then). Events that no deployment
    acts on (health samples, ...) ride along; any other needs the full path. A database out
    of space gives way to the full path too, which refuses it with DiskFullError; the events
    are one INSERT, so none of them was recorded. Raises sqlalchemy errors but a dropped
    connection."""
    if token_kind(token) != DEVICE:
        return None
    if any(may_move_a_target(e.reported()) for e in report.events):
        return None
    sighting = Sighting(report.sent_at, now)
    try:
        with db.autocommit() as conn:
            touched = touch(
                conn,
                hash_token(token),
                device_id,
                report.state_digest,
                report.health,
                sighting,
                LAN,
            )
            if touched is None:
                return None
            found, trust_version = touched
            if moves_a_target(conn, found, report.channels, report.health):
                return None
            new_ids = insert_events(conn, device_id, report.events, LAN, now)
    except sa.exc.DBAPIError as e:
        if e.connection_invalidated:  # a dropped connection: the full path retries
            return None
        raise
    except DiskFullError:
        return None
    return CheckinResult(
        device_id=device_id,
        offers=offers(found, report.channels),
        trust_root_version=trust_version,
        events_recorded=len(new_ids),
        events_duplicate=len(report.events) - len(new_ids),
        state_applied=True,
        fast=True,
    )
