"""The fleet overview: counts of devices by state, the devices that need attention first, and
one page of the fleet, searched and paged in SQL, worst first.

A fleet of 10,000 devices is never judged row by row in Python. The two states that need the
health-policy judge or the install outcomes (`rolled_back`, `failing`) are found first, among
the few devices with an outcome in the attention window or a health summary some policy
judges; every other state is a SQL expression over the device row (`_sql_state`), so the
counts are one GROUP BY and a page is one LIMIT/OFFSET. Only the rows shown are then gathered
and classified in full, by the same `classify` as a device's own page.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
import sqlalchemy.orm as so

from satchel.bundles.channels import STATE_PROBATION
from satchel.bundles.events import ROLLED_BACK as ROLLED_BACK_EVENT
from satchel.bundles.events import SMOKE_TEST
from satchel.manager.models import Device, DeviceChannel, DeviceTag, Event
from satchel.manager.services.dashboard.classify import (
    Outcome,
    classify,
    device_row,
    gather,
    health_policies,
    outcome_line,
)
from satchel.manager.services.dashboard.states import (
    ATTENTION,
    DEVICE_STATES,
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

MAX_QUERY_CHARS = 64  # characters of a search kept
TRUE = sa.true()  # "no search"


@dataclass(frozen=True)
class FleetQuery:
    """What the fleet table shows: a search over id, class and tags, a state, a page."""

    text: str = ""  # matched, case-insensitively, inside device ids, classes and tags
    state: str | None = None  # one of DEVICE_STATES
    page: int = 1  # 1-based; past the end gives the last page
    page_size: int = 100


@dataclass(frozen=True)
class FleetOverview:
    total: int
    counts: dict[str, int]  # every state of DEVICE_STATES, in that order
    attention: tuple[DeviceRow, ...]  # the worst devices first, at most the limit asked
    attention_total: int
    rows: tuple[DeviceRow, ...]  # one page of the fleet, worst first
    matched: int  # devices matching the search and state, over every page
    page: int  # 1-based
    pages: int
    page_size: int
    query: FleetQuery
    # device id -> (channel, stage, one line) of each candidate in shadow or ramp, for the
    # rows shown (issue 18: the stage badge)
    stages: Mapping[str, tuple[tuple[str, str, str], ...]] = dataclasses.field(
        default_factory=dict)

    @property
    def state(self) -> str | None:
        return self.query.state


def _bad_outcomes(session: so.Session, since: datetime) -> Iterable[tuple[str, Outcome]]:
    """(device id, outcome) of every rollback or failure since `since` that is the newest
    outcome of its device and channel: the few rows `classify` would flag, found without
    ranking every outcome of the fleet."""
    newer = sa.orm.aliased(Event)
    bad = Event.kind.in_(tuple(FAILING_EVENTS | {ROLLED_BACK_EVENT})) | (
        (Event.kind == SMOKE_TEST) & Event.passed.is_(False)
    )
    superseded = sa.exists().where(
        newer.device_id == Event.device_id,
        newer.channel.is_not_distinct_from(Event.channel),
        newer.kind.in_(OUTCOME_EVENTS),
        (newer.occurred_at > Event.occurred_at)
        | ((newer.occurred_at == Event.occurred_at) & (newer.id > Event.id)),
    )
    rows = session.execute(
        sa.select(
            Event.device_id,
            Event.channel,
            Event.kind,
            Event.passed,
            Event.reason,
            Event.version,
            Event.occurred_at,
        ).where(bad, Event.occurred_at >= since, ~superseded)
    )
    for r in rows:
        yield r.device_id, Outcome(r.channel, r.kind, r.passed, r.reason, r.version, r.occurred_at)


def _breaching(
    session: so.Session, policies: Mapping[tuple[str, int], Mapping[str, Any]]
) -> Iterable[str]:
    """Ids of devices whose health summary breaks their active bundle's policy. SQL keeps
    only the summaries that could (some error, some NaN, or a p95 over the limit: with none
    of these no rate can pass a limit); the device's own judge decides on those."""
    for (name, sequence), policy in policies.items():
        if not policy:
            continue
        summary = Device.health
        could = (summary[(name, "errors")].as_integer() > 0) | (
            summary[(name, "nan")].as_integer() > 0
        )
        limit = policy.get("max_p95_latency_ms")
        if isinstance(limit, (int, float)) and not isinstance(limit, bool):
            could = could | (summary[(name, "p95_ms")].as_float() > float(limit))
        rows = session.execute(
            sa.select(Device.id, Device.health)
            .join(DeviceChannel, DeviceChannel.device_id == Device.id)
            .where(DeviceChannel.channel == name, DeviceChannel.active_sequence == sequence, could)
        )
        for device_id, health in rows:
            if health_breach(policy, (health or {}).get(name)):
                yield device_id


