"""A release's variants at install: the default variant must pass its smoke test; any other
that fails is dropped (kept out of serving on this device, and reported)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from satchel.bundles.manifest import Manifest

READY = "ready"
DROPPED = "dropped"  # failed its smoke test on this device at install
DISABLED = "disabled"  # breached the health policy while serving (agent/variants/health.py)


def judge_variants(
    manifest: Manifest, tests: Sequence[dict[str, Any]]
) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The release's failures (the default variant's only) and every variant's state:
    {name: {"state", "reason", "p95_ms", "accuracy_level"}}. `tests` are the smoke-test
    results of `agent.install.smoketest.run_all`, one per model."""
    assert manifest.variants is not None
    by_model = {t.get("model"): t for t in tests}
    failures: list[str] = []
    states: dict[str, Any] = {}
    for variant in manifest.variants.variants:
        test = by_model.get(variant.model) or {"failures": ["not smoke-tested"]}
        reasons = list(test.get("failures") or [])
        latency = test.get("latency_ms") or {}
        p95 = latency.get("p95")
        states[variant.name] = {
            "state": DROPPED if reasons else READY,
            "reason": "; ".join(reasons),
            "p95_ms": round(p95, 3) if isinstance(p95, float) else None,
            "accuracy_level": variant.accuracy_level,
            "default": variant.name == manifest.variants.default,
        }
        if reasons and variant.name == manifest.variants.default:
            failures += [f"{variant.model}: {reason}" for reason in reasons]
    return tuple(failures), states
