"""The model catalogue in a real onnxruntime: every good model agrees with its float reference
within the smoke-test tolerances, and every broken one is broken the way its note says.

Samples are split into feeds here, by the SPEC rule, not by the catalogue's own code: an array
that fits the declared input shape is one feed shared by all; one with an extra leading axis
holds several. Run with -s for a table of the measured figures.
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest

from satchel.agent.runtimes import get_runtime
from tests.catalogue.feeds import split_feeds
from tests.catalogue.kinds import (
    ACTIVATE,
    BOXES,
    CLASS_MAP,
    CLASS_SCORES,
    OUTPUT_KINDS,
    PROBABILITY,
    REFUSE,
    REGRESSION,
    STATE,
    CatalogueModel,
    onnx_catalogue,
)

# Good: what a shipped model must keep against its float reference.
MAX_ERROR_SHARE_OF_RANGE = 0.05  # max abs error / reference output range
MIN_GOOD_SQNR_DB = 20.0
MAX_PROBABILITY_ERROR = 0.02  # absolute, for one-value probabilities and box scores
# Per-pixel argmax of a mask flips on pixels right at a class boundary (p near 0.5) under any
# rounding; a segmenter is judged by the share of pixels that keep their class.
MIN_PIXEL_AGREEMENT = 0.99
# Broken: how far off a broken model must be.
MIN_SHIFTED_MOVE = 0.3  # absolute move of the one-value output, on every feed
MAX_BROKEN_SQNR_DB = 10.0
BOXES_OFF_FACTOR = 1.5

# Breakages the catalogue must hold, per family.
REQUIRED = {
    "recurrent-state-scalar": {"good", "shifted-bias"},
    "probability": {"good", "shifted-bias"},
    "detector": {"good", "boxes-off", "other-model"},
    "external-data": {"good", "weight-noise"},
    **{
        family: {"good", "weight-noise", "sign-flip", "nan-path", "other-model"}
        for family in ("classifier", "embedding", "segmentation", "multi-io")
    },
}


@dataclass(frozen=True)
class Run:
    """An entry's reference and shipped outputs over every sample feed, stacked on axis 0."""

    entry: CatalogueModel
    feeds: int
    reference: dict[str, np.ndarray]
    shipped: dict[str, np.ndarray]


@dataclass(frozen=True)
class Figures:
    max_abs_error: float  # NaN when the shipped output holds NaN
    share_of_range: float
    sqnr_db: float
    top1: float | None  # share of feeds (pixels for a mask) whose argmax is kept
    nan_feeds: int


def run_entry(entry: CatalogueModel) -> Run:
    runtime = get_runtime("onnxruntime")
    reference, shipped = runtime.load(entry.reference), runtime.load(entry.model)
    try:
        with np.load(entry.samples) as npz:
            feeds = split_feeds(dict(npz), reference.inputs)
        ref_out = [reference.run(feed) for feed in feeds]
        shipped_out = [shipped.run(feed) for feed in feeds]
    finally:
        reference.close()
        shipped.close()
    names = [spec.name for spec in reference.outputs]
    return Run(
        entry,
        len(feeds),
        {name: np.stack([out[name] for out in ref_out]).astype(np.float64) for name in names},
        {name: np.stack([out[name] for out in shipped_out]).astype(np.float64) for name in names},
    )


