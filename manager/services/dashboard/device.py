"""One device's page: its state, channels with releases, smoke-test figures and health over
time, its events, deployments and USB reports."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
import sqlalchemy.orm as so

from satchel.bundles.events import HEALTH, SMOKE_TEST
from satchel.manager.models import (
    Bundle,
    Deployment,
    DeploymentTarget,
    DeviceChannel,
    Event,
    UsbReport,
)
from satchel.manager.services import devices
from satchel.manager.services.dashboard.activation import CandidateView, candidate_view
from satchel.manager.services.dashboard.classify import (
    classify,
    device_row,
    gather,
    health_policies,
)
from satchel.manager.services.dashboard.figures import flatten_figures
from satchel.manager.services.dashboard.health import (
    HealthSample,
    ReleaseHealth,
    RollbackMark,
    by_release,
    health_sample,
    health_series,
)
from satchel.manager.services.dashboard.states import (
    DeviceRow,
    Thresholds,
)
from satchel.manager.services.dashboard.variants import VariantsView, variants_view
from satchel.manager.services.deployments.health import health_breach


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
    release_health: tuple[ReleaseHealth, ...] = ()  # samples by release, the rollbacks' too
    stage: str = ""  # "shadow" | "ramp" | "probation" | "active" ("" from older agents)
    candidate: CandidateView | None = None  # a release in its shadow stage or ramp
    variants: VariantsView | None = None  # a release with variants: which runs and why


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
        .where(Event.device_id == device_id, Event.kind == SMOKE_TEST)
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


def _reported_versions(status: Mapping[str, Any], name: str) -> dict[int, str]:
    """sequence -> version of the releases the device reports on channel `name`."""
    reported = (status.get("channels") or {}).get(name)
    releases = reported.get("releases") if isinstance(reported, dict) else None
    out: dict[int, str] = {}
    for r in releases if isinstance(releases, list) else []:
        if isinstance(r, dict) and isinstance(r.get("version"), str):
            seq = r.get("sequence")
            if isinstance(seq, int) and not isinstance(seq, bool):
                out[seq] = r["version"]
    return out


def _timeline(session: so.Session, device_id: str, limit: int) -> list[Event]:
    """A device's newest events but its health samples (those are charted)."""
    return list(
        session.scalars(
            sa.select(Event)
            .where(Event.device_id == device_id, Event.kind != HEALTH)
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
    facts = gather(session, now, thresholds, device_id)[device_id]
    policies = health_policies(session)
    judged, why = classify(facts, policies, thresholds, now)
    smoke = _smoke_results(session, device_id, limit=events)
    series, marks = health_series(session, device_id, samples)
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
        snapshot = health_sample(
            device.state_at or now, health.get(name), c.active_version if c else None, sequence
        )
        breach = health_breach(policy, health.get(name)) if policy else None
        channel_samples = series.get(name) or ([snapshot] if snapshot else [])
        rollbacks = marks.get(name, [])
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
                rollbacks=tuple(rollbacks),
                release_health=by_release(
                    channel_samples, rollbacks, _reported_versions(status, name)
                ),
                stage=devices.staged_activation(status, name)["stage"],
                candidate=candidate_view(status, name),
                variants=variants_view(status, name),
            )
        )
    usb = session.scalars(
        sa.select(UsbReport)
        .where(UsbReport.device_id == device_id)
        .order_by(UsbReport.imported_at.desc(), UsbReport.created_at.desc())
        .limit(usb_reports)
    )
    return DevicePage(
        row=device_row(facts, judged, why),
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
