"""Device check-ins: state, health and events in; what to install out.

The same function records a check-in that came over the LAN and a signed report imported from
a USB stick, so a USB-only device is as visible as a LAN one. Events carry a device-generated
id: re-delivering them (a retried check-in, a stick imported twice) records nothing twice.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, cast

import sqlalchemy as sa
import sqlalchemy.orm as so
from sqlalchemy.dialects import postgresql, sqlite

from satchel.bundles.manifest import CHANNEL_RE, SHA256_RE, VERSION_RE
from satchel.manager.auth import DEVICE, hash_token, token_kind
from satchel.manager.db import Database
from satchel.manager.errors import (
    AuthError,
    DiskFullError,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
)
from satchel.manager.models import Device, DeviceChannel, Event
from satchel.manager.services import checkin_fast, deployments, trust
from satchel.manager.services.bundles import download_url
from satchel.manager.services.deployments import ChannelReport, ReportedEvent

EVENT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
EVENT_KIND_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
MAX_REASON_CHARS = 2000  # characters of an event's reason kept
MAX_STATE_CHANNELS = 256  # channels in one device's status
# What the database columns hold; a value beyond would fail in the database, not here.
BIGINT_RANGE = (-(2**63), 2**63 - 1)  # BIGINT columns: sequences; counts kept as JSON
INTEGER_RANGE = (-(2**31), 2**31 - 1)  # INTEGER columns: deployment ids, trust root versions
LAN, USB = "lan", "usb"


# --- the request -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceEvent:
    event_id: str
    kind: str
    occurred_at: datetime
    channel: str | None = None
    version: str | None = None
    sequence: int | None = None
    bundle_sha256: str | None = None
    deployment_id: int | None = None
    passed: bool | None = None
    reason: str | None = None
    figures: dict[str, Any] | None = None

    def reported(self) -> ReportedEvent:
        return ReportedEvent(
            self.kind, self.channel, self.sequence, self.bundle_sha256, self.passed, self.reason
        )


@dataclass(frozen=True)
class CheckinReport:
    """A parsed, validated check-in (LAN request body or the `checkin` of a USB report)."""

    status: dict[str, Any]
    channels: dict[str, ChannelReport]
    health: dict[str, dict[str, Any]]
    events: tuple[DeviceEvent, ...]
    agent_version: str | None = None
    trust_root_version: int | None = None
    sent_at: datetime | None = None  # device clock; orders reports that arrive out of order

    @functools.cached_property
    def state_digest(self) -> str:
        """sha256 of the state this report applies: status, agent and trust root versions
        (health is left out: its counters move at every check-in and cost nothing to write)."""
        state = [self.status, self.agent_version, self.trust_root_version]
        text = json.dumps(state, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _bad(msg: str) -> InvalidRequestError:
    return InvalidRequestError(f"check-in: {msg}")


def _opt(d: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = d.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
        raise _bad(f"{where} '{key}' has the wrong type")
    return value


def _int(
    d: dict[str, Any], key: str, where: str, bounds: tuple[int, int] = BIGINT_RANGE
) -> int | None:
    """An optional integer field within `bounds`. Raises InvalidRequestError."""
    value = _opt(d, key, int, where)
    if value is not None and not bounds[0] <= value <= bounds[1]:
        raise _bad(f"{where} '{key}' is out of range")
    return cast(int | None, value)


def _match(value: Any, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise _bad(f"{what} {str(value)[:40]!r} is not valid")
    return value


def parse_time(value: Any, what: str) -> datetime:
    """An ISO 8601 timestamp with a zone ("2026-01-31T12:00:00Z"). Raises InvalidRequestError."""
    if not isinstance(value, str):
        raise _bad(f"{what} must be a timestamp string")
    try:
        t = datetime.fromisoformat(value)
    except ValueError as e:
        raise _bad(f"{what} {value[:40]!r} is not an ISO 8601 timestamp") from e
    if t.tzinfo is None:
        raise _bad(f"{what} must carry a time zone, e.g. a trailing Z")
    try:
        t.astimezone(timezone.utc)  # stored in UTC: e.g. year 9999 at -23:59 has no UTC form
    except (OverflowError, ValueError) as e:
        raise _bad(f"{what} {value[:40]!r} is out of range in UTC") from e
    return t


def _parse_event(d: Any) -> DeviceEvent:
    if not isinstance(d, dict):
        raise _bad("every event must be an object")
    event_id = _match(d.get("id"), EVENT_ID_RE, "event id")
    where = f"event {event_id}"
    channel = _opt(d, "channel", str, where)
    version = _opt(d, "version", str, where)
    sha = _opt(d, "bundle_sha256", str, where)
    reason = _opt(d, "reason", str, where)
    return DeviceEvent(
        event_id=event_id,
        kind=_match(d.get("kind"), EVENT_KIND_RE, f"{where} kind"),
        occurred_at=parse_time(d.get("time"), f"{where} time"),
        channel=None if channel is None else _match(channel, CHANNEL_RE, "channel"),
        version=None if version is None else _match(version, VERSION_RE, "version"),
        sequence=_int(d, "sequence", where),
        bundle_sha256=None if sha is None else _match(sha, SHA256_RE, "bundle_sha256"),
        deployment_id=_int(d, "deployment_id", where, INTEGER_RANGE),
        passed=_opt(d, "passed", bool, where),
        reason=None if reason is None else reason[:MAX_REASON_CHARS],
        figures=_opt(d, "figures", dict, where),
    )


def _parse_channel(name: str, d: Any) -> ChannelReport:
    _match(name, CHANNEL_RE, "channel")
    if not isinstance(d, dict):
        raise _bad(f"status of channel {name} must be an object")
    active = d.get("active")
    version = sequence = None
    if active is not None:
        if not isinstance(active, dict):
            raise _bad(f"channel {name} 'active' must be an object or null")
        version = _match(active.get("version"), VERSION_RE, f"channel {name} active version")
        sequence = _int(active, "sequence", f"channel {name} active")
        if sequence is None:
            raise _bad(f"channel {name} active 'sequence' must be an integer")
    state = d.get("state") or ""
    if not isinstance(state, str) or len(state) > 32:
        raise _bad(f"channel {name} 'state' must be a short string")
    return ChannelReport(version, sequence, state)


def _parse_health(d: Any) -> dict[str, dict[str, Any]]:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise _bad("'health' must map channels to summaries")
    out: dict[str, dict[str, Any]] = {}
    for name, h in d.items():
        _match(name, CHANNEL_RE, "health channel")
        if not isinstance(h, dict):
            raise _bad(f"health of channel {name} must be an object")
        summary: dict[str, Any] = {}
        for key in ("count", "errors", "nan"):
            value = h.get(key, 0)
            if (
                not isinstance(value, int)
                or isinstance(value, bool)
                or not 0 <= value <= BIGINT_RANGE[1]
            ):
                raise _bad(f"health of channel {name}: '{key}' must be a count")
            summary[key] = value
        p95 = h.get("p95_ms")
        if p95 is not None and (not isinstance(p95, (int, float)) or isinstance(p95, bool)):
            raise _bad(f"health of channel {name}: 'p95_ms' must be a number or null")
        summary["p95_ms"] = p95
        out[name] = summary
    return out


def parse_report(body: Any, device_id: str, max_events: int) -> CheckinReport:
    """Validate a check-in body for `device_id`. Raises InvalidRequestError."""
    if not isinstance(body, dict):
        raise _bad("the body must be a JSON object")
    status = body.get("status")
    if not isinstance(status, dict):
        raise _bad("'status' (the agent's `status --json`) is required")
    if status.get("device_id", device_id) != device_id:
        raise _bad(f"status is for device {str(status.get('device_id'))[:64]!r}, not {device_id}")
    raw_channels = status.get("channels") or {}
    if not isinstance(raw_channels, dict) or len(raw_channels) > MAX_STATE_CHANNELS:
        raise _bad("status 'channels' must map channel names to their state")
    events = body.get("events") or []
    if not isinstance(events, list):
        raise _bad("'events' must be a list")
    if len(events) > max_events:
        raise _bad(f"too many events ({len(events)} > {max_events}); send them in batches")
    parsed_events = tuple(_parse_event(e) for e in events)
    if len({e.event_id for e in parsed_events}) != len(parsed_events):
        raise _bad("two events share one id")
    agent_version = body.get("agent_version")
    if agent_version is not None:
        _match(agent_version, VERSION_RE, "agent_version")
    root_version = _int(body, "trust_root_version", "check-in", INTEGER_RANGE)
    sent_at = body.get("sent_at")
    return CheckinReport(
        status=status,
        channels={n: _parse_channel(n, c) for n, c in raw_channels.items()},
        health=_parse_health(body.get("health")),
        events=parsed_events,
        agent_version=agent_version,
        trust_root_version=root_version,
        sent_at=None if sent_at is None else parse_time(sent_at, "sent_at"),
    )


# --- the answer --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Offer:
    """A bundle the device should install."""

    channel: str
    version: str
    sequence: int
    bundle_sha256: str
    size: int
    deployment_id: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "version": self.version,
            "sequence": self.sequence,
            "bundle_sha256": self.bundle_sha256,
            "size": self.size,
            "url": download_url(self.bundle_sha256),
            "deployment_id": self.deployment_id,
        }


@dataclass(frozen=True)
class CheckinResult:
    device_id: str
    offers: tuple[Offer, ...]
    trust_root_version: int | None
    events_recorded: int
    events_duplicate: int
    state_applied: bool  # False when a newer state had already been recorded
    fast: bool = False  # recorded by the fast path (see checkin_fast)

    def to_dict(self, poll_interval_s: float, now: datetime) -> dict[str, Any]:
        version = self.trust_root_version
        return {
            "device_id": self.device_id,
            "install": [o.to_dict() for o in self.offers],
            "trust": {
                "version": version,
                "root_url": "/api/v1/trust/root.json",
                "version_url": "/api/v1/trust/roots/{version}.json",
            },
            "poll_interval_s": round(poll_interval_s, 3),
            "events": {"recorded": self.events_recorded, "duplicate": self.events_duplicate},
            "server_time": now.isoformat(),
        }


def jittered(interval_s: float, jitter: float, rng: random.Random | None = None) -> float:
    """`interval_s` spread by +/- `jitter` (a fraction) so a fleet does not poll in step."""
    r = (rng or random).uniform(-jitter, jitter)
    return interval_s * (1 + r)


# --- recording ---------------------------------------------------------------------------------


def _insert_events(
    db: so.Session | sa.Connection,
    device_id: str,
    events: tuple[DeviceEvent, ...],
    via: str,
    now: datetime,
) -> set[str]:
    """Insert events, skipping ids already recorded for this device; return the new ids."""
    if not events:
        return set()
    rows = [
        {
            "device_id": device_id,
            "event_id": e.event_id,
            "kind": e.kind,
            "channel": e.channel,
            "version": e.version,
            "sequence": e.sequence,
            "bundle_sha256": e.bundle_sha256,
            "deployment_id": e.deployment_id,
            "passed": e.passed,
            "reason": e.reason,
            "figures": e.figures,
            "occurred_at": e.occurred_at,
            "received_at": now,
            "via": via,
        }
        for e in events
    ]
    bind = db if isinstance(db, sa.Connection) else db.get_bind()
    insert = postgresql.insert if bind.dialect.name == "postgresql" else sqlite.insert
    stmt = (
        insert(Event)
        .values(rows)
        .on_conflict_do_nothing(index_elements=["device_id", "event_id"])
        .returning(Event.event_id)
    )
    return set(db.execute(stmt).scalars())


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


_DEVICES = cast(sa.Table, Device.__table__)
_DEVICE_ROW = sa.select(
    _DEVICES.c.id,
    _DEVICES.c.status,
    _DEVICES.c.health,
    _DEVICES.c.agent_version,
    _DEVICES.c.trust_root_version,
    _DEVICES.c.state_at,
    _DEVICES.c.state_digest,
    _DEVICES.c.last_seen_at,
)
# built once, each on an index: these run on every check-in
_DEVICE_BY_TOKEN = _DEVICE_ROW.where(_DEVICES.c.token_hash == sa.bindparam("key")).with_for_update()
_DEVICE_BY_ID = _DEVICE_ROW.where(_DEVICES.c.id == sa.bindparam("key")).with_for_update()
_UPDATE_DEVICE = _DEVICES.update().where(_DEVICES.c.id == sa.bindparam("device_id_"))


def _device_row(session: so.Session, statement: Any, key: str) -> Any:
    """The device's check-in columns, row-locked (one check-in of a device at a time)."""
    return session.execute(statement, {"key": key}).first()


