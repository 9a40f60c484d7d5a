"""The TFLite families of the model catalogue in a real TFLite interpreter and through the real
build gate: every good model (fp16 weights, int8, uint8, a fully dynamic input) agrees with
its float32 TFLite reference, every broken one is clearly wrong, and the build lets exactly
the good ones through.

Samples are split into feeds here by the SPEC rule, not by the catalogue's own code. Real
values go in: a quantized input is encoded with `agent.runtimes.samples.encode`, a quantized
output decoded with `agent.runtimes.dequantize`, and the float reference takes the same real
values. Run with -s for a table of the measured figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from satchel.agent.runtimes import dequantize, get_runtime
from satchel.agent.runtimes.samples import encode
from satchel.bundles.keys import SigningKey
from satchel.manager.build import BuildRequest, build_bundle, detect_quantization
from satchel.manager.errors import BuildError
from tests.catalogue.feeds import split_feeds
from tests.catalogue.kinds import (
    ACTIVATE,
    CLASS_SCORES,
    OUTPUT_KINDS,
    REFUSE,
    CatalogueModel,
    tflite_catalogue,
)

pytest.importorskip("ai_edge_litert.interpreter")

# Good: what a shipped model must keep against its float reference.
MIN_GOOD_SQNR_DB = 20.0
MAX_ERROR_SHARE_OF_RANGE = 0.05  # max abs error / reference output range
# Broken: how far off a broken model must be.
MAX_BROKEN_SQNR_DB = 10.0
MAX_BROKEN_TOP1 = 0.5

REQUIRED = {
    "tflite-dynamic-shape": {"good", "weight-noise", "other-model"},
    "tflite-fp16": {"good", "sign-flip"},
    "tflite-int8": {"good", "weight-noise", "other-model"},
    "tflite-uint8": {"good", "shifted-bias", "sign-flip"},
}
# What the build names each family's good model (`detect_quantization`); references: "none".
GOOD_QUANTIZATION = {
    "tflite-dynamic-shape": "float16",
    "tflite-fp16": "float16",
    "tflite-int8": "int8",
    "tflite-uint8": "uint8",
}


@dataclass(frozen=True)
class Run:
    """An entry's reference and shipped outputs (real values) over every sample feed."""

    entry: CatalogueModel
    feeds: int
    reference: dict[str, np.ndarray]
    shipped: dict[str, np.ndarray]


