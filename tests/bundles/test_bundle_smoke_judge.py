"""The compiled smoke-test judge (`satchel.bundles.judge.SmokeJudge`) that the shadow stage
runs per field request says "passes" exactly when the full comparison of the smoke test
(`compare_outputs` + `accuracy_failures`) finds no breach, on every output kind, dtype and
NaN/Inf, with thresholds set at, just above and just below each measured figure; and when
it fails it reports the full comparison's figures."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from satchel.bundles.judge import SmokeJudge
from satchel.bundles.manifest import OutputCheck, SmokeTest
from satchel.bundles.smoke import (
    ROBUST_MIN_VALUES,
    Agreement,
    OutputAgreement,
    accuracy_failures,
    compare_outputs,
)

TRIALS = 150


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _near_tie(g: np.random.Generator) -> np.ndarray:
    """Class scores whose runner-up is within about the tie share (0.1% of the range) of the
    top class, so a candidate that swaps them agrees or not by a hair."""
    rows = g.standard_normal((int(g.integers(1, 6)), 1, 6))
    span = np.abs(rows).max()
    order = np.argsort(rows, axis=-1)
    best = np.take_along_axis(rows, order[..., -1:], axis=-1)
    second = best - g.uniform(0, 2e-3, best.shape) * span
    np.put_along_axis(rows, order[..., -2:-1], second, axis=-1)
    return rows


# Each maker: (rng) -> (kind, reference); the candidate is made from it by _perturb.
Maker = Callable[[np.random.Generator], tuple[str, np.ndarray]]
MAKERS: dict[str, Maker] = {
    "score": lambda g: ("score", g.standard_normal((g.integers(1, 5), 1)) * 3),
    "probability": lambda g: ("score", g.uniform(0, 1, (g.integers(1, 5), 1, 1))),
    "classes_top1": lambda g: ("classes", _softmax(g.standard_normal((g.integers(1, 6), 4)))),
    "classes_topk_logits": lambda g: ("classes", g.standard_normal((g.integers(1, 6), 1, 40))),
    "classes_near_ties": lambda g: ("classes", _near_tie(g)),
    "boxes": lambda g: ("tensor", g.uniform(0, 320, (g.integers(1, 3), 1, 50, 4))),
    "mask": lambda g: ("tensor", g.uniform(0, 1, (1, 1, 2, 80, 80))),  # robust 99th pct
    "embedding": lambda g: ("embedding", g.standard_normal((g.integers(1, 5), 64))),
    "embedding_zero_row": lambda g: ("embedding", np.concatenate(
        [g.standard_normal((2, 32)), np.zeros((1, 32))])),
    "fp16_classes": lambda g: ("classes", _softmax(g.standard_normal((3, 12))).astype(
        np.float16)),
    "int8_tensor": lambda g: ("tensor", g.integers(-128, 128, (2, 30)).astype(np.int8)),
    "uint8_mask": lambda g: ("tensor", g.integers(0, 256, (1, 120, 100)).astype(np.uint8)),
    "labels": lambda g: ("labels", g.integers(0, 6, (g.integers(1, 8), 3))),
}


def _perturb(g: np.random.Generator, ref: np.ndarray) -> np.ndarray:
    """A candidate near `ref`: noise of a random size, sometimes NaN/Inf, in ref's dtype."""
    scale = 10.0 ** g.uniform(-6, 0) * max(1.0, float(np.abs(ref).max(initial=0.0)))
    if np.issubdtype(ref.dtype, np.integer):
        out = ref.astype(np.int64) + np.where(g.random(ref.shape) < g.uniform(0, 0.3),
                                              g.integers(-2, 3, ref.shape), 0)
        info = np.iinfo(ref.dtype)
        return np.clip(out, info.min, info.max).astype(ref.dtype)
    out = ref.astype(np.float64) + g.normal(0, scale, ref.shape) * (g.random(ref.shape) < 0.5)
    if g.random() < 0.15:
        out.flat[g.integers(0, out.size)] = g.choice([np.nan, np.inf, -np.inf])
    return out.astype(ref.dtype)