def _authenticated_row(session: so.Session, token: str, device_id: str) -> Any:
    """The locked row of the device holding `token`. Raises AuthError (unknown or revoked
    credential), ForbiddenError (another device's or an admin credential)."""
    kind = token_kind(token)
    if kind is not None and kind != DEVICE:
        raise ForbiddenError("this resource needs device credentials")
    row = _device_row(session, _DEVICE_BY_TOKEN, hash_token(token)) if kind else None
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
    return _record(session, _authenticated_row(session, token, device_id), report, LAN, now)


def checkin_lan(
    db: Database,
    token: str,
    device_id: str,
    body: Any,
    now: datetime,
    max_events: int,
    fast: bool = True,
) -> CheckinResult:
    """Authenticate a device credential and record its LAN check-in `body`: on the fast path
    when only health and the clock moved (see checkin_fast), else in one full transaction.

    Raises AuthError, ForbiddenError, then InvalidRequestError for a malformed body (a
    stranger learns nothing about what the manager accepts); DiskFullError when the database
    has no space left (nothing of the check-in is recorded then: the device sends it again).
    """
    try:
        report = parse_report(body, device_id, max_events)
    except InvalidRequestError:
        db.run(lambda s: _authenticated_row(s, token, device_id))
        raise
    if fast:
        result = _record_unchanged(db, token, device_id, report, now)
        if result is not None:
            return result
    return db.run(lambda s: record_with_token(s, token, device_id, report, now))


