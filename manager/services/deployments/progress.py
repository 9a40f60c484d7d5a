"""Device progress, called by check-ins (LAN and USB alike): what a device reports (its
channels, health and events) moves its released targets along, then their deployments are
evaluated. The released targets and the health policies they are judged by come from
`services.targets`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
import sqlalchemy.orm as so

from satchel.bundles.channels import STATE_PROBATION
from satchel.bundles.events import SMOKE_TEST
from satchel.manager.models import Bundle, DeploymentTarget
from satchel.manager.services.deployments.advance import evaluate
from satchel.manager.services.deployments.health import health_breach
from satchel.manager.services.deployments.read import get
from satchel.manager.services.deployments.states import (
    ACTIVATED,
    FAILED,
    FAILURE_EVENTS,
    PROGRESS_EVENTS,
    SUCCEEDED,
    TARGET_STATES,
)

_RANK = {s: i for i, s in enumerate(TARGET_STATES)}


@dataclass(frozen=True)
class ChannelReport:
    """What a device says one channel runs (from its check-in)."""

    active_version: str | None
    active_sequence: int | None
    state: str
    stage: str = ""  # "shadow" | "ramp" | "probation" | "active" ("" from older agents)
    candidate_sequence: int | None = None  # a release in its shadow stage or ramp
    kept: tuple[int, ...] = ()  # sequences of the releases it keeps (bases for a delta)


@dataclass(frozen=True)
class ReportedEvent:
    """The fields of a device event that matter to deployments."""

    kind: str
    channel: str | None = None
    sequence: int | None = None
    bundle_sha256: str | None = None
    passed: bool | None = None
    reason: str | None = None

    def concerns(self, bundle: BundleRef | Bundle) -> bool:
        if self.bundle_sha256 is not None and self.bundle_sha256 == bundle.sha256:
            return True
        # also a copy under another sha256: re-wrapped for more devices (services/rewrap.py)
        return self.channel == bundle.name and self.sequence == bundle.sequence

    @property
    def is_failure(self) -> bool:
        return self.kind in FAILURE_EVENTS or (self.kind == SMOKE_TEST and self.passed is False)


@dataclass(frozen=True)
class BundleRef:
    """The few fields of a bundle a check-in needs (its manifest is loaded only on demand)."""

    id: int
    name: str
    version: str
    sequence: int
    sha256: str
    size: int


@dataclass
class DeviceTarget:
    """One deployment a device belongs to, with what the check-in needs to know."""

    deployment_id: int
    state: str
    reason: str | None
    deployment_state: str
    bundle: BundleRef


PolicyLookup = Callable[[int], Mapping[str, Any]]  # bundle id -> its health policy


def _progress(
    policy_of: PolicyLookup,
    current: str,
    bundle: BundleRef,
    channel: ChannelReport | None,
    health: Mapping[str, Any] | None,
    events: Iterable[ReportedEvent],
) -> tuple[str, str | None]:
    """The next state of one target given a check-in, and why."""
    mine = [e for e in events if e.concerns(bundle)]
    for e in mine:
        if e.is_failure:
            what = "smoke test failed" if e.kind == SMOKE_TEST else e.kind.replace("_", " ")
            return FAILED, f"{what}: {e.reason}" if e.reason else what
    if current == FAILED:
        return FAILED, None
    state, reason = current, None
    for e in mine:
        step = PROGRESS_EVENTS.get(e.kind)
        if step and _RANK[step] > _RANK[state]:
            state = step
    if channel is not None and channel.active_sequence is not None:
        if channel.active_sequence > bundle.sequence:
            return SUCCEEDED, f"superseded by sequence {channel.active_sequence}"
        if channel.active_sequence == bundle.sequence:
            if channel.state == STATE_PROBATION:
                return ACTIVATED, "in probation"
            if current == SUCCEEDED:  # judged already; later breaches are the agent's to act on
                return SUCCEEDED, None
            breach = health_breach(policy_of(bundle.id), health)
            if breach:
                return ACTIVATED, breach
            return SUCCEEDED, None
        if channel.candidate_sequence == bundle.sequence:
            return state, reason  # in its shadow stage or ramp: not active, not failed yet
        if current in (ACTIVATED, SUCCEEDED):
            return FAILED, f"device went back to sequence {channel.active_sequence}"
    return state, reason


def target_change(
    dt: DeviceTarget,
    channels: Mapping[str, ChannelReport],
    health: Mapping[str, Any],
    events: Iterable[ReportedEvent],
    policy_of: PolicyLookup,
) -> tuple[str, str | None] | None:
    """The (state, reason) a check-in moves target `dt` to, or None when it changes nothing."""
    name = dt.bundle.name
    new, reason = _progress(
        policy_of, dt.state, dt.bundle, channels.get(name), health.get(name), events
    )
    if new != dt.state or (reason is not None and reason != dt.reason):
        return new, reason
    return None


def record_progress(
    session: so.Session,
    device_id: str,
    targets: list[DeviceTarget],
    channels: Mapping[str, ChannelReport],
    health: Mapping[str, Any],
    events: list[ReportedEvent],
    now: datetime,
    policy_of: PolicyLookup,
) -> None:
    """Move the device's targets along from what its check-in reports, then evaluate every
    deployment that changed (locking deployments in id order, before touching targets).
    `policy_of` gives the health policy of a target's bundle (`targets.POLICIES.lookup`)."""
    changes: dict[int, tuple[DeviceTarget, str, str | None]] = {}
    for dt in targets:
        change = target_change(dt, channels, health, events, policy_of)
        if change is not None:
            changes[dt.deployment_id] = (dt, *change)
    for dep_id in sorted(changes):
        dt, new, reason = changes[dep_id]
        dep = get(session, dep_id, lock=True)
        key = (DeploymentTarget.deployment_id == dep_id) & (DeploymentTarget.device_id == device_id)
        latest = session.scalar(sa.select(DeploymentTarget.state).where(key))
        if latest == FAILED and new != FAILED:  # another check-in got there first
            continue
        session.execute(
            sa.update(DeploymentTarget).where(key).values(state=new, reason=reason, updated_at=now)
        )
        dt.state, dt.reason = new, reason
        evaluate(session, dep, now)
        dt.deployment_state = dep.state
