"""Agreement between a model's outputs and reference outputs, and the smoke-test verdict.

Shared by `satchel bundle build` (shipped model vs float reference, on the build host) and the
agent's smoke test (model on the device vs the reference outputs in the bundle), so both
sides judge with the same arithmetic.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bundles.manifest import SmokeTest


@dataclass(frozen=True)
class Agreement:
    samples: int  # number of samples compared (first axis)
    max_abs_error: float  # largest |output - reference| over all finite values
    min_cosine: float  # smallest per-sample cosine similarity
    mean_cosine: float  # mean per-sample cosine similarity
    top1_agreement: (
        float | None
    )  # fraction of samples with the same argmax; None if not a classifier
    nonfinite: int  # count of NaN/Inf values in the outputs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _per_sample(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 0:
        return a.reshape(1, 1)
    return a.reshape(a.shape[0], -1)


def _cosines(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
    num = np.sum(out * ref, axis=1)
    den = np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1)
    both_zero = (np.linalg.norm(out, axis=1) == 0) & (np.linalg.norm(ref, axis=1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    return np.where(both_zero, 1.0, cos)


def compare_outputs(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> Agreement:
    """Compare outputs with references, output by output (same names, same shapes).

    Raises ValueError if names or shapes differ.
    """
    if set(outputs) != set(reference):
        raise ValueError(
            f"outputs {sorted(outputs)} do not match reference outputs {sorted(reference)}"
        )
    max_abs, min_cos, cos_all, nonfinite = 0.0, 1.0, [], 0
    top1: list[float] = []
    samples = 0
    for name in sorted(outputs):
        out, ref = _per_sample(outputs[name]), _per_sample(reference[name])
        if out.shape != ref.shape:
            raise ValueError(f"output {name!r} has shape {out.shape}, reference {ref.shape}")
        samples = max(samples, out.shape[0])
        finite = np.isfinite(out)
        nonfinite += int(out.size - np.count_nonzero(finite))
        if np.any(finite):
            max_abs = max(max_abs, float(np.max(np.abs(np.where(finite, out - ref, 0.0)))))
        cos = _cosines(np.where(finite, out, 0.0), ref)
        cos = np.where(np.all(finite, axis=1), cos, -1.0)
        min_cos = min(min_cos, float(np.min(cos)) if cos.size else 1.0)
        cos_all.extend(cos.tolist())
        if out.shape[1] > 1:
            top1.append(float(np.mean(np.argmax(out, axis=1) == np.argmax(ref, axis=1))))
    return Agreement(
        samples=samples,
        max_abs_error=max_abs,
        min_cosine=min_cos,
        mean_cosine=float(np.mean(cos_all)) if cos_all else 1.0,
        top1_agreement=min(top1) if top1 else None,
        nonfinite=nonfinite,
    )


def accuracy_failures(agreement: Agreement, test: SmokeTest) -> list[str]:
    """One-line reasons the agreement breaks the smoke test's thresholds (empty if none)."""
    reasons: list[str] = []
    if agreement.nonfinite and not test.allow_nonfinite:
        reasons.append(f"outputs contain {agreement.nonfinite} NaN/Inf value(s)")
    if test.max_abs_error is not None and agreement.max_abs_error > test.max_abs_error:
        reasons.append(
            f"max abs error {agreement.max_abs_error:.4g} > allowed {test.max_abs_error:.4g}"
        )
    if test.min_cosine is not None and agreement.min_cosine < test.min_cosine:
        reasons.append(
            f"cosine similarity {agreement.min_cosine:.4f} < required {test.min_cosine:.4f}"
        )
    if (
        test.min_top1_agreement is not None
        and agreement.top1_agreement is not None
        and agreement.top1_agreement < test.min_top1_agreement
    ):
        reasons.append(
            f"top-1 agreement {agreement.top1_agreement:.1%} < required "
            f"{test.min_top1_agreement:.1%}"
        )
    return reasons


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of `values`, nearest-rank; 0.0 for an empty list."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, int(np.ceil(q / 100.0 * len(ordered))))
    return float(ordered[rank - 1])
