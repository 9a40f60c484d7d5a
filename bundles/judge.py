"""The smoke test's verdict, compiled once per release for judging many pairs of outputs.

The shadow stage compares every copied field request's outputs (the candidate's against the
active release's) with the smoke test's comparison (`bundles.smoke`). Measuring every figure
of every output costs far more than most thresholds need: a legacy bundle that judges only
the largest absolute error does not need a cosine, a top-5 or an SQNR. `SmokeJudge` is made
once from the smoke test's thresholds and the outputs' kinds, and per pair computes only
the figures a threshold in force reads, with the very helpers `measure_output` uses (so the
same arithmetic on the same values gives the same figures, bit for bit), and stops at the
first breach. When a pair fails, `failures` runs the full comparison (`compare_outputs` and
`accuracy_failures`) so the reasons carry every figure, as the smoke test reports them; the
full comparison decides then, the fast one only ever says "passes".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from satchel.bundles.manifest import OUTPUT_KINDS, OutputCheck, SmokeTest
from satchel.bundles.smoke import (
    _TIE_SHARE,
    _cosines,
    _judged_error,
    _legacy_shape,
    _range,
    _rows,
    _sqnr_db,
    _top1_share,
    accuracy_failures,
    compare_outputs,
    legacy_check,
)


@dataclass(frozen=True)
class _Plan:
    """What one output needs: its kind, and the thresholds in force (None: not judged)."""

    name: str
    kind: str
    nonfinite_fails: bool
    max_abs_error: float | None
    max_rel_error: float | None
    min_sqnr_db: float | None
    min_cosine: float | None  # None also where the kind has no cosine
    min_top1: float | None  # None also where the kind has no top-1

    @property
    def needs_values(self) -> bool:
        return any(t is not None for t in (self.max_abs_error, self.max_rel_error,
                                           self.min_sqnr_db, self.min_cosine, self.min_top1))


def _plan(name: str, kind: str, check: OutputCheck | None, allow_nonfinite: bool) -> _Plan:
    nonfinite_fails = not allow_nonfinite and kind != "labels"  # labels count no NaN/Inf
    if check is None:
        return _Plan(name, kind, nonfinite_fails, None, None, None, None, None)
    vector = kind in ("embedding", "classes", "tensor")
    return _Plan(
        name, kind, nonfinite_fails,
        check.max_abs_error, check.max_rel_error,
        check.min_sqnr_db if kind != "labels" else None,
        check.min_cosine if vector else None,
        check.min_top1_agreement if kind in ("classes", "labels") else None,
    )


class SmokeJudge:
    """The smoke test `test` (None: a release without one, judged on names and shapes only)
    over outputs of the given kinds, ready to judge pairs of outputs.

    `kinds` names the kind of every output the pairs hold; a pair with another output, an
    unknown kind or a shape that differs is left to the full comparison, which says why.
    """

    def __init__(self, test: SmokeTest | None, kinds: Mapping[str, str]) -> None:
        self.test = test
        self.kinds = dict(kinds)
        self._names = frozenset(self.kinds)
        plans: list[_Plan] = []
        if test is not None and all(k in OUTPUT_KINDS for k in self.kinds.values()):
            by_name = {c.name: c for c in test.outputs}
            for name, kind in sorted(self.kinds.items()):
                check = by_name.get(name) if test.outputs else legacy_check(test, name, kind)
                plans.append(_plan(name, kind, check, test.allow_nonfinite))
        self._plans = tuple(plans)
        self._fast = test is None or len(plans) == len(self.kinds)

    def passes(self, outputs: Mapping[str, np.ndarray],
               reference: Mapping[str, np.ndarray]) -> bool:
        """True when the full comparison would find no breach; False when it would find one
        or raise (the full comparison then says why). Never raises."""
        if not self._fast or outputs.keys() != self._names or reference.keys() != self._names:
            return False
        try:
            if self.test is None:
                return all(_same_shape(outputs[n], reference[n]) for n in self._names)
            return all(_passes(p, outputs[p.name], reference[p.name]) for p in self._plans)
        except (ValueError, TypeError):
            return False

    def failures(self, outputs: Mapping[str, np.ndarray],
                 reference: Mapping[str, np.ndarray]) -> list[str]:
        """One-line reasons the pair breaks the smoke test, with every figure (empty if none):
        the fast judgement when it passes, else the full comparison. Raises ValueError if
        names or shapes differ."""
        if self.passes(outputs, reference):
            return []
        agreement = compare_outputs(outputs, reference, self.kinds)
        return accuracy_failures(agreement, self.test) if self.test is not None else []


def _same_shape(out: np.ndarray, ref: np.ndarray) -> bool:
    o = np.asarray(out)
    return _legacy_shape(o, np.asarray(ref)).shape == o.shape


def _passes(p: _Plan, out: np.ndarray, ref: np.ndarray) -> bool:
    """`measure_output` and `judge` on one output, computing only what `p` reads."""
    out_a = np.asarray(out)
    ref_a = _legacy_shape(out_a, np.asarray(ref))
    if out_a.shape != ref_a.shape:
        return False
    if p.kind == "labels":
        return _labels_pass(p, out_a, ref_a)
    o = out_a.astype(np.float64)
    finite_o = np.isfinite(o)
    if p.nonfinite_fails and not finite_o.all():
        return False
    if not p.needs_values:
        return True
    r = ref_a.astype(np.float64)
    ok = finite_o & np.isfinite(r)
    diff = np.abs(np.where(ok, o - r, 0.0))
    if p.max_abs_error is not None and float(diff.max(initial=0.0)) > p.max_abs_error:
        return False
    scale = _range(r) if p.max_rel_error is not None or p.min_top1 is not None else 1.0
    if p.max_rel_error is not None and _judged_error(diff, ok) / scale > p.max_rel_error:
        return False
    if p.min_sqnr_db is not None:
        sqnr = _sqnr_db(o, r, ok)
        if sqnr is not None and sqnr < p.min_sqnr_db:
            return False
    if p.min_cosine is not None:
        feeds = int(o.shape[0]) if o.ndim else 1
        cos = (_cosines(o.reshape(feeds, -1), r.reshape(feeds, -1)) if p.kind == "tensor"
               else _cosines(o, r))
        if cos is not None and float(cos.min()) < p.min_cosine:
            return False
    if p.min_top1 is not None:
        rows_o, rows_r = _rows(o), _rows(r)
        finite = np.all(np.isfinite(rows_o), axis=1)
        rows_o = np.where(np.isfinite(rows_o), rows_o, -np.inf)
        if _top1_share(rows_o, rows_r, finite, _TIE_SHARE * scale) < p.min_top1:
            return False
    return True


def _labels_pass(p: _Plan, out_a: np.ndarray, ref_a: np.ndarray) -> bool:
    feeds = int(out_a.shape[0]) if out_a.ndim else 1
    if p.max_abs_error is not None or p.max_rel_error is not None:
        diff = np.abs(out_a.astype(np.float64) - ref_a.astype(np.float64))
        max_abs = float(diff.max(initial=0.0))
        if p.max_abs_error is not None and max_abs > p.max_abs_error:
            return False
        if p.max_rel_error is not None and max_abs > p.max_rel_error:  # its range is 1
            return False
    if p.min_top1 is not None:
        equal = out_a.reshape(feeds, -1) == ref_a.reshape(feeds, -1)
        share = float(np.mean(equal)) if equal.size else 1.0
        if share < p.min_top1:
            return False
    return True
