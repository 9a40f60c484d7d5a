"""The health-policy judge: one verdict from a manifest's health policy and plain figures.

The device judges a release on probation with it (a breach rolls the release back); the
manager judges the health summary a device reports with it (a breach holds the release's
target, and so its wave). Both sides call this one function with the same figures, so a
release the device keeps cannot block a wave for a reason the device never saw, and both
word a breach the same way. Pure: no I/O, no clock, no numpy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from satchel.bundles.manifest import HealthPolicy

P95_DECIMALS = 3  # p95 latency is reported and judged rounded to this many decimals of a ms


@dataclass(frozen=True)
class HealthFigures:
    """What a release did since it was activated: the judge's input."""

    inferences: int = 0  # inferences run, failed ones and bad client inputs included
    errors: int = 0  # inferences the runtime failed
    nan: int = 0  # inferences whose outputs held NaN/Inf although every input was finite
    p95_latency_ms: float | None = None  # milliseconds; None without samples
    crash_restarts: int = 0  # service restarts since activation (known to the device only)
    nonfinite_inputs: int = 0  # inferences whose inputs held NaN/Inf: the client's fault, not
    # the model's, so they take no part in the nan rate (counted to be seen, never judged)

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any]) -> HealthFigures:
        """Figures from one channel's health summary as a check-in carries it (`count`,
        `errors`, `nan`, `p95_ms`, optionally `nonfinite_inputs`). Absent or malformed
        counts read as 0 and a malformed p95 as None; never raises."""
        p95 = summary.get("p95_ms")
        if not isinstance(p95, (int, float)) or isinstance(p95, bool):
            p95 = None
        return cls(
            inferences=_count(summary.get("count")),
            errors=_count(summary.get("errors")),
            nan=_count(summary.get("nan")),
            p95_latency_ms=None if p95 is None else float(p95),
            nonfinite_inputs=_count(summary.get("nonfinite_inputs")),
        )

    def to_summary(self) -> dict[str, Any]:
        """The health summary of a check-in (the inverse of `from_summary`)."""
        p95 = self.p95_latency_ms
        return {
            "count": self.inferences,
            "errors": self.errors,
            "nan": self.nan,
            "p95_ms": None if p95 is None else round(p95, P95_DECIMALS),
            "nonfinite_inputs": self.nonfinite_inputs,
        }

    @property
    def error_rate(self) -> float:
        return self.errors / self.inferences if self.inferences else 0.0

    @property
    def nan_rate(self) -> float:
        return self.nan / self.inferences if self.inferences else 0.0


@dataclass(frozen=True)
class Verdict:
    """The judge's answer: every breach found, each one line for a technician."""

    reasons: tuple[str, ...] = ()

    @property
    def breached(self) -> bool:
        return bool(self.reasons)

    @property
    def breach(self) -> str | None:
        """The first breach (the one a rollback reports), or None when there is none."""
        return self.reasons[0] if self.reasons else None


def judge(policy: HealthPolicy, figures: HealthFigures) -> Verdict:
    """Judge `figures` against `policy`. Rates and latency are judged only from
    `policy.min_samples` inferences on; crash restarts always. Raises nothing."""
    reasons = []
    n = figures.inferences
    if n >= policy.min_samples:
        if figures.error_rate > policy.max_error_rate:
            reasons.append(
                f"health: error rate {figures.error_rate:.2f} > {policy.max_error_rate:.2f}"
                f" over {n} inferences"
            )
        if figures.nan_rate > policy.max_nan_rate:
            reasons.append(
                f"health: nan rate {figures.nan_rate:.2f} > {policy.max_nan_rate:.2f}"
                f" over {n} inferences"
            )
        p95, limit = figures.p95_latency_ms, policy.max_p95_latency_ms
        if p95 is not None and limit is not None and p95 > limit:
            reasons.append(f"health: p95 latency {p95:.1f} ms > {limit:.1f} ms over {n} inferences")
    if figures.crash_restarts >= policy.max_crash_restarts:
        reasons.append(
            f"health: crash loop: {figures.crash_restarts} service restarts since activation"
            f" (limit {policy.max_crash_restarts})"
        )
    return Verdict(tuple(reasons))


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
