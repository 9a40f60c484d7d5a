"""TFLite model families a real user brings, each as a float32 TFLite reference, a good shipped
model and broken shipped models, with their samples in the SPEC layout.

Every family is a two-layer MLP classifier ("input" -> "logits", class scores) written by
`tests.catalogue.tflite_kinds`; what differs is what the device is given: a fully dynamic
input, float16 weights, a fully int8 model, a model with uint8 input and output. The good
model is the reference converted the way the TFLite converter would (fp16 weights, or int8 /
uint8 post-training quantization calibrated on the samples and more rows like them); the
broken ones are the same conversion of altered weights (noise, a negated last layer, a
shifted class bias, another model's weights). Samples are float32 real values, stacked on a
new leading axis: the build quantizes them for an int8/uint8 model and feeds the same real
values to the float reference. Everything is seeded, so the same files are written byte for
byte on every run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.catalogue import tflite_kinds
from tests.catalogue.files import GOOD, ShippedModel
from tests.catalogue.tflite_kinds import Kind, Weights

SHIFTED_BIAS = "shifted-bias"
WEIGHT_NOISE = "weight-noise"
SIGN_FLIP = "sign-flip"
OTHER_MODEL = "other-model"

INPUT = tflite_kinds.INPUT_NAME  # "input"
LOGITS = tflite_kinds.OUTPUT_NAME  # "logits": class scores [batch, classes]

_NOISE_SHARE = 0.5  # weight-noise: Gaussian noise std as a share of each weight's std
_LOGIT_STD = 2.0  # class scores spread like a trained classifier's (softmax mostly confident)
_MIN_MARGIN = 0.03  # samples: least top-two class score gap, as a share of the scores' spread
_CALIBRATION_ROWS = 256  # rows like the samples' added to them to calibrate int8/uint8 models
_OTHER_SEED = 1  # other-model: weights drawn from the family seed plus this
_NOISE_SEED = 2
_SAMPLES_SEED = 3
_CALIBRATION_SEED = 4

Features = Callable[[np.random.Generator, int], np.ndarray]  # rng, rows -> [rows, in_dim]


@dataclass(frozen=True)
class Family:
    """One kind of TFLite model: its size, its inputs, what it ships as and how it breaks."""

    name: str
    summary: str  # what the model is, for the catalogue's notes
    seed: int
    in_dim: int
    hidden: int
    classes: int
    kind: Kind  # what the good (and every broken) model is converted to
    features: Features
    sample_count: int  # feeds in samples.npz
    rows_per_feed: int  # rows of one feed: [rows_per_feed, in_dim]
    broken: tuple[str, ...]
    dynamic_features: bool = False  # the input is declared [-1, -1], not [-1, in_dim]
    centre: float = 0.0  # input value the first layer's bias folds out (0.5 for 0..1 pixels)
    shifted_bias: tuple[int, float] | None = None  # class whose logit bias is raised, by how much


@dataclass(frozen=True)
class FamilyFiles:
    """Everything written for one family."""

    family: Family
    reference: Path
    samples: Path
    shipped: tuple[ShippedModel, ...]


def write_family(family: Family, directory: Path) -> FamilyFiles:
    """Write the reference, the samples and every shipped model of `family` under
    `directory/<family name>/`. Raises OSError; ValueError for a family defined wrongly."""
    folder = Path(directory) / family.name
    folder.mkdir(parents=True, exist_ok=True)
    weights = make_weights(family, family.seed)
    feeds = sample_feeds(family, weights)
    # int8/uint8 activation ranges: the samples' rows and more rows like them
    extra = family.features(
        np.random.default_rng(family.seed + _CALIBRATION_SEED), _CALIBRATION_ROWS
    )
    calibration = np.concatenate([feeds.reshape(-1, family.in_dim), extra]).astype(np.float32)

    reference = _write(family, folder / "reference.tflite", weights, "float", calibration)
    samples = folder / "samples.npz"
    with samples.open("wb") as out:
        np.savez(out, **{INPUT: feeds})  # type: ignore[arg-type]
    shipped = [
        ShippedModel(
            GOOD,
            _write(family, folder / "good.tflite", weights, family.kind, calibration),
            f"{family.summary}, {_CONVERSION[family.kind]} of the float reference",
        )
    ]
    for variant in family.broken:
        altered, what = _broken_weights(family, variant, weights)
        path = _write(family, folder / f"{variant}.tflite", altered, family.kind, calibration)
        shipped.append(
            ShippedModel(variant, path, f"{family.summary}: {what} ({_CONVERSION[family.kind]})")
        )
    return FamilyFiles(family, reference, samples, tuple(shipped))


def make_weights(family: Family, seed: int) -> Weights:
    """The family's float weights: He-initialised, the input centre folded into the first
    bias, the head scaled so class scores spread like a trained classifier's."""
    w = tflite_kinds.make_weights(family.in_dim, family.hidden, family.classes, seed=seed)
    w["b1"] = (w["b1"] - family.centre * w["w1"].sum(axis=0)).astype(np.float32)
    rows = family.features(np.random.default_rng(seed + _CALIBRATION_SEED), _CALIBRATION_ROWS)
    scores = tflite_kinds.float_forward({**w, "b2": np.zeros_like(w["b2"])}, rows)
    scale = _LOGIT_STD / float(scores.std())
    w["w2"] = (w["w2"] * scale).astype(np.float32)
    # every class about as likely as the next, as after training on balanced classes
    w["b2"] = (w["b2"] - scale * scores.mean(axis=0)).astype(np.float32)
    return w