def try_fast_checkin(
    db: Database, token: str, device_id: str, body: Any, now: datetime, max_events: int
) -> CheckinResult | None:
    """Record a LAN check-in on the fast path if it applies; None when it needs the full path
    (`checkin_lan`), which then also gives every refusal its answer, a database out of space
    included. Raises only on another database failure."""
    try:
        report = parse_report(body, device_id, max_events)
    except InvalidRequestError:
        return None
    return _record_unchanged(db, token, device_id, report, now)


def _record_unchanged(
    db: Database, token: str, device_id: str, report: CheckinReport, now: datetime
) -> CheckinResult | None:
    """The fast path; None when the check-in needs the full one (nothing but last_seen,
    state_at and health may have been written then). Events that no deployment acts on
    (health samples, ...) ride along; any other needs the full path. A database out of
    space gives way to the full path too, which refuses it with DiskFullError; the events
    are one INSERT, so none of them was recorded."""
    if token_kind(token) != DEVICE:
        return None
    if any(checkin_fast.may_move_a_target(e.reported()) for e in report.events):
        return None
    try:
        with db.autocommit() as conn:
            found = checkin_fast.touch(
                conn,
                hash_token(token),
                device_id,
                report.state_digest,
                report.health,
                report.sent_at,
                LAN,
                now,
            )
            if found is None:
                return None
            targets, trust_version = found
            if checkin_fast.moves_a_target(conn, targets, report.channels, report.health):
                return None
            new_ids = _insert_events(conn, device_id, report.events, LAN, now)
    except sa.exc.DBAPIError as e:
        if e.connection_invalidated:  # a dropped connection: the full path retries
            return None
        raise
    except DiskFullError:
        return None
    return CheckinResult(
        device_id=device_id,
        offers=offers(targets, report.channels),
        trust_root_version=trust_version,
        events_recorded=len(new_ids),
        events_duplicate=len(report.events) - len(new_ids),
        state_applied=True,
        fast=True,
    )


