"""Judging devices: the facts the dashboard needs of each device, read in a few queries for
the whole fleet (or one device), and the state and reason `classify` gives them."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
import sqlalchemy.orm as so

from satchel.bundles import events
from satchel.bundles.channels import STATE_PROBATION
from satchel.manager.models import Bundle, Device, DeviceChannel, DeviceTag, Event, UsbReport
from satchel.manager.services.dashboard.states import (
    FAILING,
    FAILING_EVENTS,
    NEVER_SEEN,
    NOT_SEEN,
    OK,
    OUTCOME_EVENTS,
    RANK,
    ROLLED_BACK,
    UPDATING,
    DeviceRow,
    Thresholds,
)
from satchel.manager.services.deployments.health import health_breach


@dataclass(frozen=True)
class Outcome:
    channel: str | None
    kind: str
    passed: bool | None
    reason: str | None
    version: str | None
    at: datetime


@dataclass
class DeviceFacts:
    """What classification needs to know of one device."""

    device_id: str
    device_class: str
    last_seen_at: datetime | None
    last_via: str | None
    lan: bool
    health: dict[str, Any]
    tags: list[str] = field(default_factory=list)
    channels: list[tuple[str, str | None, int | None, str]] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    usb: tuple[datetime | None, datetime | None] = (None, None)


def outcome_line(o: Outcome) -> tuple[str, str] | None:
    """(state, why) for a device whose newest outcome on a channel is `o`."""
    where = f"{o.channel}: " if o.channel else ""
    version = f" {o.version}" if o.version else ""
    reason = f": {o.reason}" if o.reason else ""
    if o.kind == events.ROLLED_BACK:
        return ROLLED_BACK, f"{where}rolled back{version}{reason}"
    if o.kind in FAILING_EVENTS:
        return FAILING, f"{where}{o.kind.replace('_', ' ')}{version}{reason}"
    if o.kind == events.SMOKE_TEST and o.passed is False:
        return FAILING, f"{where}smoke test failed{version}{reason}"
    return None


def _age(seconds: float) -> str:
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def classify(
    facts: DeviceFacts,
    policies: Mapping[tuple[str, int], Mapping[str, Any]],
    th: Thresholds,
    now: datetime,
) -> tuple[str, str]:
    """The dashboard state of a device and why, worst reason first."""
    found: list[tuple[str, str]] = []
    for o in facts.outcomes:
        judged = outcome_line(o)
        if judged:
            found.append(judged)
    for name, _version, sequence, _state in facts.channels:
        policy = policies.get((name, sequence)) if sequence is not None else None
        breach = health_breach(policy, facts.health.get(name)) if policy else None
        if breach:
            found.append((FAILING, f"{name}: {breach}"))
    if found:
        return min(found, key=lambda f: RANK[f[0]])
    if facts.last_seen_at is None:
        return NEVER_SEEN, ""
    usb_only = facts.last_via == "usb" or not facts.lan
    limit = th.usb_stale_s if usb_only else th.lan_stale_s
    silent = (now - facts.last_seen_at).total_seconds()
    if silent > limit:
        how = "USB" if usb_only else "LAN"
        return NOT_SEEN, f"no {how} report for {_age(silent)}"
    if any(state == STATE_PROBATION for *_rest, state in facts.channels):
        return UPDATING, ""
    return OK, ""


def health_policies(session: so.Session) -> dict[tuple[str, int], dict[str, Any]]:
    """The health policy of every bundle some device runs, by (channel, sequence)."""
    running = sa.exists().where(
        DeviceChannel.channel == Bundle.name, DeviceChannel.active_sequence == Bundle.sequence
    )
    rows = session.execute(sa.select(Bundle.name, Bundle.sequence, Bundle.manifest).where(running))
    return {(r.name, r.sequence): dict(r.manifest.get("health_policy") or {}) for r in rows}


def latest_outcomes(
    session: so.Session, since: datetime, device_ids: Collection[str] | None = None
) -> Iterable[tuple[str, Outcome]]:
    """(device id, newest outcome event) per device and channel since `since`, of every
    device or only of `device_ids`."""
    rank = (
        sa.func.row_number()
        .over(
            partition_by=(Event.device_id, Event.channel),
            order_by=(Event.occurred_at.desc(), Event.id.desc()),
        )
        .label("rank")
    )
    query = sa.select(
        Event.device_id,
        Event.channel,
        Event.kind,
        Event.passed,
        Event.reason,
        Event.version,
        Event.occurred_at,
        rank,
    ).where(Event.kind.in_(OUTCOME_EVENTS), Event.occurred_at >= since)
    if device_ids is not None:
        query = query.where(Event.device_id.in_(device_ids))
    ranked = query.subquery()
    rows = session.execute(sa.select(ranked).where(ranked.c.rank == 1))
    for r in rows:
        yield r.device_id, Outcome(r.channel, r.kind, r.passed, r.reason, r.version, r.occurred_at)


def gather(
    session: so.Session,
    now: datetime,
    th: Thresholds,
    device_id: str | None = None,
    *,
    device_ids: Collection[str] | None = None,
) -> dict[str, DeviceFacts]:
    """The facts of every device (or only `device_id`, or only `device_ids`: one page of the
    fleet), by device id."""
    if device_id is not None:
        device_ids = (device_id,)
    query = sa.select(
        Device.id,
        Device.device_class,
        Device.last_seen_at,
        Device.last_via,
        Device.token_hash.is_not(None).label("lan"),
        Device.health,
    ).order_by(Device.id)
    if device_ids is not None:
        query = query.where(Device.id.in_(device_ids))
    facts = {
        r.id: DeviceFacts(
            r.id, r.device_class, r.last_seen_at, r.last_via, bool(r.lan), r.health or {}
        )
        for r in session.execute(query)
    }
    if not facts:
        return facts

    def only(column: Any, q: Any) -> Any:
        return q if device_ids is None else q.where(column.in_(device_ids))

    for did, tag in session.execute(
        only(DeviceTag.device_id, sa.select(DeviceTag.device_id, DeviceTag.tag))
    ):
        facts[did].tags.append(tag)
    channel_rows = session.execute(
        only(
            DeviceChannel.device_id,
            sa.select(
                DeviceChannel.device_id,
                DeviceChannel.channel,
                DeviceChannel.active_version,
                DeviceChannel.active_sequence,
                DeviceChannel.state,
            ).order_by(DeviceChannel.channel),
        )
    )
    for r in channel_rows:
        facts[r.device_id].channels.append(
            (r.channel, r.active_version, r.active_sequence, r.state)
        )
    since = now - timedelta(seconds=th.attention_window_s)
    for did, outcome in latest_outcomes(session, since, device_ids):
        if did in facts:
            facts[did].outcomes.append(outcome)
    usb = session.execute(
        only(
            UsbReport.device_id,
            sa.select(
                UsbReport.device_id,
                sa.func.max(UsbReport.created_at).label("written"),
                sa.func.max(UsbReport.imported_at).label("imported"),
            ).group_by(UsbReport.device_id),
        )
    )
    for r in usb:
        if r.device_id in facts:
            facts[r.device_id].usb = (r.written, r.imported)
    return facts


def device_row(f: DeviceFacts, state: str, why: str) -> DeviceRow:
    """The row the dashboard shows for a device judged `state` because `why`."""
    return DeviceRow(
        device_id=f.device_id,
        device_class=f.device_class,
        tags=tuple(sorted(f.tags)),
        state=state,
        why=why,
        last_seen_at=f.last_seen_at,
        last_via=f.last_via,
        lan=f.lan,
        usb_report_at=f.usb[0],
        usb_imported_at=f.usb[1],
        releases=tuple((name, version) for name, version, _seq, _state in f.channels),
    )
