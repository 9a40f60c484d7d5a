"""Staged rollouts: a bundle to a set of devices, in waves, advancing and halting by itself.

Targets are resolved to devices when the deployment is created: explicitly named devices come
first (so `--device canary-1` chooses the canary), then the rest in device-id order. Waves are
cumulative counts or percentages of the targets ("1,10%,50%,100%"); the last must cover all.

A wave is released when the previous one has at least `success_ratio` of its devices (those
that did not fail) running the release, out of probation and within the bundle's health
policy. The deployment halts by itself when failures (smoke test failed, install refused or
failed, rolled back) exceed `max_failure_ratio` of the released devices, or on any failure
while the canary wave (the first of several) is out. Progress is evaluated during device
check-ins and status queries, always under a row lock of the deployment, so several manager
processes agree.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
import sqlalchemy.orm as so

from satchel.bundles.errors import BundleError
from satchel.bundles.health import HealthFigures, judge
from satchel.bundles.manifest import HealthPolicy
from satchel.manager.errors import ConflictError, InvalidRequestError, NotFoundError
from satchel.manager.models import (
    Bundle,
    Deployment,
    DeploymentTarget,
    Device,
    DeviceChannel,
    DeviceTag,
)
from satchel.manager.services import bundles as bundle_service
from satchel.manager.services.devices import check_label

log = logging.getLogger(__name__)

# deployment states
ACTIVE, PAUSED, HALTED, ABORTED, COMPLETED = "active", "paused", "halted", "aborted", "completed"
DEPLOYMENT_STATES = (ACTIVE, PAUSED, HALTED, ABORTED, COMPLETED)
TRACKED = (ACTIVE, PAUSED, HALTED)  # device progress is still recorded in these states

# target states, in the order a healthy install goes through them
PENDING, ASSIGNED, DOWNLOADED, VERIFIED = "pending", "assigned", "downloaded", "verified"
ACTIVATED, SUCCEEDED, FAILED = "activated", "succeeded", "failed"
TARGET_STATES = (PENDING, ASSIGNED, DOWNLOADED, VERIFIED, ACTIVATED, SUCCEEDED, FAILED)
OFFERED = (ASSIGNED, DOWNLOADED, VERIFIED)  # the device is told to install
_RANK = {s: i for i, s in enumerate(TARGET_STATES)}

FAILURE_EVENTS = ("install_failed", "install_refused", "rolled_back")
PROGRESS_EVENTS = {"downloaded": DOWNLOADED, "verified": VERIFIED, "activated": ACTIVATED}
PROBATION = "probation"  # channel state an agent reports while it watches a new release
_WAVE_RE = re.compile(r"(\d+)|(\d+(?:\.\d+)?)%")


@dataclass(frozen=True)
class Selectors:
    """Which devices a deployment targets; a device matching any of them is a target.
    All empty means every device compatible with the bundle."""

    device_classes: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, list[str]]:
        return {
            "device_classes": list(self.device_classes),
            "tags": list(self.tags),
            "devices": list(self.devices),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Selectors:
        """Raises InvalidRequestError."""
        out: dict[str, tuple[str, ...]] = {}
        for key in ("device_classes", "tags", "devices"):
            values = d.get(key) or []
            if not isinstance(values, list):
                raise InvalidRequestError(f"'{key}' must be a list of names")
            out[key] = tuple(check_label(v, key) for v in values)
        return cls(**out)


@dataclass(frozen=True)
class ChannelReport:
    """What a device says one channel runs (from its check-in)."""

    active_version: str | None
    active_sequence: int | None
    state: str


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
        if self.bundle_sha256 is not None:
            return self.bundle_sha256 == bundle.sha256
        return self.channel == bundle.name and self.sequence == bundle.sequence

    @property
    def is_failure(self) -> bool:
        return self.kind in FAILURE_EVENTS or (self.kind == "smoke_test" and self.passed is False)


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


# --- waves ----------------------------------------------------------------------------------


def parse_waves(spec: str) -> list[str]:
    """Split "1,10%,50%,100%" into wave specs. Raises InvalidRequestError."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise InvalidRequestError("waves must list at least one count or percentage")
    for p in parts:
        m = _WAVE_RE.fullmatch(p)
        if not m or (m.group(1) and int(p) < 1) or (m.group(2) and not 0 < float(p[:-1]) <= 100):
            raise InvalidRequestError(
                f"wave {p!r} is not a device count (>= 1) or a percentage (0-100%)"
            )
    return parts