def flagged_devices(
    session: so.Session,
    now: datetime,
    th: Thresholds,
    policies: Mapping[tuple[str, int], Mapping[str, Any]],
) -> dict[str, str]:
    """The devices whose state is `rolled_back` or `failing`, by id: those with a bad newest
    outcome in the attention window, or whose health breaks their active bundle's policy."""
    found: dict[str, str] = {}

    def worse(device_id: str, state: str) -> None:
        if device_id not in found or RANK[state] < RANK[found[device_id]]:
            found[device_id] = state

    since = now - timedelta(seconds=th.attention_window_s)
    for device_id, outcome in _bad_outcomes(session, since):
        judged = outcome_line(outcome)
        if judged:
            worse(device_id, judged[0])
    for device_id in _breaching(session, policies):
        worse(device_id, FAILING)
    return found


def _probation(session: so.Session) -> list[str]:
    """Ids of the devices with a channel on probation (few at any time)."""
    return list(
        session.scalars(
            sa.select(DeviceChannel.device_id)
            .where(DeviceChannel.state == STATE_PROBATION)
            .distinct()
        )
    )


def _sql_state(
    now: datetime, th: Thresholds, flagged: Mapping[str, str], probation: Sequence[str]
) -> Any:
    """The dashboard state of a device row as a SQL CASE, `classify`'s rules in its order;
    the states known by id (flagged, on probation) are id lists, so no row runs a subquery."""
    usb_only = (Device.last_via == "usb") | Device.token_hash.is_(None)
    stale = sa.case(
        (usb_only, Device.last_seen_at < now - timedelta(seconds=th.usb_stale_s)),
        else_=Device.last_seen_at < now - timedelta(seconds=th.lan_stale_s),
    )
    whens: list[tuple[Any, str]] = []
    for state in (ROLLED_BACK, FAILING):
        ids = sorted(d for d, s in flagged.items() if s == state)
        if ids:
            whens.append((Device.id.in_(ids), state))
    whens += [(Device.last_seen_at.is_(None), NEVER_SEEN), (stale, NOT_SEEN)]
    if probation:
        whens.append((Device.id.in_(sorted(probation)), UPDATING))
    return sa.case(*whens, else_=OK)


