"""The catalogue of models a real user brings: per family a float reference, a good shipped
model the device should activate and broken ones it should refuse, with their samples.

`catalogue(directory)` is what tests use; it gathers every format's families. The ONNX
families come from `tests.catalogue.onnx_kinds`; TFLite families join in `tflite_catalogue`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.catalogue import onnx_kinds, tflite_families
from tests.catalogue.files import GOOD

ACTIVATE = "activate"
REFUSE = "refuse"

# What each output of a family is, so a comparison judges it by metrics that fit
# (SPEC "Smoke tests"): family -> output name -> kind.
PROBABILITY = "probability"  # one value in 0..1: judged by absolute error
REGRESSION = "regression"  # one value: absolute error and range
CLASS_SCORES = "class-scores"  # logits over the last axis: top-1
CLASS_MAP = "class-map"  # per-pixel class probabilities over axis 1: per-pixel top-1
BOXES = "boxes"  # [1, N, 6]: x1 y1 x2 y2 in pixels, score, class
EMBEDDING = "embedding"  # unit vector: SQNR and range
STATE = "state"  # recurrent state handed to the next call

OUTPUT_KINDS: dict[str, dict[str, str]] = {
    "recurrent-state-scalar": {"output": PROBABILITY, "stateN": STATE},
    "probability": {"probability": PROBABILITY},
    "detector": {"boxes": BOXES},
    "segmentation": {"mask": CLASS_MAP},
    "embedding": {"embedding": EMBEDDING},
    "multi-io": {"logits": CLASS_SCORES, "value": REGRESSION},
    "classifier": {"logits": CLASS_SCORES},
    "external-data": {"logits": CLASS_SCORES},
    # TFLite families (tests.catalogue.tflite_families): MLP classifiers, "input" -> "logits"
    "tflite-dynamic-shape": {"logits": CLASS_SCORES},
    "tflite-fp16": {"logits": CLASS_SCORES},
    "tflite-int8": {"logits": CLASS_SCORES},
    "tflite-uint8": {"logits": CLASS_SCORES},
}


@dataclass(frozen=True)
class CatalogueModel:
    """One model to ship, with the reference and samples a bundle build compares it on."""

    family: str  # "recurrent-state-scalar", ...
    variant: str  # "good" or the broken name, e.g. "shifted-bias"
    model: Path  # the file to ship (.onnx; with external data the .data file lies beside it)
    reference: Path  # the float reference model
    samples: Path  # npz in the SPEC layout
    expect: str  # "activate" for good, "refuse" for broken
    note: str  # one line: what is wrong / what it is


def onnx_catalogue(directory: Path) -> list[CatalogueModel]:
    """Write every ONNX family under `directory` (one folder per family) and list its models.

    Deterministic: the same files on every run. Raises OSError when the directory is not
    writable.
    """
    return _entries(onnx_kinds, directory)


def tflite_catalogue(directory: Path) -> list[CatalogueModel]:
    """Write every TFLite family under `directory` (one folder per family) and list its models:
    a float32 `.tflite` reference, a good model (fp16 weights, int8 or uint8) and broken ones.

    Samples are float32 real values; the build quantizes them for an int8/uint8 model.
    Deterministic: the same files on every run. Raises OSError when the directory is not
    writable.
    """
    return _entries(tflite_families, directory)


def _entries(makers: Any, directory: Path) -> list[CatalogueModel]:
    """The models of every family of a maker module (`FAMILIES`, `write_family`)."""
    entries = []
    for family in makers.FAMILIES:
        files = makers.write_family(family, Path(directory))
        entries += [
            CatalogueModel(
                family=family.name,
                variant=shipped.variant,
                model=shipped.path,
                reference=files.reference,
                samples=files.samples,
                expect=ACTIVATE if shipped.variant == GOOD else REFUSE,
                note=shipped.note,
            )
            for shipped in files.shipped
        ]
    return entries


def catalogue(directory: Path) -> list[CatalogueModel]:
    """Every family of every format, written under `directory/onnx` and `directory/tflite`.

    Raises OSError when the directory is not writable.
    """
    directory = Path(directory)
    return onnx_catalogue(directory / "onnx") + tflite_catalogue(directory / "tflite")