def wave_sizes(specs: list[str], total: int) -> tuple[list[str], list[int]]:
    """Resolve cumulative wave specs against `total` devices into per-wave sizes.

    Waves that add no device are dropped. Raises InvalidRequestError when a wave shrinks or
    the last one does not cover every target.
    """
    kept: list[str] = []
    sizes: list[int] = []
    reached = 0
    for spec in specs:
        if spec.endswith("%"):
            cumulative = max(1, math.ceil(float(spec[:-1]) * total / 100 - 1e-9))
        else:
            cumulative = int(spec)
        cumulative = min(cumulative, total)
        if cumulative < reached:
            raise InvalidRequestError(
                f"waves are cumulative: {spec} is smaller than the wave before"
            )
        if cumulative > reached:
            kept.append(spec)
            sizes.append(cumulative - reached)
            reached = cumulative
    if reached < total:
        raise InvalidRequestError(
            f"the last wave ({specs[-1]}) covers {reached} of the {total} target devices; "
            "end with 100%"
        )
    return kept, sizes


# --- creating ---------------------------------------------------------------------------------


def resolve_targets(session: so.Session, bundle: Bundle, selectors: Selectors) -> list[str]:
    """Device ids targeted by `selectors`, named devices first, then by id; devices whose
    class the bundle does not support are left out unless named (then it is refused).

    Raises NotFoundError (a named device does not exist), InvalidRequestError (a named device
    is incompatible, or nothing matches).
    """
    classes = tuple(bundle.manifest.get("compatibility", {}).get("device_classes", []))
    named = []
    for device_id in dict.fromkeys(selectors.devices):
        device = session.get(Device, device_id)
        if device is None:
            raise NotFoundError(f"no device {device_id!r}")
        if classes and device.device_class not in classes:
            raise InvalidRequestError(
                f"device {device_id} is of class {device.device_class}, which bundle "
                f"{bundle.name} {bundle.version} does not support"
            )
        named.append(device_id)
    conditions: list[Any] = []
    if selectors.device_classes:
        conditions.append(Device.device_class.in_(selectors.device_classes))
    if selectors.tags:
        tagged = sa.select(DeviceTag.device_id).where(DeviceTag.tag.in_(selectors.tags))
        conditions.append(Device.id.in_(tagged))
    query = sa.select(Device.id).order_by(Device.id)
    if conditions:
        query = query.where(sa.or_(*conditions))
    elif selectors.devices:
        query = query.where(sa.false())
    if classes:
        query = query.where(Device.device_class.in_(classes))
    rest = [d for d in session.scalars(query) if d not in set(named)]
    targets = named + rest
    if not targets:
        raise InvalidRequestError("no enrolled device matches the deployment's targets")
    return targets


def create(
    session: so.Session,
    bundle_ref: str,
    selectors: Selectors,
    waves: str,
    success_ratio: float,
    max_failure_ratio: float,
    now: datetime,
) -> Deployment:
    """Create and start a deployment of the bundle `bundle_ref` (NAME:VERSION or sha256).

    The first wave is released at once. Raises NotFoundError, InvalidRequestError.
    """
    if not 0 < success_ratio <= 1:
        raise InvalidRequestError("success ratio must be in (0, 1]")
    if not 0 <= max_failure_ratio < 1:
        raise InvalidRequestError("max failure ratio must be in [0, 1)")
    bundle = bundle_service.get_by_ref(session, bundle_ref)
    targets = resolve_targets(session, bundle, selectors)
    specs, sizes = wave_sizes(parse_waves(waves), len(targets))
    dep = Deployment(
        bundle_id=bundle.id,
        bundle=bundle,
        state=ACTIVE,
        selectors=selectors.to_dict(),
        waves=specs,
        wave_sizes=sizes,
        current_wave=0,
        success_ratio=success_ratio,
        max_failure_ratio=max_failure_ratio,
        failures_tolerated=0,
        created_at=now,
        updated_at=now,
    )
    session.add(dep)
    session.flush()
    rows = []
    position = 0
    for wave, size in enumerate(sizes):
        for device_id in targets[position : position + size]:
            rows.append(
                {
                    "deployment_id": dep.id,
                    "device_id": device_id,
                    "wave": wave,
                    "state": PENDING,
                    "updated_at": now,
                }
            )
        position += size
    session.execute(sa.insert(DeploymentTarget), rows)
    _release_wave(session, dep, 0, now)
    evaluate(session, dep, now)
    return dep