def _search(text: str) -> Any:
    """Devices whose id, class or one of whose tags contains `text` (case-insensitive)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    like = f"%{escaped.lower()}%"
    tagged = Device.id.in_(
        sa.select(DeviceTag.device_id).where(
            sa.func.lower(DeviceTag.tag).like(like, escape="\\")
        )
    )
    return (
        sa.func.lower(Device.id).like(like, escape="\\")
        | sa.func.lower(Device.device_class).like(like, escape="\\")
        | tagged
    )


def _rows(
    session: so.Session,
    now: datetime,
    th: Thresholds,
    policies: Mapping[tuple[str, int], Mapping[str, Any]],
    ids: Sequence[str],
) -> list[DeviceRow]:
    """The full rows of `ids`, in that order."""
    facts = gather(session, now, th, device_ids=ids)
    out = []
    for device_id in ids:
        f = facts.get(device_id)
        if f is not None:
            out.append(device_row(f, *classify(f, policies, th, now)))
    return out


def fleet_overview(
    session: so.Session,
    now: datetime,
    thresholds: Thresholds,
    query: FleetQuery | None = None,
    *,
    attention_limit: int = 50,
) -> FleetOverview:
    """Counts of devices by state, the devices that need attention first, and one page of
    the devices matching `query`, worst first then by id.

    Raises nothing of its own.
    """
    query = query or FleetQuery()
    policies = health_policies(session)
    flagged = flagged_devices(session, now, thresholds, policies)
    state = _sql_state(now, thresholds, flagged, _probation(session))

    def count_by_state(where: Any) -> dict[str, int]:
        counts = {s: 0 for s in DEVICE_STATES}
        labelled = state.label("state")
        rows = session.execute(sa.select(labelled, sa.func.count()).where(where).group_by(labelled))
        for judged, n in rows:
            counts[judged] += n
        return counts

    def page_of(where: Any, counts: Mapping[str, int], limit: int, offset: int) -> list[str]:
        """Ids of `limit` devices from `offset`, worst state first then by id: one query per
        state the page reaches, each in id order (no sort of the whole fleet); a search, which
        scans anyway, in one query ordered by state."""
        if where is not TRUE:
            wanted = [s for s in DEVICE_STATES if counts[s]]
            rank = sa.case({s: i for i, s in enumerate(DEVICE_STATES)}, value=state)
            return list(
                session.scalars(
                    sa.select(Device.id)
                    .where(where, state.in_(wanted))
                    .order_by(rank, Device.id)
                    .limit(limit)
                    .offset(offset)
                )
            )
        out: list[str] = []
        for judged in DEVICE_STATES:
            n = counts[judged]
            if offset >= n:
                offset -= n
                continue
            known = sorted(d for d, f in flagged.items() if f == judged)
            # flagged states by their ids: an index lookup, not a scan for the few that match
            of_state = Device.id.in_(known) if known else (state == judged)
            out += session.scalars(
                sa.select(Device.id)
                .where(where, of_state)
                .order_by(Device.id)
                .limit(limit - len(out))
                .offset(offset)
            )
            offset = 0
            if len(out) >= limit:
                break
        return out

    counts = count_by_state(TRUE)
    attention_counts = {s: counts[s] if s in ATTENTION else 0 for s in DEVICE_STATES}
    attention = page_of(TRUE, attention_counts, attention_limit, 0)
    text = query.text.strip()[:MAX_QUERY_CHARS]
    where = _search(text) if text else TRUE
    matching = count_by_state(where) if text else counts
    if query.state is not None:
        matching = {s: matching[s] if s == query.state else 0 for s in DEVICE_STATES}
    matched = sum(matching.values())
    size = max(1, query.page_size)
    pages = max(1, -(-matched // size))
    page = min(max(1, query.page), pages)
    shown = page_of(where, matching, size, (page - 1) * size)
    rows = _rows(session, now, thresholds, policies, attention + shown)
    return FleetOverview(
        total=sum(counts.values()),
        counts=counts,
        attention=tuple(rows[: len(attention)]),
        attention_total=sum(attention_counts.values()),
        rows=tuple(rows[len(attention) :]),
        matched=matched,
        page=page,
        pages=pages,
        page_size=size,
        query=FleetQuery(text, query.state, page, size),
        stages=_stages(session, attention + shown),
    )


def _stages(session: so.Session, ids: Sequence[str]) -> dict[str, tuple[tuple[str, str, str],
                                                                        ...]]:
    """The candidates in shadow or ramp the shown devices last reported, by device id."""
    from satchel.manager.services.dashboard.activation import candidate_view

    out: dict[str, tuple[tuple[str, str, str], ...]] = {}
    if not ids:
        return out
    for device_id, status in session.execute(
        sa.select(Device.id, Device.status).where(Device.id.in_(ids))
    ):
        channels = (status or {}).get("channels") if isinstance(status, dict) else None
        found = []
        for channel in sorted(channels) if isinstance(channels, dict) else []:
            view = candidate_view(status, channel)
            if view is not None:
                found.append((channel, view.stage, f"{channel} {view.version}: {view.line}"))
        if found:
            out[device_id] = tuple(found)
    return out
