"""How closely a model's outputs follow reference outputs, output by output, and the verdict.

One implementation for `satchel bundle build` (shipped model vs its float reference, on the
build host), `satchel model quantize`, and the agent's smoke test (the model on the device vs
the reference outputs in the bundle), so every side judges with the same arithmetic.

Arrays carry one sample feed per index of their first axis. Each output is judged by the
metrics that fit its kind (`OUTPUT_KINDS`):

- every output: non-finite values, the largest absolute error, that error relative to the
  reference's range (from zero to its farthest value; 1 for outputs in [0, 1] such as
  probabilities; on outputs of 10,000 values or more the 99th percentile error is judged,
  so that the boundary pixels of a sharp map or low-score candidate boxes do not decide), and the
  signal-to-quantization-noise ratio in dB over all values (the figure quantization tool
  chains report: 20 dB is an error of 10% RMS);
- "classes" (probabilities over the last axis, or an output named as class scores): top-1
  agreement row by row, a tie within 0.1% of the range counted as agreement, and top-5;
- "labels" (integer class ids): the share of equal values;
- "embedding": cosine similarity row by row;
- "score" (one value per feed): judged on absolute and relative error only, as a cosine or
  a signal-to-noise figure of one positive number says nothing.

References near zero leave no artefact: rows whose reference norm is ~0 take no part in
cosine, and a reference with no power has no SQNR (its error relative to range judges it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from satchel.bundles.manifest import OUTPUT_KINDS, OutputCheck, SmokeTest

SQNR_CAP_DB = 200.0  # reported for outputs equal to their reference (no noise at all)
_NEAR_ZERO = 1e-6  # reference values, norms and RMS below this are "zero"
_RANGE_FLOOR = 1e-3  # smallest range errors are relative to, so ~0 references stay sane
ROBUST_MIN_VALUES = 10_000  # outputs this large are judged on their 99th percentile error
_ROBUST_QUANTILE = 0.99
_TIE_SHARE = 1e-3  # classes within this share of the range of the top one count as a tie
_TOPK = 5
_VECTOR_KINDS = ("embedding", "classes", "tensor")

# Words in output names that say what an output holds, when its shape does not.
_EMBEDDING_WORDS = ("embed", "feature", "feat", "descriptor", "encoding", "vector", "pooler")
_CLASS_WORDS = ("logit", "class", "cls", "prob", "score", "label", "pred", "softmax")
_TENSOR_WORDS = (
    "box", "bbox", "loc", "coord", "landmark", "keypoint", "kpt", "point", "mask", "seg",
    "depth", "heatmap", "flow", "state", "hidden", "offset", "anchor", "regress", "delta",
)


@dataclass(frozen=True)
class CheckDefaults:
    """The thresholds `bundle build` and `model quantize` set when the user sets none.

    "reference": the shipped model is compared with another (float) reference model, so it
    may differ by quantization noise. "self": the device runs the very model the build host
    ran (no reference model), so only the device's arithmetic may differ.
    """

    score_rel_error: float = 0.05  # e.g. a probability may move by 0.05
    rel_error: float = 0.15  # other outputs: largest error over the reference's range
    sqnr_db: float = 15.0  # other outputs
    classes_sqnr_db: float = 10.0  # class scores: top-1 judges them first
    embedding_cosine: float = 0.98
    top1: float = 0.90
    self_score_rel_error: float = 0.01
    self_rel_error: float = 0.02
    self_sqnr_db: float = 30.0
    self_embedding_cosine: float = 0.999
    self_top1: float = 0.99


DEFAULT_CHECKS = CheckDefaults()


@dataclass(frozen=True)
class OutputAgreement:
    """Every figure measured on one output (None where the metric does not fit its kind)."""

    name: str
    kind: str
    feeds: int  # sample feeds compared
    values: int  # values compared in all
    max_abs_error: float  # over finite values
    range: float  # what relative error divides by
    rel_error: float  # the judged error over range: the largest, or on outputs of at least
    # ROBUST_MIN_VALUES values the 99th percentile (the boundary pixels of a sharp map or
    # low-score candidate boxes do not decide; SQNR covers the whole output)
    worst_rel_error: float  # max_abs_error / range, every value counted
    sqnr_db: float | None  # None: the reference has no power
    min_cosine: float | None  # row by row; vector kinds only
    mean_cosine: float | None
    top1_agreement: float | None  # classes: same top class; labels: same value
    top5_agreement: float | None  # classes with more than 5 classes
    nonfinite: int  # NaN/Inf values in the outputs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Agreement:
    """The figures of every output, and headline figures over all of them."""

    samples: int  # sample feeds compared
    outputs: tuple[OutputAgreement, ...]

    @property
    def max_abs_error(self) -> float:
        return max((o.max_abs_error for o in self.outputs), default=0.0)

    @property
    def max_rel_error(self) -> float:
        return max((o.rel_error for o in self.outputs), default=0.0)

    @property
    def min_sqnr_db(self) -> float | None:
        values = [o.sqnr_db for o in self.outputs if o.sqnr_db is not None and o.kind != "score"]
        return min(values) if values else None

    @property
    def min_cosine(self) -> float | None:
        values = [o.min_cosine for o in self.outputs if o.min_cosine is not None]
        return min(values) if values else None

    @property
    def mean_cosine(self) -> float | None:
        values = [o.mean_cosine for o in self.outputs if o.mean_cosine is not None]
        return min(values) if values else None

    @property
    def top1_agreement(self) -> float | None:
        values = [o.top1_agreement for o in self.outputs if o.top1_agreement is not None]
        return min(values) if values else None

    @property
    def nonfinite(self) -> int:
        return sum(o.nonfinite for o in self.outputs)

    def output(self, name: str) -> OutputAgreement:
        for o in self.outputs:
            if o.name == name:
                return o
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "max_abs_error": self.max_abs_error,
            "max_rel_error": self.max_rel_error,
            "min_sqnr_db": self.min_sqnr_db,
            "min_cosine": self.min_cosine,
            "mean_cosine": self.mean_cosine,
            "top1_agreement": self.top1_agreement,
            "nonfinite": self.nonfinite,
            "outputs": [o.to_dict() for o in self.outputs],
        }

    def headline(self) -> str:
        """One line: the figures that matter, for a terminal."""
        parts = [f"max abs error {self.max_abs_error:.4g}",
                 f"max rel error {self.max_rel_error:.3g}"]
        if self.min_sqnr_db is not None:
            parts.append(f"min SQNR {self.min_sqnr_db:.1f} dB")
        if self.min_cosine is not None:
            parts.append(f"min cosine {self.min_cosine:.5f}")
        if self.top1_agreement is not None:
            parts.append(f"top-1 {self.top1_agreement:.1%}")
        return ", ".join(parts)


# --- kinds ----------------------------------------------------------------------------------


def detect_kind(name: str, reference: np.ndarray, declared: Sequence[int] | None = None) -> str:
    """The kind of an output, from its name, its reference values and their shape.

    `reference` holds one feed per index of axis 0; `declared` is the output's declared shape,
    whose first axis, when dynamic or 1, is a batch of items rather than part of one item.
    Never raises.
    """
    ref = np.asarray(reference)
    item = tuple(ref.shape[1:])
    if declared is not None and len(declared) == len(item) and item and declared[0] in (-1, 1):
        item = item[1:]
    per_item = int(np.prod(item)) if item else 1
    rank = sum(1 for d in item if d != 1)
    if per_item == 1:
        return "labels" if np.issubdtype(ref.dtype, np.integer) else "score"
    if np.issubdtype(ref.dtype, np.integer) or ref.dtype == np.bool_:
        return "labels" if rank == 1 else "tensor"
    lowered = name.lower()
    if any(word in lowered for word in _TENSOR_WORDS):
        return "tensor"
    vector = rank == 1
    if any(word in lowered for word in _EMBEDDING_WORDS):
        return "embedding" if vector else "tensor"
    if not vector or item[-1] == 1:
        return "tensor"  # a map, or one score per anchor/pixel ([896, 1]): no class axis
    if len(item) >= 2:
        return "embedding"  # a pooled feature map ([1, 1, 96]): a vector compared by direction
    if _unit_rows(ref):
        return "embedding"
    if _probability_rows(ref) or any(word in lowered for word in _CLASS_WORDS):
        return "classes"
    return "tensor"  # a vector of values (landmarks, a regression): judged as numbers


def _unit_rows(ref: np.ndarray) -> bool:
    rows = _rows(np.asarray(ref, np.float64))
    if rows.shape[1] < 8 or not np.all(np.isfinite(rows)):
        return False
    norms = np.linalg.norm(rows, axis=1)
    return bool(np.all(np.abs(norms - 1.0) < 1e-3)) and bool(np.any(rows < 0))


def _probability_rows(ref: np.ndarray) -> bool:
    """Rows of probabilities over the last axis (a softmax): each in [0, 1], summing to 1."""
    rows = _rows(np.asarray(ref, np.float64))
    if rows.shape[1] < 2 or not np.all(np.isfinite(rows)):
        return False
    in_range = bool(np.all(rows >= -1e-6)) and bool(np.all(rows <= 1 + 1e-6))
    return in_range and bool(np.all(np.abs(rows.sum(axis=1) - 1.0) < 1e-2))


def _rows(a: np.ndarray) -> np.ndarray:
    """Rows over the last axis (vector kinds): [rows, last]."""
    if a.ndim <= 1:
        return a.reshape(-1, 1)
    return a.reshape(-1, a.shape[-1])


# --- measuring ------------------------------------------------------------------------------


def _range(ref: np.ndarray) -> float:
    finite = ref[np.isfinite(ref)]
    if finite.size == 0:
        return 1.0
    lo, hi = float(finite.min()), float(finite.max())
    if lo >= 0.0 and hi <= 1.0:
        return 1.0  # probabilities and other [0, 1] values: errors in their own units
    return max(abs(lo), abs(hi), hi - lo, _RANGE_FLOOR)


def _sqnr_db(out: np.ndarray, ref: np.ndarray, ok: np.ndarray) -> float | None:
    signal = float(np.mean(np.square(np.where(ok, ref, 0.0)))) if ref.size else 0.0
    if signal < _NEAR_ZERO**2:
        return None
    noise = float(np.mean(np.square(np.where(ok, out - ref, 0.0))))
    if noise == 0.0:
        return SQNR_CAP_DB
    return float(min(SQNR_CAP_DB, 10.0 * math.log10(signal / noise)))


def _cosines(out: np.ndarray, ref: np.ndarray) -> np.ndarray | None:
    """Cosine of each row whose reference is not ~0; a row with NaN/Inf counts -1."""
    o, r = _rows(out), _rows(ref)
    r_norm = np.linalg.norm(np.where(np.isfinite(r), r, 0.0), axis=1)
    keep = r_norm > _NEAR_ZERO * max(1.0, float(r_norm.max(initial=0.0)))
    if not np.any(keep):
        return None
    o, r, r_norm = o[keep], r[keep], r_norm[keep]
    finite = np.all(np.isfinite(o), axis=1)
    o = np.where(np.isfinite(o), o, 0.0)
    o_norm = np.linalg.norm(o, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.sum(o * r, axis=1) / (o_norm * r_norm)
    cos = np.where(o_norm > 0, cos, 0.0)
    return np.where(finite, np.clip(cos, -1.0, 1.0), -1.0)


def _top1(out: np.ndarray, ref: np.ndarray, tie: float) -> tuple[float, float | None]:
    o, r = _rows(out), _rows(ref)
    finite = np.all(np.isfinite(o), axis=1)
    o = np.where(np.isfinite(o), o, -np.inf)
    same_share = _top1_share(o, r, finite, tie)
    top5 = None
    if r.shape[1] > _TOPK:
        best = np.argmax(r, axis=1)
        candidates = np.argsort(-o, axis=1)[:, :_TOPK]
        top5 = float(np.mean(np.any(candidates == best[:, None], axis=1) & finite))
    return same_share, top5


def _top1_share(o: np.ndarray, r: np.ndarray, finite: np.ndarray, tie: float) -> float:
    """The share of rows whose top output class is (within `tie`) the reference's top one;
    `o` has its NaN/Inf set to -inf, `finite` says which rows had none."""
    picked = np.take_along_axis(r, np.argmax(o, axis=1)[:, None], axis=1)[:, 0]
    same = (picked >= np.max(r, axis=1) - tie) & finite
    return float(np.mean(same))


def measure_output(name: str, kind: str, out: np.ndarray, ref: np.ndarray) -> OutputAgreement:
    """Every figure of one output against its reference (same shape). Raises ValueError."""
    out_a, ref_a = np.asarray(out), np.asarray(ref)
    if out_a.shape != ref_a.shape:
        raise ValueError(
            f"output {name!r} has shape {list(out_a.shape[1:])} per sample, "
            f"the reference {list(ref_a.shape[1:])}"
        )
    feeds = int(out_a.shape[0]) if out_a.ndim else 1
    if kind == "labels":
        equal = out_a.reshape(feeds, -1) == ref_a.reshape(feeds, -1)
        diff = np.abs(out_a.astype(np.float64) - ref_a.astype(np.float64))
        max_abs = float(diff.max(initial=0.0))
        return OutputAgreement(
            name, kind, feeds, int(out_a.size), max_abs, 1.0, max_abs, max_abs, None, None,
            None, float(np.mean(equal)) if equal.size else 1.0, None, 0,
        )
    o, r = out_a.astype(np.float64), ref_a.astype(np.float64)
    ok = np.isfinite(o) & np.isfinite(r)
    nonfinite = int(o.size - np.count_nonzero(np.isfinite(o)))
    diff = np.abs(np.where(ok, o - r, 0.0))
    max_abs = float(diff.max(initial=0.0))
    scale = _range(r)
    cos = None
    if kind in ("embedding", "classes"):
        cos = _cosines(o, r)
    elif kind == "tensor":  # one direction per feed: boxes, masks and states as a whole
        cos = _cosines(o.reshape(feeds, -1), r.reshape(feeds, -1))
    top1 = top5 = None
    if kind == "classes":
        top1, top5 = _top1(o, r, _TIE_SHARE * scale)
    return OutputAgreement(
        name=name,
        kind=kind,
        feeds=feeds,
        values=int(o.size),
        max_abs_error=max_abs,
        range=scale,
        rel_error=_judged_error(diff, ok) / scale,
        worst_rel_error=max_abs / scale,
        sqnr_db=_sqnr_db(o, r, ok),
        min_cosine=None if cos is None else float(cos.min()),
        mean_cosine=None if cos is None else float(cos.mean()),
        top1_agreement=top1,
        top5_agreement=top5,
        nonfinite=nonfinite,
    )


def _judged_error(diff: np.ndarray, ok: np.ndarray) -> float:
    """The largest absolute error, or its 99th percentile on outputs of many values."""
    values = diff[ok]
    if values.size == 0:
        return 0.0
    if values.size < ROBUST_MIN_VALUES:
        return float(values.max())
    return _quantile(values, _ROBUST_QUANTILE)


def _quantile(values: np.ndarray, q: float) -> float:
    """`np.quantile(values, q)` (its default, linear method) on a flat array, by a partial
    sort: `np.quantile` itself imports numpy.ma (~13 ms) on a device's first smoke test."""
    pos = q * (values.size - 1)
    lo = int(pos)
    hi = min(lo + 1, values.size - 1)
    part = np.partition(values, (lo, hi))
    low, high = float(part[lo]), float(part[hi])
    return low + (high - low) * (pos - lo)