def _spoil_reference(g: np.random.Generator, ref: np.ndarray) -> np.ndarray:
    if np.issubdtype(ref.dtype, np.floating) and g.random() < 0.1:
        ref = ref.copy()
        ref.flat[g.integers(0, ref.size)] = np.nan
    return ref


def _near(g: np.random.Generator, figure: float | None, fallback: float) -> float:
    """A threshold at, a hair either side of, or a little off the measured figure."""
    x = fallback if figure is None or not np.isfinite(figure) else figure
    choice = g.integers(0, 5)
    if choice == 0:
        return float(x)
    if choice == 1:
        return float(np.nextafter(x, np.inf))
    if choice == 2:
        return float(np.nextafter(x, -np.inf))
    return float(x * (1 + g.choice([-1, 1]) * 10.0 ** g.uniform(-9, -1)))


def _maybe(g: np.random.Generator, value: float) -> float | None:
    return value if g.random() < 0.6 else None


def _check(g: np.random.Generator, o: OutputAgreement) -> OutputCheck:
    return OutputCheck(
        o.name, o.kind,
        max_abs_error=_maybe(g, _near(g, o.max_abs_error, 0.1)),
        max_rel_error=_maybe(g, _near(g, o.rel_error, 0.1)),
        min_sqnr_db=_maybe(g, _near(g, o.sqnr_db, 20.0)),
        min_cosine=_maybe(g, _near(g, o.min_cosine, 0.99)),
        min_top1_agreement=_maybe(g, _near(g, o.top1_agreement, 0.9)),
    )


def _test_near(g: np.random.Generator, agreement: Agreement) -> SmokeTest:
    """A smoke test whose thresholds sit on the figures: per output, or a legacy one."""
    allow = bool(g.random() < 0.3)
    if g.random() < 0.25:  # a bundle built before per-output checks
        return SmokeTest(
            "main", "i.npz", "r.npz", allow_nonfinite=allow,
            max_abs_error=_maybe(g, _near(g, agreement.max_abs_error, 0.1)),
            min_cosine=_maybe(g, _near(g, agreement.min_cosine, 0.99)),
            min_top1_agreement=_maybe(g, _near(g, agreement.top1_agreement, 0.9)),
        )
    checks = tuple(_check(g, o) for o in agreement.outputs if g.random() < 0.9)
    return SmokeTest("main", "i.npz", "r.npz", allow_nonfinite=allow, outputs=checks)


def _agree(g: np.random.Generator, outputs: dict[str, np.ndarray],
           reference: dict[str, np.ndarray], kinds: dict[str, str]) -> tuple[int, int]:
    """Judge one pair both ways under a few tests near its figures: (passed, failed)."""
    agreement = compare_outputs(outputs, reference, kinds)
    passed = failed = 0
    for _ in range(4):
        test = _test_near(g, agreement)
        full = accuracy_failures(agreement, test)
        judge = SmokeJudge(test, kinds)
        assert judge.passes(outputs, reference) == (not full), (test, agreement)
        assert judge.failures(outputs, reference) == full
        passed += not full
        failed += bool(full)
    return passed, failed


@pytest.mark.parametrize("case", sorted(MAKERS))
def test_the_fast_judge_passes_exactly_what_the_full_comparison_passes(case: str) -> None:
    g = np.random.default_rng(sorted(MAKERS).index(case))
    passed = failed = 0
    for _ in range(TRIALS):
        kind, ref = MAKERS[case](g)
        out = _perturb(g, ref)
        p, f = _agree(g, {"y": out}, {"y": _spoil_reference(g, ref)}, {"y": kind})
        passed, failed = passed + p, failed + f
    assert passed > TRIALS // 4 and failed > TRIALS // 4  # both sides of the thresholds


