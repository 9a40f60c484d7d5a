"""Read-only views of the fleet for the web dashboard: nothing here changes the database.

What a device's dashboard state is (worst first): `rolled_back` (its newest install outcome on
some channel, within the attention window, is a rollback), `failing` (a failed install or
smoke test, a failed rollback or load, or its health breaking the active bundle's health
policy), `not_seen` (no check-in or USB report for longer than its transport's threshold),
`never_seen` (enrolled or registered, never reported), `updating` (a channel on probation),
else `ok`. The first three need attention.

Health over time comes from device events of kind `health`, one per channel and period, whose
figures are a health summary (`count`, `errors`, `nan` or `nonfinite`, `p95_ms`). Events
carry the device's own time and ride the LAN and the USB stick alike, durably and at most
once, so a USB-only device's history is as complete as a LAN one's. A channel with no such
event is charted from the summary of the newest check-in alone. Rollbacks are the events of
kind `rolled_back`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, BinaryIO

import sqlalchemy as sa
import sqlalchemy.orm as so

from satchel.bundles.errors import BundleError
from satchel.bundles.reader import read_unverified
from satchel.manager.errors import NotFoundError, NoTrustRootError
from satchel.manager.models import (
    Bundle,
    Deployment,
    DeploymentTarget,
    Device,
    DeviceChannel,
    DeviceTag,
    EnrollmentToken,
    Event,
    UsbReport,
)
from satchel.manager.services import bundles as bundle_service
from satchel.manager.services import deployments, devices, tokens, trust

# device states, worst first
ROLLED_BACK, FAILING, NOT_SEEN = "rolled_back", "failing", "not_seen"
NEVER_SEEN, UPDATING, OK = "never_seen", "updating", "ok"
DEVICE_STATES = (ROLLED_BACK, FAILING, NOT_SEEN, NEVER_SEEN, UPDATING, OK)
ATTENTION = (ROLLED_BACK, FAILING, NOT_SEEN)
STATE_LABELS = {
    ROLLED_BACK: "Rolled back",
    FAILING: "Failing",
    NOT_SEEN: "Not seen recently",
    NEVER_SEEN: "Never reported",
    UPDATING: "On probation",
    OK: "OK",
}
_RANK = {s: i for i, s in enumerate(DEVICE_STATES)}

HEALTH_EVENT = "health"
ROLLED_BACK_EVENT = "rolled_back"
SMOKE_TEST_EVENT = "smoke_test"
OUTCOME_EVENTS = (
    "activated",
    SMOKE_TEST_EVENT,
    "rollback_failed",
    "load_failed",
    *deployments.FAILURE_EVENTS,
)
_FAILING_EVENTS = {"rollback_failed", "load_failed", *deployments.FAILURE_EVENTS} - {
    ROLLED_BACK_EVENT
}
MAX_FIGURES = 40  # figures of one event shown, at most


@dataclass(frozen=True)
class Thresholds:
    """When a device needs attention."""

    lan_stale_s: float  # seconds without a check-in before a LAN device is "not seen"
    usb_stale_s: float  # seconds without a USB report before a USB-only device is "not seen"
    attention_window_s: float  # seconds a rollback or failure keeps a device flagged


# --- the fleet ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceRow:
    """One device as the fleet overview shows it."""

    device_id: str
    device_class: str
    tags: tuple[str, ...]
    state: str  # one of DEVICE_STATES
    why: str  # what needs attention, one line; "" when nothing does
    last_seen_at: datetime | None
    last_via: str | None  # "lan" | "usb" | None
    lan: bool  # holds a LAN credential (enrolled) rather than being USB-only
    usb_report_at: datetime | None  # device time of its newest imported USB report
    usb_imported_at: datetime | None  # when that report was imported
    releases: tuple[tuple[str, str | None], ...]  # (channel, active version)

    @property
    def state_label(self) -> str:
        return STATE_LABELS[self.state]

    @property
    def needs_attention(self) -> bool:
        return self.state in ATTENTION


@dataclass(frozen=True)
class FleetOverview:
    total: int
    counts: dict[str, int]  # every state of DEVICE_STATES, in that order
    attention: tuple[DeviceRow, ...]  # the worst devices first, at most the limit asked
    attention_total: int
    rows: tuple[DeviceRow, ...]  # one page of the fleet, worst first
    page: int  # 1-based
    pages: int
    state: str | None  # the state the rows are filtered by


@dataclass(frozen=True)
class _Outcome:
    channel: str | None
    kind: str
    passed: bool | None
    reason: str | None
    version: str | None
    at: datetime


@dataclass
class _Facts:
    """What classification needs to know of one device."""

    device_id: str
    device_class: str
    last_seen_at: datetime | None
    last_via: str | None
    lan: bool
    health: dict[str, Any]
    tags: list[str] = field(default_factory=list)
    channels: list[tuple[str, str | None, int | None, str]] = field(default_factory=list)
    outcomes: list[_Outcome] = field(default_factory=list)
    usb: tuple[datetime | None, datetime | None] = (None, None)


def _outcome_line(o: _Outcome) -> tuple[str, str] | None:
    """(state, why) for a device whose newest outcome on a channel is `o`."""
    where = f"{o.channel}: " if o.channel else ""
    version = f" {o.version}" if o.version else ""
    reason = f": {o.reason}" if o.reason else ""
    if o.kind == ROLLED_BACK_EVENT:
        return ROLLED_BACK, f"{where}rolled back{version}{reason}"
    if o.kind in _FAILING_EVENTS:
        return FAILING, f"{where}{o.kind.replace('_', ' ')}{version}{reason}"
    if o.kind == SMOKE_TEST_EVENT and o.passed is False:
        return FAILING, f"{where}smoke test failed{version}{reason}"
    return None


def _age(seconds: float) -> str:
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def classify(
    facts: _Facts,
    policies: Mapping[tuple[str, int], Mapping[str, Any]],
    th: Thresholds,
    now: datetime,
) -> tuple[str, str]:
    """The dashboard state of a device and why, worst reason first."""
    found: list[tuple[str, str]] = []
    for o in facts.outcomes:
        judged = _outcome_line(o)
        if judged:
            found.append(judged)
    for name, _version, sequence, _state in facts.channels:
        policy = policies.get((name, sequence)) if sequence is not None else None
        breach = deployments.health_breach(policy, facts.health.get(name)) if policy else None
        if breach:
            found.append((FAILING, f"{name}: {breach}"))
    if found:
        return min(found, key=lambda f: _RANK[f[0]])
    if facts.last_seen_at is None:
        return NEVER_SEEN, ""
    usb_only = facts.last_via == "usb" or not facts.lan
    limit = th.usb_stale_s if usb_only else th.lan_stale_s
    silent = (now - facts.last_seen_at).total_seconds()
    if silent > limit:
        how = "USB" if usb_only else "LAN"
        return NOT_SEEN, f"no {how} report for {_age(silent)}"
    if any(state == deployments.PROBATION for *_rest, state in facts.channels):
        return UPDATING, ""
    return OK, ""


def _policies(session: so.Session) -> dict[tuple[str, int], dict[str, Any]]:
    """The health policy of every bundle some device runs, by (channel, sequence)."""
    running = sa.exists().where(
        DeviceChannel.channel == Bundle.name, DeviceChannel.active_sequence == Bundle.sequence
    )
    rows = session.execute(sa.select(Bundle.name, Bundle.sequence, Bundle.manifest).where(running))
    return {(r.name, r.sequence): dict(r.manifest.get("health_policy") or {}) for r in rows}


def _latest_outcomes(
    session: so.Session, since: datetime, device_id: str | None = None
) -> Iterable[tuple[str, _Outcome]]:
    """(device id, newest outcome event) per device and channel since `since`."""
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
    if device_id is not None:
        query = query.where(Event.device_id == device_id)
    ranked = query.subquery()
    rows = session.execute(sa.select(ranked).where(ranked.c.rank == 1))
    for r in rows:
        yield r.device_id, _Outcome(r.channel, r.kind, r.passed, r.reason, r.version, r.occurred_at)


def _gather(
    session: so.Session, now: datetime, th: Thresholds, device_id: str | None = None
) -> dict[str, _Facts]:
    query = sa.select(
        Device.id,
        Device.device_class,
        Device.last_seen_at,
        Device.last_via,
        Device.token_hash.is_not(None).label("lan"),
        Device.health,
    ).order_by(Device.id)
    if device_id is not None:
        query = query.where(Device.id == device_id)
    facts = {
        r.id: _Facts(r.id, r.device_class, r.last_seen_at, r.last_via, bool(r.lan), r.health or {})
        for r in session.execute(query)
    }
    if not facts:
        return facts

    def only(column: Any, q: Any) -> Any:
        return q if device_id is None else q.where(column == device_id)

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
    for did, outcome in _latest_outcomes(session, since, device_id):
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


def _row(f: _Facts, state: str, why: str) -> DeviceRow:
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


def fleet_overview(
    session: so.Session,
    now: datetime,
    thresholds: Thresholds,
    *,
    state: str | None = None,
    page: int = 1,
    page_size: int = 100,
    attention_limit: int = 50,
) -> FleetOverview:
    """Counts of devices by state, the devices that need attention first, and one page of
    the fleet (optionally only devices in `state`), worst first then by id.

    A `page` past the end gives the last page. Raises nothing of its own.
    """
    facts = _gather(session, now, thresholds)
    policies = _policies(session)
    rows = []
    for f in facts.values():
        judged, why = classify(f, policies, thresholds, now)
        rows.append(_row(f, judged, why))
    rows.sort(key=lambda r: (_RANK[r.state], r.device_id))
    counts = {s: 0 for s in DEVICE_STATES}
    for r in rows:
        counts[r.state] += 1
    attention = [r for r in rows if r.needs_attention]
    shown = [r for r in rows if state is None or r.state == state]
    pages = max(1, -(-len(shown) // page_size))
    page = min(max(1, page), pages)
    start = (page - 1) * page_size
    return FleetOverview(
        total=len(rows),
        counts=counts,
        attention=tuple(attention[:attention_limit]),
        attention_total=len(attention),
        rows=tuple(shown[start : start + page_size]),
        page=page,
        pages=pages,
        state=state,
    )


def fleet_labels(session: so.Session) -> tuple[list[str], list[str]]:
    """Every device class and every tag in use, sorted (for the deployment form)."""
    classes = session.scalars(
        sa.select(Device.device_class).distinct().order_by(Device.device_class)
    )
    tags = session.scalars(sa.select(DeviceTag.tag).distinct().order_by(DeviceTag.tag))
    return list(classes), list(tags)


# --- one device --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmokeResult:
    passed: bool | None
    reason: str | None
    figures: tuple[tuple[str, str], ...]  # (label, value) flattened, at most MAX_FIGURES
    at: datetime


@dataclass(frozen=True)
class ReleaseView:
    version: str
    sequence: int | None
    active: bool
    smoke: SmokeResult | None
    bundle_sha256: str | None  # when the manager holds this release's bundle


@dataclass(frozen=True)
class HealthSample:
    at: datetime
    count: int
    errors: int
    nan: int
    p95_ms: float | None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.count if self.count else None

    @property
    def nan_rate(self) -> float | None:
        return self.nan / self.count if self.count else None


@dataclass(frozen=True)
class RollbackMark:
    at: datetime
    version: str | None
    reason: str | None


@dataclass(frozen=True)
class ChannelView:
    name: str
    active_version: str | None
    active_sequence: int | None
    state: str
    updated_at: datetime | None
    health: HealthSample | None  # the newest check-in's summary
    breach: str | None  # why that summary breaks the active bundle's policy
    policy: dict[str, Any]  # the active bundle's health policy ({} if the manager lacks it)
    releases: tuple[ReleaseView, ...]
    samples: tuple[HealthSample, ...]  # oldest first
    rollbacks: tuple[RollbackMark, ...]  # oldest first


@dataclass(frozen=True)
class TargetView:
    deployment_id: int
    bundle_name: str
    bundle_version: str
    deployment_state: str
    wave: int
    state: str
    reason: str | None
    updated_at: datetime


@dataclass(frozen=True)
class UsbReportView:
    report_id: str
    plan_id: str | None
    created_at: datetime
    imported_at: datetime


@dataclass(frozen=True)
class DevicePage:
    row: DeviceRow
    arch: str
    agent_version: str
    enrolled_at: datetime
    public_key: str  # hex of the raw Ed25519 key
    trust_root_version: int | None
    state_at: datetime | None  # device time of the newest state recorded
    channels: tuple[ChannelView, ...]
    events: tuple[dict[str, Any], ...]  # newest first but health samples, as `event_dict`
    targets: tuple[TargetView, ...]  # newest deployment first
    usb_reports: tuple[UsbReportView, ...]  # newest first


def flatten_figures(figures: Any) -> list[tuple[str, str]]:
    """Nested figures (dicts, lists of per-model dicts) as (label, value) pairs, labels
    joined from the keys, numbers to 4 significant digits; at most MAX_FIGURES pairs.

    Where an event carries headline figures beside the full per-test report (`tests`, as the
    agent's smoke_test events do), only the headline is shown: it already holds the worst
    value of every figure, and the full report stays in the stored event."""
    out: list[tuple[str, str]] = []
    if isinstance(figures, dict) and "tests" in figures and len(figures) > 1:
        figures = {k: v for k, v in figures.items() if k != "tests"}

    def walk(value: Any, label: str) -> None:
        if len(out) >= MAX_FIGURES:
            return
        if isinstance(value, dict):
            model = value.get("model") if isinstance(value.get("model"), str) else None
            head = f"{label} {model}".strip() if model else label
            for k, v in value.items():
                if not (k == "model" and model):
                    walk(v, f"{head} {str(k).replace('_', ' ')}".strip())
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for v in value:
                walk(v, label)
        elif isinstance(value, bool):
            out.append((label, "yes" if value else "no"))
        elif value is None:
            out.append((label, "-"))
        elif isinstance(value, (int, float)):
            out.append((label, f"{value:.4g}"))
        elif isinstance(value, list):
            out.append((label, ", ".join(str(v) for v in value)[:200]))
        else:
            out.append((label, str(value)[:200]))

    if isinstance(figures, dict):
        walk(figures, "")
    return out[:MAX_FIGURES]


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def health_sample(at: datetime, figures: Any) -> HealthSample | None:
    """A health sample from a health summary (event figures or a check-in's `health`
    entry); None when it is not one."""
    if not isinstance(figures, dict):
        return None
    count = _count(figures.get("count"))
    errors = _count(figures.get("errors", 0))
    nan = _count(figures.get("nan", figures.get("nonfinite", 0)))
    p95 = figures.get("p95_ms")
    if count is None or errors is None or nan is None:
        return None
    if isinstance(p95, bool) or not isinstance(p95, (int, float)):
        p95 = None
    return HealthSample(at, count, errors, nan, None if p95 is None else float(p95))


@dataclass
class _SmokeIndex:
    """The newest smoke-test result per (channel, sequence) and per (channel, version)."""

    by_sequence: dict[tuple[str | None, int], SmokeResult] = field(default_factory=dict)
    by_version: dict[tuple[str | None, str], SmokeResult] = field(default_factory=dict)

    def find(self, channel: str, sequence: int | None, version: str) -> SmokeResult | None:
        found = self.by_sequence.get((channel, sequence)) if sequence is not None else None
        return found or self.by_version.get((channel, version))


def _smoke_results(session: so.Session, device_id: str, limit: int) -> _SmokeIndex:
    rows = session.scalars(
        sa.select(Event)
        .where(Event.device_id == device_id, Event.kind == SMOKE_TEST_EVENT)
        .order_by(Event.occurred_at.desc(), Event.id.desc())
        .limit(limit)
    )
    index = _SmokeIndex()
    for e in rows:
        result = SmokeResult(e.passed, e.reason, tuple(flatten_figures(e.figures)), e.occurred_at)
        if e.sequence is not None:
            index.by_sequence.setdefault((e.channel, e.sequence), result)
        if e.version is not None:
            index.by_version.setdefault((e.channel, e.version), result)
    return index


def _releases(
    session: so.Session,
    name: str,
    status: Mapping[str, Any],
    active_sequence: int | None,
    smoke: _SmokeIndex,
) -> tuple[ReleaseView, ...]:
    reported = (status.get("channels") or {}).get(name)
    releases = reported.get("releases") if isinstance(reported, dict) else None
    if not isinstance(releases, list):
        releases = []
    wanted: list[tuple[str, int | None]] = []
    for r in releases:
        if isinstance(r, dict) and isinstance(r.get("version"), str):
            seq = r.get("sequence")
            ok = isinstance(seq, int) and not isinstance(seq, bool)
            wanted.append((r["version"], seq if ok else None))
    wanted = list(dict.fromkeys(wanted))  # a release reported twice is shown once
    sequences = [s for _v, s in wanted if s is not None]
    shas: dict[int, str] = {}
    if sequences:
        rows = session.execute(
            sa.select(Bundle.sequence, Bundle.sha256).where(
                Bundle.name == name, Bundle.sequence.in_(sequences)
            )
        )
        shas = {sequence: sha256 for sequence, sha256 in rows}
    return tuple(
        ReleaseView(
            version=version,
            sequence=seq,
            active=seq is not None and seq == active_sequence,
            smoke=smoke.find(name, seq, version),
            bundle_sha256=shas.get(seq) if seq is not None else None,
        )
        for version, seq in wanted
    )


def _series(
    session: so.Session, device_id: str, limit: int
) -> tuple[dict[str, list[HealthSample]], dict[str, list[RollbackMark]]]:
    samples: dict[str, list[HealthSample]] = defaultdict(list)
    marks: dict[str, list[RollbackMark]] = defaultdict(list)
    rows = session.execute(
        sa.select(
            Event.kind, Event.channel, Event.version, Event.reason, Event.figures, Event.occurred_at
        )
        .where(Event.device_id == device_id, Event.kind.in_((HEALTH_EVENT, ROLLED_BACK_EVENT)))
        .order_by(Event.occurred_at.desc(), Event.id.desc())
        .limit(limit)
    )
    for r in rows:
        if r.channel is None:
            continue
        if r.kind == ROLLED_BACK_EVENT:
            marks[r.channel].append(RollbackMark(r.occurred_at, r.version, r.reason))
            continue
        sample = health_sample(r.occurred_at, r.figures)
        if sample is not None:
            samples[r.channel].append(sample)
    for sampled in samples.values():
        sampled.reverse()
    for marked in marks.values():
        marked.reverse()
    return samples, marks


def _timeline(session: so.Session, device_id: str, limit: int) -> list[Event]:
    """A device's newest events but its health samples (those are charted)."""
    return list(
        session.scalars(
            sa.select(Event)
            .where(Event.device_id == device_id, Event.kind != HEALTH_EVENT)
            .order_by(Event.occurred_at.desc(), Event.id.desc())
            .limit(limit)
        )
    )


def _targets(session: so.Session, device_id: str, limit: int) -> tuple[TargetView, ...]:
    rows = session.execute(
        sa.select(DeploymentTarget, Deployment.state, Bundle.name, Bundle.version)
        .join(Deployment, Deployment.id == DeploymentTarget.deployment_id)
        .join(Bundle, Bundle.id == Deployment.bundle_id)
        .where(DeploymentTarget.device_id == device_id)
        .order_by(DeploymentTarget.deployment_id.desc())
        .limit(limit)
    )
    return tuple(
        TargetView(
            t.deployment_id, name, version, dep_state, t.wave, t.state, t.reason, t.updated_at
        )
        for t, dep_state, name, version in rows
    )


def device_page(
    session: so.Session,
    device_id: str,
    now: datetime,
    thresholds: Thresholds,
    *,
    events: int = 100,
    samples: int = 1000,
    targets: int = 20,
    usb_reports: int = 10,
) -> DevicePage:
    """Everything the device page shows: its state, channels with releases, smoke-test
    figures and health over time, its events, deployments and USB reports.

    `samples` bounds the health and rollback events read for the charts. Raises
    NotFoundError.
    """
    device = devices.get(session, device_id)
    facts = _gather(session, now, thresholds, device_id)[device_id]
    policies = _policies(session)
    judged, why = classify(facts, policies, thresholds, now)
    smoke = _smoke_results(session, device_id, limit=events)
    series, marks = _series(session, device_id, samples)
    status = device.status or {}
    health = device.health or {}
    rows = {
        c.channel: c
        for c in session.scalars(
            sa.select(DeviceChannel).where(DeviceChannel.device_id == device_id)
        )
    }
    channels = []
    for name in sorted(set(rows) | set(series) | set(marks)):
        c = rows.get(name)
        sequence = c.active_sequence if c else None
        policy = policies.get((name, sequence), {}) if sequence is not None else {}
        snapshot = health_sample(device.state_at or now, health.get(name))
        breach = deployments.health_breach(policy, health.get(name)) if policy else None
        channel_samples = series.get(name) or ([snapshot] if snapshot else [])
        channels.append(
            ChannelView(
                name=name,
                active_version=c.active_version if c else None,
                active_sequence=sequence,
                state=c.state if c else "",
                updated_at=c.updated_at if c else None,
                health=snapshot,
                breach=breach,
                policy=policy,
                releases=_releases(session, name, status, sequence, smoke),
                samples=tuple(channel_samples),
                rollbacks=tuple(marks.get(name, [])),
            )
        )
    usb = session.scalars(
        sa.select(UsbReport)
        .where(UsbReport.device_id == device_id)
        .order_by(UsbReport.imported_at.desc(), UsbReport.created_at.desc())
        .limit(usb_reports)
    )
    return DevicePage(
        row=_row(facts, judged, why),
        arch=device.arch,
        agent_version=device.agent_version,
        enrolled_at=device.enrolled_at,
        public_key=device.public_key,
        trust_root_version=device.trust_root_version,
        state_at=device.state_at,
        channels=tuple(channels),
        events=tuple(devices.event_dict(e) for e in _timeline(session, device_id, events)),
        targets=_targets(session, device_id, targets),
        usb_reports=tuple(
            UsbReportView(u.report_id, u.plan_id, u.created_at, u.imported_at) for u in usb
        ),
    )


# --- bundles -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignatureView:
    keyid: str
    trusted: bool  # a signing key of the manager's current trust root


@dataclass(frozen=True)
class BundlePage:
    detail: dict[str, Any]  # `bundles.detail`: summary and the whole manifest
    signatures: tuple[SignatureView, ...]
    signatures_error: str | None  # why the signatures could not be read from the store
    threshold: int | None  # signatures the trust root requires, None without a trust root
    deployments: tuple[tuple[int, str, datetime], ...]  # (id, state, created), newest first


def read_signatures(f: BinaryIO) -> list[str]:
    """The key ids that signed the bundle file `f` (no trust check). Raises BundleError."""
    _manifest, sigs = read_unverified(f)
    return [s.keyid for s in sigs]


def bundle_page(session: so.Session, sha256: str, bundle_file: Any) -> BundlePage:
    """A bundle's manifest, models, thresholds, health policy, signatures and key ids, and
    the deployments that use it. `bundle_file(sha256)` opens the stored file.

    Raises NotFoundError, InvalidRequestError (not a sha256).
    """
    bundle = bundle_service.get_by_sha(session, sha256)
    signing: set[str] = set()
    threshold: int | None = None
    try:
        role = trust.current_root(session).signing_role
        signing, threshold = set(role.keyids), role.threshold
    except (NoTrustRootError, BundleError):  # nothing to judge signatures against
        pass
    error = None
    keyids: list[str] = []
    try:
        with bundle_file(sha256) as f:
            keyids = read_signatures(f)
    except (OSError, NotFoundError, BundleError) as e:
        error = f"the bundle file cannot be read: {e}"
    deps = session.execute(
        sa.select(Deployment.id, Deployment.state, Deployment.created_at)
        .where(Deployment.bundle_id == bundle.id)
        .order_by(Deployment.id.desc())
    )
    return BundlePage(
        detail=bundle_service.detail(bundle),
        signatures=tuple(SignatureView(k, k in signing) for k in keyids),
        signatures_error=error,
        threshold=threshold,
        deployments=tuple((r.id, r.state, r.created_at) for r in deps),
    )


def bundle_deployment_counts(session: so.Session) -> dict[str, int]:
    """How many deployments use each bundle, by the bundle's sha256."""
    rows = session.execute(
        sa.select(Bundle.sha256, sa.func.count())
        .join(Deployment, Deployment.bundle_id == Bundle.id)
        .group_by(Bundle.sha256)
    )
    return {sha256: n for sha256, n in rows}


# --- tokens ------------------------------------------------------------------------------------

UNUSED, USED, EXPIRED = "unused", "used", "expired"


@dataclass(frozen=True)
class EnrollmentTokenRow:
    id: int
    device_class: str | None
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None
    device_id: str | None
    status: str  # UNUSED | USED | EXPIRED


def enrollment_tokens(session: so.Session, now: datetime, limit: int) -> list[EnrollmentTokenRow]:
    """Enrollment tokens, newest first."""
    rows = session.scalars(
        sa.select(EnrollmentToken).order_by(EnrollmentToken.id.desc()).limit(limit)
    )
    out = []
    for t in rows:
        status = USED if t.used_at else EXPIRED if now >= t.expires_at else UNUSED
        out.append(
            EnrollmentTokenRow(
                t.id, t.device_class, t.created_at, t.expires_at, t.used_at, t.device_id, status
            )
        )
    return out


def token_counts(session: so.Session, now: datetime) -> dict[str, int]:
    """How many admin tokens are valid and enrollment tokens still usable."""
    valid_admin = tokens.count_valid_admin_tokens(session, now)
    usable = session.scalar(
        sa.select(sa.func.count())
        .select_from(EnrollmentToken)
        .where(EnrollmentToken.used_at.is_(None), EnrollmentToken.expires_at > now)
    )
    return {"admin_valid": valid_admin, "enroll_usable": usable or 0}
