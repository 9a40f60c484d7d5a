"""A deployment moving by itself: a wave is released when the one before has at least
`success_ratio` of its devices (those that did not fail) running the release, out of
probation and within the bundle's health policy. It halts when failures (smoke test failed,
install refused or failed, rolled back) exceed `max_failure_ratio` of the released devices,
or on any failure while the canary wave (the first of several) is out, and completes with
its last wave.

Progress is evaluated during device check-ins and status queries, always under a row lock of
the deployment, so several manager processes agree.
"""

from __future__ import annotations

import math
from collections import Counter
from datetime import datetime

import sqlalchemy as sa
import sqlalchemy.orm as so

from satchel.bundles.channels import STATE_PROBATION
from satchel.manager.models import Deployment, DeploymentTarget, DeviceChannel
from satchel.manager.services.deployments.states import (
    ACTIVE,
    ASSIGNED,
    COMPLETED,
    FAILED,
    HALTED,
    PENDING,
    SUCCEEDED,
)


def wave_counts(session: so.Session, dep: Deployment) -> dict[int, Counter[str]]:
    """How many targets of each wave are in each state."""
    rows = session.execute(
        sa.select(DeploymentTarget.wave, DeploymentTarget.state, sa.func.count())
        .where(DeploymentTarget.deployment_id == dep.id)
        .group_by(DeploymentTarget.wave, DeploymentTarget.state)
    )
    per_wave: dict[int, Counter[str]] = {w: Counter() for w in range(len(dep.wave_sizes))}
    for wave, state, n in rows:
        per_wave.setdefault(wave, Counter())[state] += n
    return per_wave


def healthy_needed(dep: Deployment, wave: int, failed: int) -> int:
    """Healthy devices a wave needs: `success_ratio` of those of it that have not failed
    (failures are judged by the halt rule instead; tolerated ones must not block a wave)."""
    return math.ceil(dep.success_ratio * (dep.wave_sizes[wave] - failed) - 1e-9)


def release_wave(session: so.Session, dep: Deployment, wave: int, now: datetime) -> None:
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
        DeviceChannel.state != STATE_PROBATION,
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

    The caller must hold the deployment's row lock (`get(..., lock=True)`). Raises nothing
    of its own.
    """
    if dep.state != ACTIVE:
        return
    while True:
        per_wave = wave_counts(session, dep)
        released_waves = range(dep.current_wave + 1)
        released = sum(dep.wave_sizes[w] for w in released_waves)
        failed = sum(per_wave[w][FAILED] for w in released_waves)
        reason = _halt_reason(session, dep, failed, released)
        if reason is not None:
            dep.state, dep.reason, dep.updated_at = HALTED, reason, now
            return
        wave = dep.current_wave
        if per_wave[wave][SUCCEEDED] < healthy_needed(dep, wave, per_wave[wave][FAILED]):
            return
        if wave == len(dep.wave_sizes) - 1:
            dep.state, dep.updated_at = COMPLETED, now
            return
        dep.current_wave, dep.updated_at = wave + 1, now
        release_wave(session, dep, wave + 1, now)
