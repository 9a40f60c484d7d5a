"""Staged activation on the dashboard (SPEC "Staged activation"): a channel's candidate
release in its shadow stage or ramp as the device last reported it (its agreement with the
active release, its ramp step), per device and summed up per deployment.

The figures come from the device's last status (`devices.status`), checked at the check-in
(`checkin/parse.py`): numbers or null, so this module only picks and labels them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
import sqlalchemy.orm as so

from satchel.manager.models import Device

SHADOW, RAMP = "shadow", "ramp"
FAILED_IN = {SHADOW: "shadow failed", RAMP: "ramp failed"}  # how a target's reason begins


def _num(d: Mapping[str, Any], key: str) -> float | None:
    value = d.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _count(d: Mapping[str, Any], key: str) -> int:
    value = _num(d, key)
    return int(value) if value is not None else 0


@dataclass(frozen=True)
class CandidateView:
    """A release beside the active one, not yet answering every request."""

    version: str
    sequence: int
    stage: str  # "shadow" | "ramp"
    started_at: str | None
    compared: int  # shadow: requests compared with the active release
    needed: int  # shadow: compared requests the policy needs
    agreement: float | None  # shadow: share of compared requests that agreed
    agreement_needed: float | None
    nonfinite: int
    errors: int
    p95_ms: float | None
    active_p95_ms: float | None
    ramp_steps: tuple[float, ...]
    ramp_step: int  # index of the current step
    ramp_percent: float | None  # share of requests it answers now
    client_answers: int  # requests whose answer a client received from it

    @property
    def shadow_progress(self) -> float | None:
        return min(1.0, self.compared / self.needed) if self.needed else None

    @property
    def line(self) -> str:
        """One line of what it is doing, for tables."""
        if self.stage == RAMP:
            steps = len(self.ramp_steps)
            pct = f"{self.ramp_percent:g}%" if self.ramp_percent is not None else "?"
            of = f" (step {self.ramp_step + 1} of {steps})" if steps else ""
            return f"ramp at {pct}{of}, {self.client_answers} answers"
        agree = f"{self.agreement:.1%}" if self.agreement is not None else "-"
        return f"shadow: {agree} agree, {self.compared} of {self.needed or '?'} compared"


def candidate_view(status: Mapping[str, Any] | None, channel: str) -> CandidateView | None:
    """The channel's candidate in a device's last status, or None."""
    reported = ((status or {}).get("channels") or {}).get(channel)
    if not isinstance(reported, dict):
        return None
    cand = reported.get("candidate")
    if not isinstance(cand, dict) or not isinstance(cand.get("sequence"), int):
        return None
    shadow: Mapping[str, Any] = _section(cand, "shadow")
    ramp: Mapping[str, Any] = _section(cand, "ramp")
    steps = ramp.get("steps")
    stage = cand.get("stage") or reported.get("stage") or SHADOW
    return CandidateView(
        version=str(cand.get("version") or ""),
        sequence=cand["sequence"],
        stage=RAMP if stage == RAMP else SHADOW,
        started_at=cand.get("started_at") if isinstance(cand.get("started_at"), str) else None,
        compared=_count(shadow, "compared"),
        needed=_needed_count(shadow),
        agreement=_num(shadow, "agreement"),
        agreement_needed=_needed_share(shadow),
        nonfinite=_count(shadow, "nonfinite"),
        errors=_count(shadow, "errors") + _count(ramp, "errors"),
        p95_ms=_num(shadow, "p95_ms"),
        active_p95_ms=_num(shadow, "active_p95_ms"),
        ramp_steps=tuple(float(s) for s in steps) if isinstance(steps, list) else (),
        ramp_step=_count(ramp, "step"),
        ramp_percent=_num(ramp, "percent"),
        client_answers=_count(cand, "client_answers"),
    )


def _section(cand: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    found = cand.get(name)
    return found if isinstance(found, dict) else {}


def _needed_count(shadow: Mapping[str, Any]) -> int:
    """The compared requests the policy needs (the agent's "requests"); 0 when unknown."""
    return _count(shadow, "requests")


def _needed_share(shadow: Mapping[str, Any]) -> float | None:
    """The agreement the policy needs, when the device says ("needed" as a share <= 1)."""
    for key in ("agreement_needed", "needed"):
        value = _num(shadow, key)
        if value is not None and 0 < value <= 1:
            return value
    return None


@dataclass
class DeploymentStages:
    """How a deployment's devices stand in staged activation."""

    in_shadow: int = 0
    in_ramp: int = 0
    failed_in_shadow: int = 0
    failed_in_ramp: int = 0
    ramp_percents: dict[str, float] | None = None  # device -> share it answers now
    lines: dict[str, str] | None = None  # device -> its candidate's line

    @property
    def any(self) -> bool:
        return bool(self.in_shadow or self.in_ramp or self.failed_in_shadow or self.failed_in_ramp)


def deployment_stages(
    session: so.Session, channel: str, sequence: int, targets: Iterable[Mapping[str, Any]]
) -> DeploymentStages:
    """The devices of a deployment (its `targets`, as `deployments.status` gives them) whose
    candidate on `channel` is this bundle's `sequence`, and those refused in shadow or ramp."""
    out = DeploymentStages(ramp_percents={}, lines={})
    wanted = []
    for t in targets:
        reason = t.get("reason") or ""
        if t.get("state") == "failed" and reason.startswith(FAILED_IN[SHADOW]):
            out.failed_in_shadow += 1
        elif t.get("state") == "failed" and reason.startswith(FAILED_IN[RAMP]):
            out.failed_in_ramp += 1
        else:
            wanted.append(t["device_id"])
    for chunk in range(0, len(wanted), 1000):
        rows = session.execute(
            sa.select(Device.id, Device.status).where(Device.id.in_(wanted[chunk:chunk + 1000]))
        )
        for device_id, status in rows:
            cand = candidate_view(status, channel)
            if cand is None or cand.sequence != sequence:
                continue
            out.lines[device_id] = cand.line  # type: ignore[index]
            if cand.stage == RAMP:
                out.in_ramp += 1
                if cand.ramp_percent is not None:
                    out.ramp_percents[device_id] = cand.ramp_percent  # type: ignore[index]
            else:
                out.in_shadow += 1
    return out