def sample_feeds(family: Family, weights: Weights) -> np.ndarray:
    """The samples: `sample_count` feeds of [rows_per_feed, in_dim] float32, stacked on a new
    leading axis (SPEC "Samples": one more axis than the declared input).

    Rows the reference scores as a near tie (top two classes within `_MIN_MARGIN` of the
    class scores' spread) are left out, as a validation set of clear cases would: any
    rounding, fp16 or int8, may flip such a row's top class, and a good model's top-1 is
    checked on every feed.
    """
    rng = np.random.default_rng(family.seed + _SAMPLES_SEED)
    wanted = family.sample_count * family.rows_per_feed
    pool = family.features(rng, 4 * wanted)
    scores = np.sort(tflite_kinds.float_forward(weights, pool), axis=1)
    margin = scores[:, -1] - scores[:, -2]
    clear = pool[margin >= _MIN_MARGIN * float(scores.max() - scores.min())]
    if len(clear) < wanted:
        raise ValueError(f"{family.name}: only {len(clear)} clear rows of {wanted}")
    return clear[:wanted].reshape(family.sample_count, family.rows_per_feed, family.in_dim)


# --- converting and breaking -----------------------------------------------------------------

_CONVERSION: dict[str, str] = {
    "float": "float32",
    "fp16": "float16 weights behind DEQUANTIZE (fp16 post-training quantization)",
    "int8": "int8 post-training quantization (int8 input and output, calibrated)",
    "uint8": "uint8 input and output around an int8 body (calibrated)",
}


def _write(
    family: Family, path: Path, weights: Weights, kind: Kind, calibration: np.ndarray
) -> Path:
    if family.dynamic_features:
        if kind == "float":
            return tflite_kinds.tflite_dynamic_shape(path, weights, dynamic_features=True)
        if kind == "fp16":
            return _fp16_fully_dynamic(path, weights)
        raise ValueError(f"{family.name}: a [-1, -1] input is written as float or fp16 only")
    return tflite_kinds.tflite_mlp_variant(
        path,
        weights,
        kind=kind,
        dynamic_batch=True,
        calibration=calibration if kind in ("int8", "uint8") else None,
    )


def _fp16_fully_dynamic(path: Path, weights: Weights) -> Path:
    """The fp16-weights MLP with its input declared [-1, -1] (tflite_kinds has the parts)."""
    graph = tflite_kinds._float_mlp(weights, dynamic_batch=True, fp16=True)
    index = graph.inputs[0]
    graph.tensors[index] = tflite_kinds._replace_shape(graph.tensors[index], (-1, -1))
    return tflite_kinds.write_model(path, [graph])


def _broken_weights(family: Family, variant: str, weights: Weights) -> tuple[Weights, str]:
    if variant == WEIGHT_NOISE:
        rng = np.random.default_rng(family.seed + _NOISE_SEED)
        noisy = {k: _noisy(rng, v) for k, v in weights.items()}
        return noisy, f"Gaussian noise of {_NOISE_SHARE:.0%} of each weight's std"
    if variant == SIGN_FLIP:
        flipped = {**weights, "w2": -weights["w2"], "b2": -weights["b2"]}
        return flipped, "last layer negated (fc2 weights and bias): every class score flips sign"
    if variant == SHIFTED_BIAS:
        if family.shifted_bias is None:
            raise ValueError(f"{family.name} has no class bias to shift")
        index, amount = family.shifted_bias
        b2 = weights["b2"].copy()
        b2[index] += np.float32(amount)
        return {**weights, "b2": b2}, (
            f"class {index}'s logit bias raised by {amount:+g}: that class wins nearly every feed"
        )
    if variant == OTHER_MODEL:
        other = make_weights(family, family.seed + _OTHER_SEED)
        return other, "another model: same input and output, other weights"
    raise ValueError(f"unknown broken variant {variant!r}")