def _legacy_shape(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """References of bundles built before feeds had their own axis ([N, C], outputs of N rows
    concatenated) take the outputs' shape: the same values in the same order, whether the
    samples now make N feeds of one row or one feed of N rows."""
    if ref.shape != out.shape and ref.size == out.size:
        return ref.reshape(out.shape)
    return ref


def compare_outputs(
    outputs: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    kinds: Mapping[str, str] | None = None,
    declared: Mapping[str, Sequence[int]] | None = None,
) -> Agreement:
    """Compare outputs with references output by output; `kinds` names each output's kind
    (missing ones are detected from the reference and the `declared` output shapes).

    Raises ValueError if names or shapes differ.
    """
    if set(outputs) != set(reference):
        raise ValueError(
            f"outputs {sorted(outputs)} do not match reference outputs {sorted(reference)}"
        )
    kinds = kinds or {}
    measured = []
    for name in sorted(outputs):
        out = np.asarray(outputs[name])
        ref = _legacy_shape(out, np.asarray(reference[name]))
        kind = kinds.get(name) or detect_kind(name, ref, (declared or {}).get(name))
        if kind not in OUTPUT_KINDS:
            raise ValueError(f"output {name!r}: unknown kind {kind!r}")
        measured.append(measure_output(name, kind, out, ref))
    samples = max((m.feeds for m in measured), default=0)
    return Agreement(samples=samples, outputs=tuple(measured))


# --- thresholds -----------------------------------------------------------------------------


def default_check(
    name: str, kind: str, *, with_reference: bool, defaults: CheckDefaults = DEFAULT_CHECKS
) -> OutputCheck:
    """The thresholds an output of `kind` gets when the user sets none."""
    d = defaults
    if kind == "score":
        rel = d.score_rel_error if with_reference else d.self_score_rel_error
        return OutputCheck(name, kind, max_rel_error=rel)
    if kind == "labels":
        return OutputCheck(name, kind, min_top1_agreement=d.top1 if with_reference else d.self_top1)
    rel = d.rel_error if with_reference else d.self_rel_error
    sqnr = d.sqnr_db if with_reference else d.self_sqnr_db
    if kind == "classes":
        return OutputCheck(
            name, kind, max_rel_error=rel,
            min_sqnr_db=d.classes_sqnr_db if with_reference else d.self_sqnr_db,
            min_top1_agreement=d.top1 if with_reference else d.self_top1,
        )
    if kind == "embedding":
        cosine = d.embedding_cosine if with_reference else d.self_embedding_cosine
        return OutputCheck(name, kind, max_rel_error=rel, min_sqnr_db=sqnr, min_cosine=cosine)
    return OutputCheck(name, kind, max_rel_error=rel, min_sqnr_db=sqnr)


def legacy_checks(test: SmokeTest, agreement: Agreement) -> tuple[OutputCheck, ...]:
    """Checks for a bundle built before per-output checks: its global thresholds, each on the
    outputs it fits (no cosine on one-value outputs, top-1 only on class scores)."""
    return tuple(legacy_check(test, o.name, o.kind) for o in agreement.outputs)


def legacy_check(test: SmokeTest, name: str, kind: str) -> OutputCheck:
    """The check of one output of a bundle built before per-output checks (`legacy_checks`)."""
    return OutputCheck(
        name,
        kind,
        max_abs_error=test.max_abs_error,
        min_cosine=test.min_cosine if kind in _VECTOR_KINDS else None,
        min_top1_agreement=test.min_top1_agreement if kind in ("classes", "labels") else None,
    )


def with_overrides(check: OutputCheck, overrides: Mapping[str, Any]) -> OutputCheck:
    """`check` with the user's thresholds (and kind) put over it. Raises ValueError."""
    unknown = sorted(set(overrides) - {"kind", *OutputCheck.THRESHOLDS})
    if unknown:
        raise ValueError(
            f"unknown threshold {unknown[0]!r}; known: kind, {', '.join(OutputCheck.THRESHOLDS)}"
        )
    if "kind" in overrides and overrides["kind"] not in OUTPUT_KINDS:
        raise ValueError(f"unknown output kind {overrides['kind']!r}; known: {OUTPUT_KINDS}")
    return replace(check, **dict(overrides))


def useless_thresholds(check: OutputCheck) -> list[str]:
    """Thresholds of `check` that cannot catch anything, one line each (for warnings)."""
    found = []
    if check.min_cosine is not None and check.min_cosine <= -1.0:
        found.append(f"output {check.name!r}: min cosine {check.min_cosine:g} passes any output")
    if check.min_top1_agreement is not None and check.min_top1_agreement <= 0.0:
        found.append(f"output {check.name!r}: top-1 agreement 0 passes any output")
    if check.min_sqnr_db is not None and check.min_sqnr_db <= -SQNR_CAP_DB:
        found.append(f"output {check.name!r}: min SQNR {check.min_sqnr_db:g} dB passes any output")
    if all(getattr(check, k) is None for k in OutputCheck.THRESHOLDS):
        found.append(f"output {check.name!r} is not judged at all (no threshold set)")
    return found


def judge(
    agreement: Agreement, checks: Sequence[OutputCheck], *, allow_nonfinite: bool = False
) -> list[str]:
    """One-line reasons the outputs break their checks (empty if none)."""
    by_name = {c.name: c for c in checks}
    reasons: list[str] = []
    for o in agreement.outputs:
        label = f"output {o.name!r}"
        if o.nonfinite and not allow_nonfinite:
            reasons.append(f"{label} contains {o.nonfinite} NaN/Inf value(s)")
        check = by_name.get(o.name)
        if check is None:
            continue
        reasons.extend(f"{label} ({o.kind}): {r}" for r in _breaches(o, check))
    return reasons


def _error_words(o: OutputAgreement) -> str:
    return "99th percentile error" if o.values >= ROBUST_MIN_VALUES else "max error"


def _breaches(o: OutputAgreement, c: OutputCheck) -> list[str]:
    found = []
    if c.max_abs_error is not None and o.max_abs_error > c.max_abs_error:
        found.append(f"max abs error {o.max_abs_error:.4g} > allowed {c.max_abs_error:.4g}")
    if c.max_rel_error is not None and o.rel_error > c.max_rel_error:
        found.append(
            f"{_error_words(o)} {o.rel_error * o.range:.4g} is {o.rel_error:.3g} of its range "
            f"{o.range:.4g} > allowed {c.max_rel_error:.3g}"
        )
    if c.min_sqnr_db is not None and o.sqnr_db is not None and o.sqnr_db < c.min_sqnr_db:
        found.append(f"SQNR {o.sqnr_db:.1f} dB < required {c.min_sqnr_db:.1f} dB")
    if c.min_cosine is not None and o.min_cosine is not None and o.min_cosine < c.min_cosine:
        found.append(f"cosine similarity {o.min_cosine:.4f} < required {c.min_cosine:.4f}")
    if (
        c.min_top1_agreement is not None
        and o.top1_agreement is not None
        and o.top1_agreement < c.min_top1_agreement
    ):
        what = "agreement" if o.kind == "labels" else "top-1 agreement"
        found.append(f"{what} {o.top1_agreement:.1%} < required {c.min_top1_agreement:.1%}")
    return found


def accuracy_failures(agreement: Agreement, test: SmokeTest) -> list[str]:
    """One-line reasons the agreement breaks the smoke test (its per-output checks, or the
    global thresholds of a bundle built before them); empty if none."""
    checks = test.outputs or legacy_checks(test, agreement)
    return judge(agreement, checks, allow_nonfinite=test.allow_nonfinite)


def smoke_kinds(test: SmokeTest) -> dict[str, str]:
    """The output kinds a smoke test names (empty for bundles built before kinds)."""
    return {c.name: c.kind for c in test.outputs}


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of `values`, nearest-rank; 0.0 for an empty list."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, int(np.ceil(q / 100.0 * len(ordered))))
    return float(ordered[rank - 1])