def sqnr_db(reference: np.ndarray, shipped: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio over all feeds, in dB (NaN when shipped has NaN)."""
    if np.isnan(shipped).any():
        return math.nan
    noise = float(np.sum((reference - shipped) ** 2))
    return math.inf if noise == 0 else 10 * math.log10(float(np.sum(reference**2)) / noise)


def figures(run: Run, output: str) -> Figures:
    ref, got = run.reference[output], run.shipped[output]
    kind = OUTPUT_KINDS[run.entry.family][output]
    error = float(np.max(np.abs(ref - got))) if not np.isnan(got).any() else math.nan
    span = float(ref.max() - ref.min()) or 1.0
    top1 = None
    if kind == CLASS_SCORES:
        top1 = float(np.mean(ref.argmax(-1) == got.argmax(-1)))
    elif kind == CLASS_MAP:
        top1 = float(np.mean(ref.argmax(2) == got.argmax(2)))  # stacked [feed, 1, class, h, w]
    elif kind == BOXES:
        top1 = float(np.mean(ref[..., 5] == got[..., 5]))
    nan_feeds = int(np.isnan(got.reshape(run.feeds, -1)).any(axis=1).sum())
    return Figures(error, error / span, sqnr_db(ref, got), top1, nan_feeds)


@pytest.fixture(scope="module")
def entries(tmp_path_factory: pytest.TempPathFactory) -> list[CatalogueModel]:
    return onnx_catalogue(tmp_path_factory.mktemp("catalogue"))


@pytest.fixture(scope="module")
def runs(entries: list[CatalogueModel]) -> list[Run]:
    return [run_entry(entry) for entry in entries]


def runs_of(runs: list[Run], variant: str) -> list[Run]:
    chosen = [run for run in runs if run.entry.variant == variant]
    assert chosen, f"the catalogue holds no {variant!r} model"
    return chosen


def print_table(runs: list[Run]) -> None:
    print(f"\n{'family':24} {'variant':13} {'output':11} {'max abs err':>11} {'of range':>9}"
          f" {'SQNR dB':>8} {'top-1':>6} {'NaN feeds':>9}")  # fmt: skip
    for run in runs:
        for output in run.reference:
            f = figures(run, output)
            top1 = "" if f.top1 is None else f"{f.top1:.3f}"
            print(f"{run.entry.family:24} {run.entry.variant:13} {output:11}"
                  f" {f.max_abs_error:11.4g} {f.share_of_range:9.2%} {f.sqnr_db:8.1f}"
                  f" {top1:>6} {f.nan_feeds:>4}/{run.feeds}")  # fmt: skip


def test_every_catalogue_model_runs_on_every_sample_feed(runs):
    print_table(runs)
    for run in runs:
        assert run.feeds >= 8, f"{run.entry.family}: only {run.feeds} feeds"
        for output, values in run.shipped.items():
            assert values.shape == run.reference[output].shape


def test_catalogue_holds_every_family_and_breakage(entries):
    held: dict[str, set[str]] = {}
    for entry in entries:
        held.setdefault(entry.family, set()).add(entry.variant)
        assert entry.expect == (ACTIVATE if entry.variant == "good" else REFUSE)
        assert entry.note and "\n" not in entry.note
        assert entry.model.suffix == ".onnx" and entry.model.is_file()
    for family, variants in REQUIRED.items():
        assert variants <= held.get(family, set()), f"{family} lacks {variants - held[family]}"


def test_models_declare_ir_9_and_opset_17_as_onnxruntime_needs(entries):
    for path in {e.model for e in entries} | {e.reference for e in entries}:
        model = onnx.load(str(path), load_external_data=False)
        assert model.ir_version == 9, path
        assert {(o.domain, o.version) for o in model.opset_import} == {("", 17)}, path


def test_samples_follow_the_spec_layout(entries):
    runtime = get_runtime("onnxruntime")
    for samples, reference in {(e.samples, e.reference) for e in entries}:
        model = runtime.load(reference)
        with np.load(samples) as npz:
            arrays = dict(npz)
        feeds = split_feeds(arrays, model.inputs)
        assert 8 <= len(feeds) <= 16, samples
        for spec in model.inputs:
            assert arrays[spec.name].dtype == spec.dtype, (samples, spec.name)
            if spec.name == "image" and len(spec.shape) == 4:
                assert arrays["image"].min() >= 0.0 and arrays["image"].max() <= 1.0


def test_recurrent_samples_share_one_state_and_a_scalar_sample_rate(entries):
    entry = next(e for e in entries if e.family == "recurrent-state-scalar")
    with np.load(entry.samples) as npz:
        assert npz["input"].shape == (8, 1, 512)
        assert npz["state"].shape == (2, 1, 128)  # one feed: batch on axis 1, not stacked
        assert npz["sr"].shape == () and npz["sr"].dtype == np.int64 and int(npz["sr"]) == 16000


def test_recurrent_model_answers_differently_for_a_wrong_sample_rate(entries):
    entry = next(e for e in entries if e.family == "recurrent-state-scalar")
    model = get_runtime("onnxruntime").load(entry.reference)
    with np.load(entry.samples) as npz:
        feed = split_feeds(dict(npz), model.inputs)[1]
    at_16k = model.run(feed)["output"]
    at_8k = model.run({**feed, "sr": np.array(8000, dtype=np.int64)})["output"]
    assert abs(float(at_16k[0, 0]) - float(at_8k[0, 0])) > 1e-3


def test_external_data_models_keep_their_weights_beside_the_graph(entries):
    chosen = [e for e in entries if e.family == "external-data"]
    assert chosen
    for path in {e.model for e in chosen} | {e.reference for e in chosen}:
        data = path.with_name(path.name + ".data")
        assert data.is_file() and data.stat().st_size > 10 * path.stat().st_size, path
        model = onnx.load(str(path), load_external_data=False)
        # the quantizer writes its scalar scales and zero points inline, the weights go out
        weights = [t for t in model.graph.initializer if math.prod(t.dims) > 1]
        assert weights and all(t.data_location == onnx.TensorProto.EXTERNAL for t in weights)
    reference = next(e.reference for e in chosen)
    assert reference.with_name(reference.name + ".data").stat().st_size > 1_000_000


def test_good_models_stay_within_tolerance_of_the_float_reference(runs):
    failures = []
    for run in runs_of(runs, "good"):
        for output in run.reference:
            failures += good_failures(run, output)
    assert not failures, "\n".join(failures)


# A CPU without VNNI, emulated: onnxruntime's int8 kernels take their AVX2 path there, where
# int8 x uint8 sums saturate (manager.quantize.quantize_dynamic_portable). Debian `qemu-user`,
# as .ci/run installs it.
QEMU = shutil.which("qemu-x86_64")
NO_VNNI_CPU = "Haswell"
_GOOD_FAILURES_HERE = """
import json, sys
from pathlib import Path
import tests.test_catalogue_models as t
entries = [e for e in t.onnx_catalogue(Path(sys.argv[1])) if e.variant == "good"]
runs = [t.run_entry(e) for e in entries]
print(json.dumps([f for run in runs for out in run.reference for f in t.good_failures(run, out)]))
"""


@pytest.mark.skipif(QEMU is None or platform.machine() != "x86_64",
                    reason="qemu-x86_64 not installed (Debian `qemu-user`, as .ci/run installs it)")
def test_good_models_stay_within_tolerance_on_a_cpu_without_vnni(tmp_path):
    assert QEMU is not None
    done = subprocess.run(
        [QEMU, "-cpu", NO_VNNI_CPU, sys.executable, "-c", _GOOD_FAILURES_HERE, str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    failures = json.loads(done.stdout.strip().splitlines()[-1])
    assert not failures, "\n".join(failures)


def good_failures(run: Run, output: str) -> list[str]:
    ref, got = run.reference[output], run.shipped[output]
    f = figures(run, output)
    kind = OUTPUT_KINDS[run.entry.family][output]
    where = f"{run.entry.family}/{output}"
    failures = []
    if f.nan_feeds:
        failures.append(f"{where}: NaN on {f.nan_feeds} feeds")
    if not f.share_of_range <= MAX_ERROR_SHARE_OF_RANGE:
        failures.append(f"{where}: max abs error {f.share_of_range:.1%} of the range")
    if not f.sqnr_db >= MIN_GOOD_SQNR_DB:
        failures.append(f"{where}: SQNR {f.sqnr_db:.1f} dB")
    if kind == PROBABILITY and not f.max_abs_error <= MAX_PROBABILITY_ERROR:
        failures.append(f"{where}: probability off by {f.max_abs_error:.3f}")
    if kind == CLASS_SCORES and f.top1 != 1.0:
        failures.append(f"{where}: top-1 kept on only {f.top1:.0%} of feeds")
    if kind == CLASS_MAP and not (f.top1 or 0.0) >= MIN_PIXEL_AGREEMENT:
        failures.append(f"{where}: only {f.top1:.1%} of pixels keep their class")
    if kind == BOXES:
        coords_error = float(np.max(np.abs(ref[..., :4] - got[..., :4])))
        coords_span = float(ref[..., :4].max() - ref[..., :4].min())
        if coords_error > MAX_ERROR_SHARE_OF_RANGE * coords_span:
            failures.append(f"{where}: box corners off by {coords_error:.1f} px")
        if float(np.max(np.abs(ref[..., 4] - got[..., 4]))) > MAX_PROBABILITY_ERROR:
            failures.append(f"{where}: box scores off by more than {MAX_PROBABILITY_ERROR}")
        if f.top1 != 1.0:
            failures.append(f"{where}: box classes changed")
    return failures


def is_one_value(run: Run, output: str) -> bool:
    kind = OUTPUT_KINDS[run.entry.family][output]
    return kind in (PROBABILITY, REGRESSION) and run.reference[output][0].size == 1


def test_shifted_bias_moves_the_one_value_output_on_every_sample(runs):
    for run in runs_of(runs, "shifted-bias"):
        moved = [o for o in run.reference if is_one_value(run, o)]
        assert moved, f"{run.entry.family} has no one-value output"
        for output in run.reference:
            move = np.abs(run.shipped[output] - run.reference[output])
            if output in moved:
                assert move.min() >= MIN_SHIFTED_MOVE, (run.entry.family, output, move.min())
            else:
                assert move.max() == 0.0, f"{run.entry.family}/{output} moved too"
    families = {run.entry.family for run in runs_of(runs, "shifted-bias")}
    assert {"recurrent-state-scalar", "probability"} <= families


@pytest.mark.parametrize("variant", ["weight-noise", "sign-flip", "other-model"])
def test_noisy_flipped_and_foreign_models_fall_below_10_db(runs, variant):
    for run in runs_of(runs, variant):
        for output in run.reference:
            if OUTPUT_KINDS[run.entry.family][output] == STATE:
                continue
            sqnr = figures(run, output).sqnr_db
            assert sqnr < MAX_BROKEN_SQNR_DB, f"{run.entry.family}/{output}: {sqnr:.1f} dB"


def test_sign_flipped_classifiers_lose_their_top_class(runs):
    for run in runs_of(runs, "sign-flip"):
        for output in run.reference:
            if OUTPUT_KINDS[run.entry.family][output] == CLASS_SCORES:
                assert figures(run, output).top1 == 0.0, f"{run.entry.family}/{output}"


def test_nan_path_models_answer_nan_for_some_samples_and_the_rest_unchanged(runs):
    for run in runs_of(runs, "nan-path"):
        for output, got in run.shipped.items():
            ref = run.reference[output]
            nan_rows = np.isnan(got.reshape(run.feeds, -1)).any(axis=1)
            where = f"{run.entry.family}/{output}"
            assert 0 < nan_rows.sum() < run.feeds, f"{where}: NaN on {nan_rows.sum()} feeds"
            np.testing.assert_allclose(got[~nan_rows], ref[~nan_rows], rtol=1e-6, atol=1e-6)


def test_boxes_off_detector_scales_boxes_by_half_again_and_keeps_scores(runs):
    for run in runs_of(runs, "boxes-off"):
        ref, got = run.reference["boxes"], run.shipped["boxes"]
        np.testing.assert_allclose(got[..., :4], BOXES_OFF_FACTOR * ref[..., :4], rtol=1e-5)
        np.testing.assert_array_equal(got[..., 4:], ref[..., 4:])
        relative = np.abs(got[..., :4] - ref[..., :4]) / np.abs(ref[..., :4])
        assert np.median(relative) == pytest.approx(0.5, abs=0.01)


def test_catalogue_is_written_the_same_on_every_run(entries, tmp_path: Path):
    again = onnx_catalogue(tmp_path)
    assert [(e.family, e.variant) for e in again] == [(e.family, e.variant) for e in entries]
    for first, second in zip(entries, again, strict=True):
        for a, b in ((first.model, second.model), (first.samples, second.samples)):
            assert a.read_bytes() == b.read_bytes(), a.name
        data = first.model.with_name(first.model.name + ".data")
        if data.exists():
            assert data.read_bytes() == second.model.with_name(data.name).read_bytes()