def _noisy(rng: np.random.Generator, values: np.ndarray) -> np.ndarray:
    noise = rng.standard_normal(values.shape) * (_NOISE_SHARE * float(values.std()))
    return (values + noise).astype(np.float32)


# --- sample features -------------------------------------------------------------------------


def _standardised(in_dim: int) -> Features:
    """Features standardised on the training set: about N(0, 1), a few heavier tails."""

    def make(rng: np.random.Generator, rows: int) -> np.ndarray:
        x = rng.standard_normal((rows, in_dim)) * rng.uniform(0.7, 1.3, (rows, 1))
        return np.clip(x, -4.0, 4.0).astype(np.float32)

    return make


def _motion_windows(in_dim: int) -> Features:
    """Accelerometer window summaries in g: per-axis means near gravity, spreads 0.05-1."""

    def make(rng: np.random.Generator, rows: int) -> np.ndarray:
        axes = in_dim // 4
        mean = rng.normal(0.0, 0.6, (rows, axes))
        std = rng.uniform(0.05, 1.0, (rows, axes))
        low = mean - std * rng.uniform(1.0, 2.5, (rows, axes))
        high = mean + std * rng.uniform(1.0, 2.5, (rows, axes))
        return np.concatenate([mean, std, low, high], axis=1).astype(np.float32)

    return make


def _patches(side: int) -> Features:
    """Grayscale side x side patches in 0..1 (flattened): a gradient, an edge or a blob."""

    def make(rng: np.random.Generator, rows: int) -> np.ndarray:
        yy, xx = np.mgrid[0:side, 0:side] / max(side - 1, 1)
        out = np.empty((rows, side * side))
        for i in range(rows):
            pattern = int(rng.integers(0, 3))
            angle = rng.uniform(0, 2 * math.pi)
            ramp = math.cos(angle) * (xx - 0.5) + math.sin(angle) * (yy - 0.5)
            if pattern == 0:
                image = 0.5 + ramp
            elif pattern == 1:
                image = np.where(ramp > rng.uniform(-0.2, 0.2), 0.8, 0.2)
            else:
                cx, cy = rng.uniform(0.2, 0.8, 2)
                image = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.08)
            image = image * rng.uniform(0.6, 1.0) + rng.normal(0.0, 0.03, image.shape)
            out[i] = np.clip(image, 0.0, 1.0).reshape(-1)
        return out.astype(np.float32)

    return make


FAMILIES: tuple[Family, ...] = (
    Family(
        name="tflite-dynamic-shape",
        summary="gesture classifier over accelerometer windows, input [-1, -1] (4 windows a feed)",
        seed=1101,
        in_dim=12,
        hidden=32,
        classes=5,
        kind="fp16",
        features=_motion_windows(12),
        sample_count=12,
        rows_per_feed=4,
        broken=(WEIGHT_NOISE, OTHER_MODEL),
        dynamic_features=True,
    ),
    Family(
        name="tflite-fp16",
        summary="activity classifier (6 class scores) with float16 weights",
        seed=1202,
        in_dim=16,
        hidden=32,
        classes=6,
        kind="fp16",
        features=_standardised(16),
        sample_count=16,
        rows_per_feed=1,
        broken=(SIGN_FLIP,),
    ),
    Family(
        name="tflite-int8",
        summary="sensor-fault classifier (4 class scores), fully int8",
        seed=1303,
        in_dim=16,
        hidden=32,
        classes=4,
        kind="int8",
        features=_standardised(16),
        sample_count=16,
        rows_per_feed=1,
        broken=(WEIGHT_NOISE, OTHER_MODEL),
    ),
    Family(
        name="tflite-uint8",
        summary="4x4 grayscale patch classifier (8 class scores), uint8 input and output",
        seed=1404,
        in_dim=16,
        hidden=32,
        classes=8,
        kind="uint8",
        features=_patches(4),
        sample_count=12,
        rows_per_feed=1,
        broken=(SHIFTED_BIAS, SIGN_FLIP),
        centre=0.5,
        shifted_bias=(0, 8.0),
    ),
)