# --- reading ----------------------------------------------------------------------------------


def get(session: so.Session, deployment_id: int, lock: bool = False) -> Deployment:
    """Raises NotFoundError. With `lock`, the row is locked until the transaction ends."""
    query = sa.select(Deployment).where(Deployment.id == deployment_id)
    if lock:
        query = query.with_for_update(of=Deployment)
    dep = session.scalar(query)
    if dep is None:
        raise NotFoundError(f"no deployment {deployment_id}")
    return dep


def list_deployments(session: so.Session, state: str | None = None) -> list[Deployment]:
    query = sa.select(Deployment).order_by(Deployment.id.desc())
    if state:
        query = query.where(Deployment.state == state)
    return list(session.scalars(query))


def _counts(session: so.Session, dep: Deployment) -> dict[int, Counter[str]]:
    rows = session.execute(
        sa.select(DeploymentTarget.wave, DeploymentTarget.state, sa.func.count())
        .where(DeploymentTarget.deployment_id == dep.id)
        .group_by(DeploymentTarget.wave, DeploymentTarget.state)
    )
    per_wave: dict[int, Counter[str]] = {w: Counter() for w in range(len(dep.wave_sizes))}
    for wave, state, n in rows:
        per_wave.setdefault(wave, Counter())[state] += n
    return per_wave


def _needed(dep: Deployment, wave: int, failed: int) -> int:
    """Healthy devices a wave needs: `success_ratio` of those of it that have not failed
    (failures are judged by the halt rule instead; tolerated ones must not block a wave)."""
    return math.ceil(dep.success_ratio * (dep.wave_sizes[wave] - failed) - 1e-9)


def summary(session: so.Session, dep: Deployment) -> dict[str, Any]:
    """JSON-ready view: state, bundle, waves with their counts, totals."""
    per_wave = _counts(session, dep)
    totals: Counter[str] = Counter()
    waves = []
    for i, size in enumerate(dep.wave_sizes):
        totals.update(per_wave[i])
        waves.append(
            {
                "index": i,
                "spec": dep.waves[i],
                "size": size,
                "released": i <= dep.current_wave,
                "needed": _needed(dep, i, per_wave[i][FAILED]),
                "counts": {s: per_wave[i][s] for s in TARGET_STATES if per_wave[i][s]},
            }
        )
    b = dep.bundle
    return {
        "id": dep.id,
        "state": dep.state,
        "reason": dep.reason,
        "bundle": {
            "name": b.name,
            "version": b.version,
            "sequence": b.sequence,
            "sha256": b.sha256,
        },
        "selectors": dep.selectors,
        "current_wave": dep.current_wave,
        "success_ratio": dep.success_ratio,
        "max_failure_ratio": dep.max_failure_ratio,
        "failures_tolerated": dep.failures_tolerated,
        "waves": waves,
        "counts": {s: totals[s] for s in TARGET_STATES if totals[s]},
        "targets_total": sum(dep.wave_sizes),
        "created_at": dep.created_at.isoformat(),
        "updated_at": dep.updated_at.isoformat(),
    }


def status(session: so.Session, deployment_id: int, now: datetime) -> dict[str, Any]:
    """Evaluate the deployment (it may advance or halt), then describe it with every
    device's progress. Raises NotFoundError."""
    dep = get(session, deployment_id, lock=True)
    evaluate(session, dep, now)
    out = summary(session, dep)
    targets = session.scalars(
        sa.select(DeploymentTarget)
        .where(DeploymentTarget.deployment_id == dep.id)
        .order_by(DeploymentTarget.wave, DeploymentTarget.device_id)
    )
    out["targets"] = [
        {
            "device_id": t.device_id,
            "wave": t.wave,
            "state": t.state,
            "reason": t.reason,
            "updated_at": t.updated_at.isoformat(),
        }
        for t in targets
    ]
    return out


