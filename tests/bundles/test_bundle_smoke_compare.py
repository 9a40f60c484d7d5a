"""The comparison both gates share (`satchel.bundles.smoke`): each output judged by what it is,
figures that cannot be fooled, references near zero without artefacts."""

from __future__ import annotations

import numpy as np
import pytest

from satchel.bundles.smoke import (
    ROBUST_MIN_VALUES,
    compare_outputs,
    default_check,
    detect_kind,
    judge,
)

RNG = np.random.default_rng(0)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize(
    ("name", "reference", "declared", "kind"),
    [
        ("output", np.full((8, 1, 1), 0.03), (-1, 1), "score"),  # a VAD probability
        ("label", np.arange(8).reshape(8, 1), (1,), "labels"),
        ("logits", RNG.standard_normal((8, 1, 10)), (-1, 10), "classes"),
        ("Identity", _softmax(RNG.standard_normal((8, 1, 214))), (-1, 214), "classes"),
        ("Identity", RNG.uniform(0, 256, (8, 1, 195)), (1, 195), "tensor"),  # landmarks
        ("classificators", RNG.standard_normal((4, 1, 896, 1)), (1, 896, 1), "tensor"),
        ("conv2d_19", RNG.standard_normal((8, 1, 1, 1, 96)), (-1, 1, 1, 96), "embedding"),
        ("out", (lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True))(
            RNG.standard_normal((8, 1, 64))), (1, 64), "embedding"),
        ("boxes", RNG.uniform(0, 320, (8, 1, 16, 6)), (1, 16, 6), "tensor"),
        ("mask", RNG.uniform(0, 1, (4, 1, 2, 8, 8)), (1, 2, 8, 8), "tensor"),
        ("stateN", RNG.standard_normal((8, 2, 1, 128)), (2, -1, 128), "tensor"),
    ],
)
def test_each_output_kind_is_recognised_from_shape_values_and_name(
    name, reference, declared, kind
) -> None:
    assert detect_kind(name, reference, declared) == kind


def test_a_moved_probability_is_refused_though_its_cosine_is_perfect() -> None:
    reference = {"p": np.full((8, 1, 1), 0.06)}
    moved = {"p": np.full((8, 1, 1), 0.77)}

    agreement = compare_outputs(moved, reference)
    reasons = judge(agreement, [default_check("p", "score", with_reference=True)])

    assert agreement.output("p").kind == "score"
    assert reasons and "max error 0.71 is 0.71 of its range 1 > allowed 0.05" in reasons[0]


def test_a_near_zero_reference_leaves_no_artefact() -> None:
    reference = {"logits": np.zeros((4, 1, 10))}
    close = {"logits": np.full((4, 1, 10), 1e-5)}

    agreement = compare_outputs(close, reference, {"logits": "classes"})
    output = agreement.output("logits")

    assert output.sqnr_db is None and output.min_cosine is None  # no signal to measure
    assert output.rel_error < 0.02
    assert judge(agreement, [default_check("logits", "classes", with_reference=False)]) == []


def test_top1_is_judged_only_on_class_scores_and_boxes_by_their_sqnr() -> None:
    boxes = RNG.uniform(0, 320, (6, 1, 16, 6))
    off = boxes * 1.5

    agreement = compare_outputs({"boxes": off}, {"boxes": boxes}, declared={"boxes": (1, 16, 6)})
    output = agreement.output("boxes")

    assert output.kind == "tensor" and output.top1_agreement is None
    assert 5.5 < output.sqnr_db < 6.5  # 50% off is 6 dB
    assert judge(agreement, [default_check("boxes", "tensor", with_reference=True)])


def test_a_few_stray_values_of_a_large_map_do_not_refuse_it_but_are_reported() -> None:
    reference = RNG.uniform(0, 1, (4, 1, 1, 64, 64))  # 16,384 values: judged robustly
    shipped = reference + RNG.normal(0, 0.003, reference.shape)
    shipped.flat[123] = 1.0 - reference.flat[123]  # one pixel flips
    assert reference.size >= ROBUST_MIN_VALUES

    agreement = compare_outputs({"map": shipped}, {"map": reference})
    output = agreement.output("map")

    assert output.worst_rel_error > 0.3 and output.rel_error < 0.02
    assert judge(agreement, [default_check("map", "tensor", with_reference=True)]) == []


def test_a_broken_region_of_a_large_map_is_still_refused() -> None:
    reference = RNG.uniform(0, 1, (4, 1, 1, 64, 64))
    shipped = reference.copy()
    shipped[:, :, :, :8, :] = 1.0 - shipped[:, :, :, :8, :]  # an eighth of the map is wrong

    agreement = compare_outputs({"map": shipped}, {"map": reference})

    assert judge(agreement, [default_check("map", "tensor", with_reference=True)])


def test_nan_in_any_output_is_reported_with_its_count() -> None:
    reference = {"logits": RNG.standard_normal((4, 1, 10))}
    shipped = {"logits": reference["logits"].copy()}
    shipped["logits"][0, 0, 3] = np.nan

    reasons = judge(compare_outputs(shipped, reference), [])

    assert reasons == ["output 'logits' contains 1 NaN/Inf value(s)"]


@pytest.mark.parametrize("size", [1, 2, 9_999, 10_000, 10_001, 123_457])
def test_robust_error_is_numpys_linear_99th_percentile(size: int) -> None:
    # computed by a partial sort, which spares the device numpy.ma's import (issue 14)
    from satchel.bundles.smoke import _judged_error

    diff = np.abs(np.random.default_rng(size).standard_normal(size)).astype(np.float32)
    ok = np.ones(size, dtype=bool)
    expected = float(np.quantile(diff, 0.99)) if size >= ROBUST_MIN_VALUES else float(diff.max())
    assert _judged_error(diff, ok) == pytest.approx(expected, rel=1e-6)