def test_the_fast_judge_agrees_on_releases_with_several_outputs() -> None:
    g = np.random.default_rng(99)
    names = sorted(MAKERS)
    for _ in range(TRIALS):
        picked = g.choice(names, size=int(g.integers(2, 4)), replace=False)
        outputs, reference, kinds = {}, {}, {}
        for i, case in enumerate(picked):
            kind, ref = MAKERS[case](g)
            outputs[f"o{i}"], reference[f"o{i}"], kinds[f"o{i}"] = _perturb(g, ref), ref, kind
        _agree(g, outputs, reference, kinds)


def test_a_mask_of_many_values_is_judged_on_its_99th_percentile_by_both() -> None:
    ref = np.random.default_rng(1).uniform(0, 1, (1, 1, 128, 128))
    out = ref.copy()
    out.flat[:50] += 0.9  # boundary pixels: the largest error, under 1% of the values
    assert ref.size >= ROBUST_MIN_VALUES
    test = SmokeTest("main", "i.npz", "r.npz", outputs=(OutputCheck("m", "tensor",
                                                                    max_rel_error=0.01),))
    judge = SmokeJudge(test, {"m": "tensor"})

    assert judge.passes({"m": out}, {"m": ref})
    out.flat[:400] += 0.9  # now over 1% of the values
    assert not judge.passes({"m": out}, {"m": ref})


def test_a_failing_pair_is_reported_with_every_figure_of_the_full_comparison() -> None:
    ref = {"probs": _softmax(np.random.default_rng(2).standard_normal((1, 10)))}
    bad = {"probs": ref["probs"][:, ::-1].copy()}
    test = SmokeTest("main", "i.npz", "r.npz", max_abs_error=1e-3)

    reasons = SmokeJudge(test, {"probs": "classes"}).failures(bad, ref)

    assert reasons == accuracy_failures(compare_outputs(bad, ref, {"probs": "classes"}), test)
    assert reasons and "max abs error" in reasons[0] and "> allowed 0.001" in reasons[0]


def test_nan_in_a_candidate_fails_unless_the_test_allows_it() -> None:
    ref = {"e": np.ones((2, 16))}
    out = {"e": np.ones((2, 16))}
    out["e"][1, 3] = np.nan
    strict = SmokeTest("main", "i.npz", "r.npz", outputs=())
    lenient = SmokeTest("main", "i.npz", "r.npz", outputs=(), allow_nonfinite=True)

    assert "NaN/Inf" in SmokeJudge(strict, {"e": "embedding"}).failures(out, ref)[0]
    assert SmokeJudge(lenient, {"e": "embedding"}).failures(out, ref) == []


@pytest.mark.parametrize(
    ("outputs", "reference"),
    [
        ({"a": np.zeros((1, 4))}, {"b": np.zeros((1, 4))}),  # another output
        ({"a": np.zeros((1, 4)), "b": np.zeros(1)}, {"a": np.zeros((1, 4))}),  # one more
        ({"a": np.zeros((1, 5))}, {"a": np.zeros((1, 4))}),  # another shape
    ],
)
def test_outputs_that_do_not_match_are_refused_with_the_full_comparisons_error(
    outputs, reference
) -> None:
    for test in (None, SmokeTest("main", "i.npz", "r.npz", max_abs_error=1.0)):
        judge = SmokeJudge(test, {"a": "tensor"})
        assert not judge.passes(outputs, reference)
        with pytest.raises(ValueError, match="do not match|per sample"):
            judge.failures(outputs, reference)


def test_a_release_without_smoke_test_passes_any_pair_of_matching_outputs() -> None:
    judge = SmokeJudge(None, {"a": "classes"})
    assert judge.failures({"a": np.full((1, 3), np.nan)}, {"a": np.zeros((1, 3))}) == []


def test_a_legacy_reference_of_concatenated_rows_is_judged_in_the_outputs_shape() -> None:
    ref = np.random.default_rng(3).standard_normal((4, 8))
    test = SmokeTest("main", "i.npz", "r.npz", max_abs_error=1e-6)
    judge = SmokeJudge(test, {"x": "tensor"})
    assert judge.passes({"x": ref.reshape(4, 1, 8)}, {"x": ref})
