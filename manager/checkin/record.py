"""The full path: record a check-in in one transaction and work out what to install.

The same function records a check-in that came over the LAN and a signed report imported from
a USB stick, so a USB-only device is as visible as a LAN one. The device row is locked first
(one check-in of a device at a time); the device's deployment targets move along with what it
reports. Events carry a device-generated id: re-delivering them (a retried check-in, a stick
imported twice) records nothing twice.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
import sqlalchemy.orm as so
from sqlalchemy.dialects import postgresql, sqlite

from satchel.manager.checkin.answer import CheckinResult, offers
from satchel.manager.checkin.device_row import DEVICES, Sighting, seen_is_newer, state_applies
from satchel.manager.checkin.parse import CheckinReport, DeviceEvent
from satchel.manager.errors import AuthError, ForbiddenError, NotFoundError
from satchel.manager.models import DeviceChannel, Event
from satchel.manager.services import deployments, trust
from satchel.manager.services.credentials import DEVICE, hash_token, token_kind
from satchel.manager.services.deltas import deltas_of
from satchel.manager.services.deployments import ChannelReport
from satchel.manager.services.targets import POLICIES, released_targets

LAN, USB = "lan", "usb"  # how a check-in came (devices.last_via, events.via)


_EVENTS = cast(sa.Table, Event.__table__)
_EVENT_COLUMNS = (
    "device_id", "event_id", "kind", "channel", "version", "sequence", "bundle_sha256",
    "deployment_id", "passed", "reason", "figures", "occurred_at", "received_at", "via",
)  # fmt: skip


@functools.lru_cache(maxsize=32)
def events_insert(dialect_name: str, count: int) -> sa.Insert:
    """The INSERT of `count` events (parameters `COLUMN_I`, see `event_params`), skipping ids
    already recorded for the device and returning the new ids. One statement per count, so
    it is compiled once, not at every check-in that carries events."""
    insert = postgresql.insert if dialect_name == "postgresql" else sqlite.insert
    rows = [
        {name: sa.bindparam(f"{name}_{i}", type_=_EVENTS.c[name].type) for name in _EVENT_COLUMNS}
        for i in range(count)
    ]
    return (
        insert(_EVENTS)
        .values(rows)
        .on_conflict_do_nothing(index_elements=["device_id", "event_id"])
        .returning(_EVENTS.c.event_id)
    )


def event_params(
    device_id: str, events: tuple[DeviceEvent, ...], via: str, now: datetime
) -> dict[str, Any]:
    """The parameters of `events_insert(..., len(events))` for these events."""
    params: dict[str, Any] = {}
    for i, e in enumerate(events):
        row = (
            device_id, e.event_id, e.kind, e.channel, e.version, e.sequence, e.bundle_sha256,
            e.deployment_id, e.passed, e.reason, e.figures, e.occurred_at, now, via,
        )  # fmt: skip
        params.update(
            (f"{name}_{i}", value) for name, value in zip(_EVENT_COLUMNS, row, strict=True)
        )
    return params


def insert_events(
    db: so.Session | sa.Connection,
    device_id: str,
    events: tuple[DeviceEvent, ...],
    via: str,
    now: datetime,
) -> set[str]:
    """Insert events, skipping ids already recorded for this device; return the new ids.
    Raises sqlalchemy errors."""
    if not events:
        return set()
    bind = db if isinstance(db, sa.Connection) else db.get_bind()
    stmt = events_insert(bind.dialect.name, len(events))
    return set(db.execute(stmt, event_params(device_id, events, via, now)).scalars())


def _sync_channels(
    session: so.Session, device_id: str, channels: dict[str, ChannelReport], now: datetime
) -> None:
    existing = {
        c.channel: c
        for c in session.scalars(
            sa.select(DeviceChannel).where(DeviceChannel.device_id == device_id)
        )
    }
    for name, ch in channels.items():
        row = existing.get(name)
        if row is None:
            row = DeviceChannel(device_id=device_id, channel=name)
            session.add(row)
        if (row.active_version, row.active_sequence, row.state) != (
            ch.active_version,
            ch.active_sequence,
            ch.state,
        ):
            row.active_version, row.active_sequence = ch.active_version, ch.active_sequence
            row.state, row.updated_at = ch.state, now
    for name, row in existing.items():
        if name not in channels:
            session.delete(row)
    session.flush()


_DEVICE_ROW = sa.select(
    DEVICES.c.id,
    DEVICES.c.status,
    DEVICES.c.health,
    DEVICES.c.agent_version,
    DEVICES.c.trust_root_version,
    DEVICES.c.state_digest,
    state_applies().label("state_applies"),
    seen_is_newer().label("seen_is_newer"),
)
# built once, each on an index: these run on every check-in
_DEVICE_BY_TOKEN = _DEVICE_ROW.where(DEVICES.c.token_hash == sa.bindparam("key")).with_for_update()
_DEVICE_BY_ID = _DEVICE_ROW.where(DEVICES.c.id == sa.bindparam("key")).with_for_update()
_UPDATE_DEVICE = DEVICES.update().where(DEVICES.c.id == sa.bindparam("device_id_"))


def _device_row(session: so.Session, statement: Any, key: str, sighting: Sighting) -> Any:
    """The device's check-in columns, row-locked (one check-in of a device at a time), with
    the rules of device_row judged for `sighting`."""
    return session.execute(statement, {"key": key, **sighting.params()}).first()


def authenticated_row(session: so.Session, token: str, device_id: str, sighting: Sighting) -> Any:
    """The locked row of the device holding `token`. Raises AuthError (unknown or revoked
    credential), ForbiddenError (another device's or an admin credential)."""
    kind = token_kind(token)
    if kind is not None and kind != DEVICE:
        raise ForbiddenError("this resource needs device credentials")
    row = _device_row(session, _DEVICE_BY_TOKEN, hash_token(token), sighting) if kind else None
    if row is None:
        raise AuthError("invalid or revoked credentials")
    if row.id != device_id:
        raise ForbiddenError("a device may only access its own data")
    return row


def record_with_token(
    session: so.Session, token: str, device_id: str, report: CheckinReport, now: datetime
) -> CheckinResult:
    """Authenticate a device credential and record its LAN check-in in one transaction.

    Raises AuthError (unknown or revoked credential), ForbiddenError (another device's or
    an admin credential).
    """
    sighting = Sighting(report.sent_at, now)
    row = authenticated_row(session, token, device_id, sighting)
    return _record(session, row, report, sighting, LAN)


def record(
    session: so.Session, device_id: str, report: CheckinReport, via: str, now: datetime
) -> CheckinResult:
    """Record a check-in of `device_id` (from the LAN or a USB report) and work out what it
    should install. Raises NotFoundError if the device is unknown.
    """
    sighting = Sighting(report.sent_at, now)
    row = _device_row(session, _DEVICE_BY_ID, device_id, sighting)
    if row is None:
        raise NotFoundError(f"no device {device_id!r}")
    return _record(session, row, report, sighting, via)


def _record(
    session: so.Session, row: Any, report: CheckinReport, sighting: Sighting, via: str
) -> CheckinResult:
    device_id, now = row.id, sighting.now
    applied = bool(row.state_applies)
    values: dict[str, Any] = {}
    if applied:
        values["state_at"] = sighting.seen
        if report.status != row.status:
            values["status"] = report.status
            _sync_channels(session, device_id, report.channels, now)
        if report.health != (row.health or {}):
            values["health"] = report.health
        if report.agent_version and report.agent_version != row.agent_version:
            values["agent_version"] = report.agent_version
        if report.trust_root_version not in (None, row.trust_root_version):
            values["trust_root_version"] = report.trust_root_version
        if report.state_digest != row.state_digest:
            values["state_digest"] = report.state_digest
    if row.seen_is_newer:
        values["last_seen_at"] = sighting.seen_capped
        values["last_via"] = via
    if values:
        session.execute(_UPDATE_DEVICE, {"device_id_": device_id, **values})
    new_ids = insert_events(session, device_id, report.events, via, now)
    new_events = [e.reported() for e in report.events if e.event_id in new_ids]
    targets = released_targets(session, device_id)
    channels = report.channels if applied else {}
    if targets:
        deployments.record_progress(
            session,
            device_id,
            targets,
            channels,
            report.health if applied else {},
            new_events,
            now,
            POLICIES.lookup(session, targets),
        )
    if targets and not applied:
        channels = _recorded_channels(session, device_id)
    return CheckinResult(
        device_id=device_id,
        offers=offers(targets, channels, (lambda bundle_id: deltas_of(session, bundle_id))
                      if "delta" in report.accepts else None),  # agents that can patch
        trust_root_version=trust.current_version(session),
        events_recorded=len(new_ids),
        events_duplicate=len(report.events) - len(new_ids),
        state_applied=applied,
    )


def _recorded_channels(session: so.Session, device_id: str) -> dict[str, ChannelReport]:
    return {
        c.channel: ChannelReport(c.active_version, c.active_sequence, c.state)
        for c in session.scalars(
            sa.select(DeviceChannel).where(DeviceChannel.device_id == device_id)
        )
    }