def run_real(path: Path, feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Run real-valued feeds through a model: inputs encoded, outputs decoded to real values;
    each output stacked on a new leading axis (one index per feed), as float64."""
    model = get_runtime("tflite").load(path)
    try:
        specs_in = {s.name: s for s in model.inputs}
        specs_out = {s.name: s for s in model.outputs}
        stacked: dict[str, list[np.ndarray]] = {name: [] for name in specs_out}
        for feed in feeds:
            out = model.run({n: encode(v, specs_in[n]) for n, v in feed.items()})
            for name, value in out.items():
                spec = specs_out[name]
                stacked[name].append(dequantize(value, spec) if spec.quantization else value)
    finally:
        model.close()
    return {name: np.stack(values).astype(np.float64) for name, values in stacked.items()}


def run_entry(entry: CatalogueModel) -> Run:
    reference = get_runtime("tflite").load(entry.reference)
    specs = reference.inputs
    reference.close()
    with np.load(entry.samples) as npz:
        feeds = split_feeds(dict(npz), specs)
    return Run(entry, len(feeds), run_real(entry.reference, feeds), run_real(entry.model, feeds))


def sqnr_db(reference: np.ndarray, shipped: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio over all feeds, in dB (NaN when shipped has NaN)."""
    if np.isnan(shipped).any():
        return math.nan
    noise = float(np.sum((reference - shipped) ** 2))
    return math.inf if noise == 0 else 10 * math.log10(float(np.sum(reference**2)) / noise)


def top1(reference: np.ndarray, shipped: np.ndarray) -> float:
    """Share of rows (every row of every feed) whose top class is kept."""
    return float(np.mean(reference.argmax(-1) == shipped.argmax(-1)))


def share_of_range(reference: np.ndarray, shipped: np.ndarray) -> float:
    span = float(reference.max() - reference.min()) or 1.0
    return float(np.max(np.abs(reference - shipped))) / span


@pytest.fixture(scope="module")
def entries(tmp_path_factory: pytest.TempPathFactory) -> list[CatalogueModel]:
    return tflite_catalogue(tmp_path_factory.mktemp("tflite-catalogue"))


@pytest.fixture(scope="module")
def runs(entries: list[CatalogueModel]) -> list[Run]:
    chosen = [run_entry(entry) for entry in entries]
    print(f"\n{'family':22} {'variant':13} {'output':7} {'SQNR dB':>8} {'top-1':>6}"
          f" {'of range':>9} feeds")  # fmt: skip
    for run in chosen:
        for output, ref in run.reference.items():
            got = run.shipped[output]
            print(f"{run.entry.family:22} {run.entry.variant:13} {output:7}"
                  f" {sqnr_db(ref, got):8.1f} {top1(ref, got):6.3f}"
                  f" {share_of_range(ref, got):9.2%} {run.feeds}")  # fmt: skip
    return chosen


def runs_of(runs: list[Run], variant: str) -> list[Run]:
    chosen = [run for run in runs if run.entry.variant == variant]
    assert chosen, f"the TFLite catalogue holds no {variant!r} model"
    return chosen


def test_tflite_catalogue_holds_every_family_and_breakage(entries):
    held: dict[str, set[str]] = {}
    for entry in entries:
        held.setdefault(entry.family, set()).add(entry.variant)
        assert entry.expect == (ACTIVATE if entry.variant == "good" else REFUSE)
        assert entry.note and "\n" not in entry.note
        assert entry.model.suffix == ".tflite" and entry.model.is_file()
        assert entry.reference.suffix == ".tflite" and entry.reference.is_file()
        assert set(OUTPUT_KINDS[entry.family].values()) == {CLASS_SCORES}
    assert held == REQUIRED


def test_tflite_models_are_the_kinds_their_families_name(entries):
    runtime = get_runtime("tflite")
    for entry in entries:
        shipped, reference = runtime.load(entry.model), runtime.load(entry.reference)
        try:
            assert detect_quantization(entry.reference, reference) == "none", entry.reference
            assert detect_quantization(entry.model, shipped) == GOOD_QUANTIZATION[entry.family]
            assert [s.name for s in shipped.inputs] == ["input"]
            assert [s.name for s in shipped.outputs] == ["logits"]
            (logits,) = shipped.outputs
            assert len(logits.shape) == 2 and logits.shape[0] == -1 and logits.shape[1] >= 4
            declared = shipped.inputs[0].shape
            if entry.family == "tflite-dynamic-shape":
                assert declared == (-1, -1) and reference.inputs[0].shape == (-1, -1)
            else:
                assert declared[0] == -1 and declared[1] > 0
        finally:
            shipped.close()
            reference.close()


def test_tflite_samples_follow_the_spec_layout(entries):
    runtime = get_runtime("tflite")
    for samples, reference in {(e.samples, e.reference) for e in entries}:
        model = runtime.load(reference)
        specs = model.inputs
        model.close()
        with np.load(samples) as npz:
            arrays = dict(npz)
        assert set(arrays) == {s.name for s in specs}
        feeds = split_feeds(arrays, specs)
        assert 8 <= len(feeds) <= 16, samples
        for spec in specs:
            array = arrays[spec.name]
            # float32 real values, several feeds stacked on a new leading axis
            assert array.dtype == np.float32 and array.ndim == len(spec.shape) + 1, samples
            assert np.all(np.isfinite(array)) and float(np.abs(array).max()) <= 10.0


def test_tflite_dynamic_shape_model_runs_any_batch(entries):
    entry = next(e for e in entries if e.family == "tflite-dynamic-shape" and e.variant == "good")
    with np.load(entry.samples) as npz:
        feeds = np.asarray(npz["input"])
    assert feeds.shape[1] > 1  # every feed is a batch of several windows
    whole = run_real(entry.model, [{"input": feeds[0]}])["logits"][0]
    one_by_one = run_real(entry.model, [{"input": row[None]} for row in feeds[0]])["logits"]
    np.testing.assert_allclose(one_by_one[:, 0], whole, rtol=1e-5, atol=1e-5)


def test_tflite_good_models_stay_within_tolerance_of_the_float_reference(runs):
    failures = []
    for run in runs_of(runs, "good"):
        for output, ref in run.reference.items():
            got = run.shipped[output]
            where = f"{run.entry.family}/{output}"
            if np.isnan(got).any():
                failures.append(f"{where}: NaN")
                continue
            if not sqnr_db(ref, got) >= MIN_GOOD_SQNR_DB:
                failures.append(f"{where}: SQNR {sqnr_db(ref, got):.1f} dB")
            if top1(ref, got) != 1.0:
                failures.append(f"{where}: top-1 kept on only {top1(ref, got):.0%} of rows")
            if not share_of_range(ref, got) <= MAX_ERROR_SHARE_OF_RANGE:
                failures.append(f"{where}: max abs error {share_of_range(ref, got):.1%} of range")
    assert not failures, "\n".join(failures)


def test_tflite_broken_models_are_clearly_wrong(runs):
    broken = [run for run in runs if run.entry.expect == REFUSE]
    assert broken
    for run in broken:
        for output, ref in run.reference.items():
            got = run.shipped[output]
            where = f"{run.entry.family}/{run.entry.variant}/{output}"
            assert sqnr_db(ref, got) < MAX_BROKEN_SQNR_DB, f"{where}: {sqnr_db(ref, got):.1f} dB"
            if run.entry.variant == "sign-flip":
                assert top1(ref, got) == 0.0, where
            elif run.entry.variant in ("shifted-bias", "other-model"):
                assert top1(ref, got) < MAX_BROKEN_TOP1, f"{where}: top-1 {top1(ref, got):.0%}"


def test_tflite_catalogue_is_written_the_same_on_every_run(entries, tmp_path: Path):
    again = tflite_catalogue(tmp_path)
    assert [(e.family, e.variant) for e in again] == [(e.family, e.variant) for e in entries]
    for first, second in zip(entries, again, strict=True):
        for a, b in ((first.model, second.model), (first.samples, second.samples)):
            assert a.read_bytes() == b.read_bytes(), a.name
        assert first.reference.read_bytes() == second.reference.read_bytes()


def test_tflite_build_gate_builds_good_models_and_refuses_broken_ones(entries, tmp_path: Path):
    key = SigningKey.generate()
    wrong = []
    for i, entry in enumerate(entries):
        request = BuildRequest(
            name="t",
            version="1",
            model=entry.model,
            reference=entry.reference,
            samples=entry.samples,
            sequence=1,
        )
        out = tmp_path / f"{i}.satchel"
        try:
            built = build_bundle(request, [key], out)
            line = "built: " + built.agreement.headline()
            ok = entry.expect == ACTIVATE
        except BuildError as e:
            line = "refused: " + str(e)
            ok = entry.expect == REFUSE and "\n" not in str(e) and not out.exists()
        print(f"{entry.family}/{entry.variant}: {line}")
        if not ok:
            wrong.append(f"{entry.family}/{entry.variant} ({entry.note}): {line}")
    assert not wrong, "\n".join(wrong)