# --- changing state ----------------------------------------------------------------------------


def pause(session: so.Session, deployment_id: int, now: datetime) -> Deployment:
    """Stop offering the bundle to further devices. Raises NotFoundError, ConflictError."""
    dep = get(session, deployment_id, lock=True)
    if dep.state != ACTIVE:
        raise ConflictError(f"deployment {dep.id} is {dep.state}; only an active one can pause")
    dep.state, dep.updated_at = PAUSED, now
    return dep


def resume(session: so.Session, deployment_id: int, now: datetime) -> Deployment:
    """Continue a paused or halted deployment. Failures that halted it are tolerated from
    now on (they no longer halt it nor block their wave); new ones count again.
    Raises NotFoundError, ConflictError."""
    dep = get(session, deployment_id, lock=True)
    if dep.state not in (PAUSED, HALTED):
        raise ConflictError(
            f"deployment {dep.id} is {dep.state}; only a paused or halted one can resume"
        )
    if dep.state == HALTED:
        failed = sum(c[FAILED] for c in _counts(session, dep).values())
        dep.failures_tolerated = failed
    dep.state, dep.reason, dep.updated_at = ACTIVE, None, now
    evaluate(session, dep, now)
    return dep


def abort(session: so.Session, deployment_id: int, now: datetime, reason: str = "") -> Deployment:
    """End a deployment for good: nothing more is offered or served for it.
    Raises NotFoundError, ConflictError."""
    dep = get(session, deployment_id, lock=True)
    if dep.state in (ABORTED, COMPLETED):
        raise ConflictError(f"deployment {dep.id} is already {dep.state}")
    dep.state, dep.updated_at = ABORTED, now
    dep.reason = reason or "aborted by an admin"
    return dep


def _release_wave(session: so.Session, dep: Deployment, wave: int, now: datetime) -> None:
    """Offer the bundle to the devices of `wave`; those already running it count as done."""
    bundle = dep.bundle
    in_wave = (
        (DeploymentTarget.deployment_id == dep.id)
        & (DeploymentTarget.wave == wave)
        & (DeploymentTarget.state == PENDING)
    )
    running = sa.select(DeviceChannel.device_id).where(
        DeviceChannel.channel == bundle.name,
        DeviceChannel.active_sequence >= bundle.sequence,
        DeviceChannel.state != PROBATION,
    )
    session.execute(
        sa.update(DeploymentTarget)
        .where(in_wave, DeploymentTarget.device_id.in_(running))
        .values(state=SUCCEEDED, reason="already running this release or newer", updated_at=now)
    )
    session.execute(
        sa.update(DeploymentTarget).where(in_wave).values(state=ASSIGNED, updated_at=now)
    )


def _halt_reason(session: so.Session, dep: Deployment, failed: int, released: int) -> str | None:
    net = failed - dep.failures_tolerated
    if net <= 0:
        return None
    first = session.scalar(
        sa.select(DeploymentTarget)
        .where(DeploymentTarget.deployment_id == dep.id, DeploymentTarget.state == FAILED)
        .order_by(DeploymentTarget.updated_at.desc())
        .limit(1)
    )
    example = f" (e.g. {first.device_id}: {first.reason})" if first else ""
    if dep.current_wave == 0 and len(dep.wave_sizes) > 1:
        return f"canary wave failed{example}"
    if net / released > dep.max_failure_ratio:
        return (
            f"{net} of {released} released devices failed, more than "
            f"{dep.max_failure_ratio:.0%}{example}"
        )
    return None