def record(
    session: so.Session, device_id: str, report: CheckinReport, via: str, now: datetime
) -> CheckinResult:
    """Record a check-in of `device_id` (from the LAN or a USB report) and work out what it
    should install. Raises NotFoundError if the device is unknown.
    """
    row = _device_row(session, _DEVICE_BY_ID, device_id)
    if row is None:
        raise NotFoundError(f"no device {device_id!r}")
    return _record(session, row, report, via, now)


def _record(
    session: so.Session, row: Any, report: CheckinReport, via: str, now: datetime
) -> CheckinResult:
    device_id = row.id
    seen = report.sent_at or now
    applied = row.state_at is None or report.sent_at is None or seen >= row.state_at
    values: dict[str, Any] = {}
    if applied:
        values["state_at"] = seen
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
    if row.last_seen_at is None or seen > row.last_seen_at:
        values["last_seen_at"] = min(seen, now)
        values["last_via"] = via
    if values:
        session.execute(_UPDATE_DEVICE, {"device_id_": device_id, **values})
    new_ids = _insert_events(session, device_id, report.events, via, now)
    new_events = [e.reported() for e in report.events if e.event_id in new_ids]
    targets = deployments.device_targets(session, device_id)
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
        )
    if targets and not applied:
        channels = _recorded_channels(session, device_id)
    return CheckinResult(
        device_id=device_id,
        offers=offers(targets, channels),
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


def offers(
    targets: list[deployments.DeviceTarget], channels: dict[str, ChannelReport]
) -> tuple[Offer, ...]:
    """What a device running `channels` should install: per channel, the newest bundle of an
    active deployment that released it to the device, if newer than what runs."""
    best: dict[str, Offer] = {}
    for dt in targets:
        if dt.deployment_state != deployments.ACTIVE or dt.state not in deployments.OFFERED:
            continue
        b = dt.bundle
        running = channels.get(b.name)
        if (
            running
            and running.active_sequence is not None
            and running.active_sequence >= b.sequence
        ):
            continue
        if b.name not in best or best[b.name].sequence < b.sequence:
            best[b.name] = Offer(b.name, b.version, b.sequence, b.sha256, b.size, dt.deployment_id)
    return tuple(best[name] for name in sorted(best))
