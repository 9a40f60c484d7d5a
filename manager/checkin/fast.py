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
The statements are built with SQLAlchemy like the full path's and run on the driver's own
connection (driver.py): SQLAlchemy's execution around them cost more CPU than the database
spent on them.

Anything else takes the full path (`record.record_with_token`): an unknown, revoked or
foreign credential, a changed state, a report older than the state recorded, an install or
failure event, a target that would move. The fast statement may already have written
last_seen, state_at and health then; that is harmless, the full path writes the same values.
`tests/manager/test_manager_checkin_parity.py` holds both paths to the same rows.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa

from satchel.manager.checkin import driver
from satchel.manager.checkin.answer import CheckinResult, offers
from satchel.manager.checkin.device_row import (
    DEVICES,
    SEEN,
    Sighting,
    seen_is_newer,
    state_applies,
)
from satchel.manager.checkin.driver import DriverStatement
from satchel.manager.checkin.parse import CheckinReport, DeviceEvent
from satchel.manager.checkin.record import LAN, event_params, events_insert
from satchel.manager.db import SQLITE_BEGIN, Database, is_disk_full
from satchel.manager.models import TrustRoot, UTCDateTime
from satchel.manager.services import deployments, targets
from satchel.manager.services.credentials import DEVICE, hash_token, token_kind
from satchel.manager.services.deltas import DELTAS_OF, delta_refs
from satchel.manager.services.deployments import BundleRef, DeviceTarget
from satchel.manager.services.targets import POLICIES, HealthPolicies, ManifestReader

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


# compiled once per dialect, run on the driver's connection (driver.py): on every check-in
_PG_STATEMENT = DriverStatement(_pg_statement())
_SQLITE_TOUCH = DriverStatement(_touch_device())
# (an outer join from the device, as on PostgreSQL, makes SQLite materialize every target)
_SQLITE_TARGETS = DriverStatement(
    targets.RELEASED_TARGETS.add_columns(_TRUST_VERSION.scalar_subquery())
)
_SQLITE_TRUST_VERSION = DriverStatement(_TRUST_VERSION)
_MANIFEST = DriverStatement(targets.MANIFEST)  # a health policy, read once per process
_DELTAS = DriverStatement(DELTAS_OF)  # an offered bundle's deltas (services/deltas.py)
_TRUST_COLUMN = len(targets.COLUMNS)


def touch(
    cursor: Any,
    dialect: sa.Dialect,
    token_hash: str,
    device_id: str,
    digest: str,
    health: Mapping[str, Any],
    sighting: Sighting,
    via: str,
) -> tuple[list[DeviceTarget], int | None] | None:
    """Record an unchanged check-in; return the device's targets and the trust root version,
    or None when the fast path does not apply (nothing was written then). `cursor` is a DBAPI
    cursor of `dialect` (driver.py); PostgreSQL: in autocommit; SQLite: in a transaction.
    Raises the driver's errors."""
    params = {
        "device_id": device_id,
        "credential": token_hash,
        "digest": digest,
        **sighting.params(),
        "seen_capped": sighting.seen_capped,
        "new_health": health,
        "new_via": via,
    }
    if dialect.name == "postgresql":
        rows = _PG_STATEMENT.rows(cursor, dialect, params)
        if not rows:
            return None
    else:
        if not _SQLITE_TOUCH.rows(cursor, dialect, params):
            return None
        rows = _SQLITE_TARGETS.rows(cursor, dialect, {"device_id": device_id})
        if not rows:
            return [], _SQLITE_TRUST_VERSION.rows(cursor, dialect, {})[0][0]
    found = [targets.target(r) for r in rows if r[0] is not None]
    return found, rows[0][_TRUST_COLUMN]


def may_move_a_target(event: deployments.ReportedEvent) -> bool:
    """Whether deployments act on this kind of event (a failure or an install step); others,
    such as health samples, are only stored."""
    return event.is_failure or event.kind in deployments.PROGRESS_EVENTS


def moves_a_target(
    found: list[DeviceTarget],
    channels: Mapping[str, deployments.ChannelReport],
    health: Mapping[str, Any],
    read_manifest: ManifestReader,
    policies: HealthPolicies = POLICIES,
) -> bool:
    """True when this check-in (with no event that `may_move_a_target`) would change one of
    the device's targets, i.e. the full path must record its progress. Raises what
    `read_manifest` raises (reading a health policy on first need)."""
    policy_of = policies.lookup_by(read_manifest, found)
    return any(
        deployments.target_change(dt, channels, health, (), policy_of) is not None for dt in found
    )


def _manifest(cursor: Any, dialect: sa.Dialect, bundle: BundleRef) -> Mapping[str, Any] | None:
    rows = _MANIFEST.rows(cursor, dialect, targets.manifest_params(bundle))
    return rows[0][0] if rows else None


def _insert_events(
    cursor: Any, dialect: sa.Dialect, device_id: str, events: tuple[DeviceEvent, ...], now: datetime
) -> set[str]:
    """The full path's INSERT of events (record.py), one statement: the new ids."""
    if not events:
        return set()
    statement = _events_statement(dialect.name, len(events))
    params = event_params(device_id, events, LAN, now)
    return {row[0] for row in statement.rows(cursor, dialect, params)}


@functools.lru_cache(maxsize=32)
def _events_statement(dialect_name: str, count: int) -> DriverStatement:
    return DriverStatement(events_insert(dialect_name, count))


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
    engine = db.autocommit_engine()
    dialect = engine.dialect
    # PostgreSQL: each statement its own transaction; SQLite: one, holding the write lock
    begin = SQLITE_BEGIN if dialect.name == "sqlite" else None
    try:
        with driver.connection(engine, begin) as cursor:
            touched = touch(
                cursor,
                dialect,
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

            def read_manifest(bundle: BundleRef) -> Mapping[str, Any] | None:
                return _manifest(cursor, dialect, bundle)

            if moves_a_target(found, report.channels, report.health, read_manifest):
                return None
            answer = offers(found, report.channels,  # with deltas, to agents that patch
                            (lambda bundle_id: delta_refs(_DELTAS.rows(
                                cursor, dialect, {"bundle_id": bundle_id})))
                            if "delta" in report.accepts else None)
            new_ids = _insert_events(cursor, dialect, device_id, report.events, now)
    except sa.exc.DBAPIError as e:
        # a dropped connection: the full path retries; a full disk: it refuses the check-in
        if e.connection_invalidated or is_disk_full(e):
            return None
        raise
    return CheckinResult(
        device_id=device_id,
        offers=answer,
        trust_root_version=trust_version,
        events_recorded=len(new_ids),
        events_duplicate=len(report.events) - len(new_ids),
        state_applied=True,
        fast=True,
    )