def evaluate(session: so.Session, dep: Deployment, now: datetime) -> None:
    """Halt, advance or complete an active deployment from its targets' states.

    The caller must hold the deployment's row lock (`get(..., lock=True)`).
    """
    if dep.state != ACTIVE:
        return
    while True:
        per_wave = _counts(session, dep)
        released_waves = range(dep.current_wave + 1)
        released = sum(dep.wave_sizes[w] for w in released_waves)
        failed = sum(per_wave[w][FAILED] for w in released_waves)
        reason = _halt_reason(session, dep, failed, released)
        if reason is not None:
            dep.state, dep.reason, dep.updated_at = HALTED, reason, now
            return
        wave = dep.current_wave
        if per_wave[wave][SUCCEEDED] < _needed(dep, wave, per_wave[wave][FAILED]):
            return
        if wave == len(dep.wave_sizes) - 1:
            dep.state, dep.updated_at = COMPLETED, now
            return
        dep.current_wave, dep.updated_at = wave + 1, now
        _release_wave(session, dep, wave + 1, now)


# --- device progress (called by check-ins) -----------------------------------------------------


_DEVICE_TARGETS = (
    sa.select(
        DeploymentTarget.deployment_id,
        DeploymentTarget.state,
        DeploymentTarget.reason,
        Deployment.state,
        Bundle.id,
        Bundle.name,
        Bundle.version,
        Bundle.sequence,
        Bundle.sha256,
        Bundle.size,
    )
    .join(Deployment, Deployment.id == DeploymentTarget.deployment_id)
    .join(Bundle, Bundle.id == Deployment.bundle_id)
    .where(
        DeploymentTarget.device_id == sa.bindparam("device_id"),
        DeploymentTarget.state != PENDING,
        Deployment.state.in_(TRACKED),
    )
    .order_by(DeploymentTarget.deployment_id)
)  # built once: this runs on every check-in


def device_targets(session: so.Session, device_id: str) -> list[DeviceTarget]:
    """Released targets of `device_id` in deployments still tracking progress."""
    rows = session.execute(_DEVICE_TARGETS, {"device_id": device_id})
    return [
        DeviceTarget(r[0], r[1], r[2], r[3], BundleRef(r[4], r[5], r[6], r[7], r[8], r[9]))
        for r in rows
    ]


def health_breach(policy: Mapping[str, Any], health: Mapping[str, Any] | None) -> str | None:
    """Why a channel's health summary breaks the bundle's health policy (the manifest's
    `health_policy` as stored), judged by the device's own judge, or None. A policy that no
    longer parses is not judged here: the device judges with its verified copy. Raises
    nothing."""
    if not policy or not health:
        return None
    try:
        parsed = _parsed_policy(tuple(sorted(policy.items())))
    except TypeError:  # an unhashable value: not a policy the manifest parser ever wrote
        parsed = None
    if parsed is None:
        return None
    return judge(parsed, HealthFigures.from_summary(health)).breach


# Parsed once per distinct policy: the dashboard judges every device's channels per page.
@functools.lru_cache(maxsize=256)
def _parsed_policy(items: tuple[tuple[str, Any], ...]) -> HealthPolicy | None:
    try:
        return HealthPolicy.from_dict(dict(items))
    except BundleError as e:
        log.warning("a stored health policy does not parse, not judged: %s", e)
        return None


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
            what = "smoke test failed" if e.kind == "smoke_test" else e.kind.replace("_", " ")
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
            if channel.state == PROBATION:
                return ACTIVATED, "in probation"
            if current == SUCCEEDED:  # judged already; later breaches are the agent's to act on
                return SUCCEEDED, None
            breach = health_breach(policy_of(bundle.id), health)
            if breach:
                return ACTIVATED, breach
            return SUCCEEDED, None
        if current in (ACTIVATED, SUCCEEDED):
            return FAILED, f"device went back to sequence {channel.active_sequence}"
    return state, reason


def health_policy(session: so.Session, bundle_id: int) -> dict[str, Any]:
    """The health policy in the manifest of bundle `bundle_id` ({} when it has none)."""
    manifest = session.scalar(sa.select(Bundle.manifest).where(Bundle.id == bundle_id)) or {}
    return dict(manifest.get("health_policy", {}))


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
) -> None:
    """Move the device's targets along from what its check-in reports, then evaluate every
    deployment that changed (locking deployments in id order, before touching targets)."""
    changes: dict[int, tuple[DeviceTarget, str, str | None]] = {}
    for dt in targets:
        change = target_change(
            dt, channels, health, events, lambda bundle_id: health_policy(session, bundle_id)
        )
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
