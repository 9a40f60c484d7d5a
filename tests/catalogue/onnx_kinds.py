"""ONNX model families a real user brings, each as a float reference, a good shipped model and
broken shipped models, written with `onnx.helper` and `onnx.numpy_helper` only.

A family is a float graph over learned weights (`Weights`), a maker of sample feeds and the
places a mistake can land (the last layer, the bias of a one-value output, the input a NaN
path reads). The good shipped model is the reference after `satchel model quantize`'s INT8
dynamic quantization (manager.quantize.quantize_dynamic_portable: Conv weights int8, MatMul
weights uint8, activations quantized at run time; the same outputs on CPUs with and without
VNNI); every family stays within the smoke-test tolerances that way, on either CPU, so none
falls back to float16 or slightly noisy float weights (the segmenter's and detector's heads
are shaped so that holds: see their weight makers). The broken ones change the weights
(shifted bias, noise, negated last layer, another model's weights) or the graph (a NaN path,
boxes scaled in post-processing). Everything is seeded, so the same directory is written
byte for byte on every run.

onnx and onnxruntime are imported by this module: it is test tooling, not product code.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from tests.catalogue.files import GOOD, ShippedModel

IR_VERSION = 9  # onnxruntime 1.31+ loads IR <= 13; onnx 1.23 would stamp 14
OPSET = 17  # onnx 1.23 would stamp 28, which onnxruntime rejects
PRODUCER = "satchel-test-catalogue"

Weights = dict[str, np.ndarray]  # learned parameters by initializer name, float32
Feed = dict[str, np.ndarray]  # one inference: input name -> array of the declared shape

SHIFTED_BIAS = "shifted-bias"
WEIGHT_NOISE = "weight-noise"
SIGN_FLIP = "sign-flip"
NAN_PATH = "nan-path"
OTHER_MODEL = "other-model"
BOXES_OFF = "boxes-off"

_NOISE_SHARE = 0.5  # weight-noise: Gaussian noise std as a share of each weight's std
_BOXES_OFF_FACTOR = 1.5  # boxes-off: coordinates scaled by this, scores and classes kept
_CALIBRATION_FEEDS = 64  # feeds used to place a head's logits where a family wants them
_OTHER_SEED = 1  # other-model: weights drawn from the family seed plus this
_NOISE_SEED = 2
_SAMPLES_SEED = 3
_CALIBRATION_SEED = 4


@dataclass(frozen=True)
class NanPath:
    """Where a NaN path reads and writes: feeds whose first value of `source` is below
    `threshold` turn every listed output NaN (Sqrt of a negative, times zero, added)."""

    source: str
    threshold: float
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class Family:
    """One kind of model: how to make its weights, graph and samples, and how it breaks."""

    name: str
    summary: str  # what the model is, for the catalogue's notes
    seed: int
    make_weights: Callable[[int], Weights]  # seed -> learned parameters
    build: Callable[[Weights], onnx.ModelProto]
    make_feeds: Callable[[np.random.Generator, int], list[Feed]]  # rng, count -> feeds
    sample_count: int
    broken: tuple[str, ...]
    broadcast: frozenset[str] = frozenset()  # inputs stored once in the npz, shared by all feeds
    last_layer: tuple[str, ...] = ()  # weights negated by sign-flip
    shifted_bias: tuple[str, float] | None = None  # bias name, amount added
    nan_path: NanPath | None = None
    boxes_output: str | None = None  # [1, N, 6] boxes that boxes-off scales
    external_data: bool = False


@dataclass(frozen=True)
class FamilyFiles:
    """Everything written for one family."""

    family: Family
    reference: Path
    samples: Path
    shipped: tuple[ShippedModel, ...]


def write_family(family: Family, directory: Path) -> FamilyFiles:
    """Write the reference, the samples and every shipped model of `family` under
    `directory/<family name>/`. Raises OSError; ValueError and onnx/onnxruntime errors for a
    family defined wrongly."""
    folder = Path(directory) / family.name
    folder.mkdir(parents=True, exist_ok=True)
    weights = family.make_weights(family.seed)
    reference = family.build(weights)
    rng = np.random.default_rng(family.seed + _SAMPLES_SEED)
    feeds = family.make_feeds(rng, family.sample_count)

    reference_path = _save(reference, folder / "reference.onnx", family.external_data)
    samples_path = write_samples(feeds, family.broadcast, folder / "samples.npz")
    shipped = [
        ShippedModel(
            GOOD,
            _save(_quantized_dynamic(reference), folder / "good.onnx", family.external_data),
            f"{family.summary}, INT8 dynamic quantization (portable) of the float reference",
        )
    ]
    for variant in family.broken:
        model, note = _broken(family, variant, weights)
        path = _save(model, folder / f"{variant}.onnx", family.external_data)
        shipped.append(ShippedModel(variant, path, f"{family.summary}: {note}"))
    return FamilyFiles(family, reference_path, samples_path, tuple(shipped))


def write_samples(feeds: Sequence[Feed], broadcast: frozenset[str], path: Path) -> Path:
    """Write feeds as an npz in the SPEC layout: inputs in `broadcast` once, at their declared
    shape (one feed, shared); every other input stacked on a new leading axis."""
    arrays: dict[str, np.ndarray] = {}
    for name in feeds[0]:
        if name in broadcast:
            if any(not np.array_equal(feed[name], feeds[0][name]) for feed in feeds):
                raise ValueError(f"broadcast input {name!r} differs between feeds")
            arrays[name] = feeds[0][name]
        else:
            arrays[name] = np.stack([feed[name] for feed in feeds])
    with path.open("wb") as out:
        np.savez(out, **arrays)  # type: ignore[arg-type]
    return path


# --- broken variants -------------------------------------------------------------------------


def _broken(family: Family, variant: str, weights: Weights) -> tuple[onnx.ModelProto, str]:
    if variant == SHIFTED_BIAS:
        if family.shifted_bias is None:
            raise ValueError(f"{family.name} has no one-value bias to shift")
        name, amount = family.shifted_bias
        shifted = {**weights, name: weights[name] + np.float32(amount)}
        return family.build(shifted), f"{name} raised by {amount:+g}, the one-value output moves"
    if variant == WEIGHT_NOISE:
        rng = np.random.default_rng(family.seed + _NOISE_SEED)
        noisy = {k: _noisy(rng, v) for k, v in weights.items()}
        return family.build(noisy), f"Gaussian noise of {_NOISE_SHARE:.0%} of each weight's std"
    if variant == SIGN_FLIP:
        flipped = {k: -v if k in family.last_layer else v for k, v in weights.items()}
        negated = ", ".join(family.last_layer)
        return family.build(flipped), f"last layer's weights negated ({negated})"
    if variant == OTHER_MODEL:
        other = family.make_weights(family.seed + _OTHER_SEED)
        return family.build(other), "another model: same inputs and outputs, other weights"
    if variant == NAN_PATH:
        if family.nan_path is None:
            raise ValueError(f"{family.name} has no NaN path")
        spec = family.nan_path
        outputs = ", ".join(spec.outputs)
        return _with_nan_path(family.build(weights), spec), (
            f"NaN on {outputs} when {spec.source}'s first value < {spec.threshold:g}"
        )
    if variant == BOXES_OFF:
        if family.boxes_output is None:
            raise ValueError(f"{family.name} has no boxes output")
        factors = np.array([_BOXES_OFF_FACTOR] * 4 + [1.0, 1.0], dtype=np.float32)
        return _with_scaled_output(family.build(weights), family.boxes_output, factors), (
            f"box coordinates scaled by {_BOXES_OFF_FACTOR:g} in post-processing, scores kept"
        )
    raise ValueError(f"unknown broken variant {variant!r}")


def _noisy(rng: np.random.Generator, values: np.ndarray) -> np.ndarray:
    noise = rng.standard_normal(values.shape) * (_NOISE_SHARE * float(values.std()))
    return (values + noise).astype(np.float32)


def _rename_output(model: onnx.ModelProto, output: str) -> tuple[str, int]:
    """Let the node that writes `output` write `<output>.raw` instead; return that name and
    the output's rank."""
    raw = f"{output}.raw"
    for node in model.graph.node:
        node.output[:] = [raw if name == output else name for name in node.output]
    for value in model.graph.output:
        if value.name == output:
            return raw, len(value.type.tensor_type.shape.dim)
    raise ValueError(f"the model has no output {output!r}")


def _with_nan_path(model: onnx.ModelProto, spec: NanPath) -> onnx.ModelProto:
    """Add Sqrt(first value of the source - threshold) * 0 to each output: zero for feeds at
    or above the threshold, NaN below it, as a wrong-domain bug does in the field."""
    nodes = [
        helper.make_node("Flatten", [spec.source], ["nan.flat"], axis=1),
        helper.make_node("Slice", ["nan.flat", "nan.zero_i", "nan.one_i", "nan.one_i"], ["nan.x0"]),
        helper.make_node("Sub", ["nan.x0", "nan.threshold"], ["nan.shifted"]),
        helper.make_node("Sqrt", ["nan.shifted"], ["nan.root"]),
        helper.make_node("Mul", ["nan.root", "nan.zero"], ["nan.term"]),
    ]
    constants: dict[str, np.ndarray] = {
        "nan.zero_i": np.array([0], np.int64),
        "nan.one_i": np.array([1], np.int64),
        "nan.threshold": np.array(spec.threshold, np.float32),
        "nan.zero": np.array(0.0, np.float32),
    }
    for output in spec.outputs:
        raw, rank = _rename_output(model, output)
        shape = f"nan.shape.{output}"
        constants[shape] = np.array([-1] + [1] * (rank - 1), np.int64)
        nodes += [
            helper.make_node("Reshape", ["nan.term", shape], [f"nan.term.{output}"]),
            helper.make_node("Add", [raw, f"nan.term.{output}"], [output]),
        ]
    return _extended(model, nodes, constants)


def _with_scaled_output(
    model: onnx.ModelProto, output: str, factors: np.ndarray
) -> onnx.ModelProto:
    """Multiply `output` by `factors` along its last axis, as a wrong resize ratio does."""
    raw, _ = _rename_output(model, output)
    node = helper.make_node("Mul", [raw, f"{output}.factors"], [output])
    return _extended(model, [node], {f"{output}.factors": factors})


def _extended(
    model: onnx.ModelProto, nodes: list[onnx.NodeProto], constants: dict[str, np.ndarray]
) -> onnx.ModelProto:
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in constants.items())
    onnx.checker.check_model(model)
    return model


# --- building, running, saving ---------------------------------------------------------------


def _value(name: str, elem: int, shape: Sequence[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, list(shape))


def _node(op: str, inputs: list[str], outputs: list[str], **attrs: Any) -> onnx.NodeProto:
    """A node named after what it writes, as exporters name them, so quantization can skip it."""
    return helper.make_node(op, inputs, outputs, name=f"{outputs[0]}/{op}", **attrs)


def _dense(x: str, weight: str, bias: str, out: str) -> list[onnx.NodeProto]:
    """x @ weight + bias, as exporters write a Linear layer."""
    return [_node("MatMul", [x, weight], [f"{out}.mm"]), _node("Add", [f"{out}.mm", bias], [out])]


def _model(
    name: str,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    tensors: dict[str, np.ndarray],
) -> onnx.ModelProto:
    initializers = [numpy_helper.from_array(np.asarray(v), k) for k, v in tensors.items()]
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=PRODUCER
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: unused-initializer warnings are noise here
    return ort.InferenceSession(
        model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
    )


def _tensor_values(model: onnx.ModelProto, tensor: str, feeds: list[Feed]) -> np.ndarray:
    """The values an intermediate tensor takes on each feed, stacked on a new leading axis."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(helper.make_empty_tensor_value_info(tensor))
    session = _session(probe)
    return np.stack([session.run([tensor], feed)[0] for feed in feeds])


def _calibrated_head(
    family_build: Callable[[Weights], onnx.ModelProto],
    weights: Weights,
    feeds: list[Feed],
    *,
    logits: str,
    weight: str,
    bias: str,
    mean: float,
    std: float,
) -> Weights:
    """Scale a head's weight and set its bias so the logits it writes have the given mean
    and std over `feeds` (logits are linear in both, so one run decides)."""
    zeroed = {**weights, bias: np.zeros_like(weights[bias])}
    values = _tensor_values(family_build(zeroed), logits, feeds).astype(np.float64)
    scale = std / float(values.std())
    return {
        **weights,
        weight: (weights[weight] * scale).astype(np.float32),
        bias: np.full_like(weights[bias], mean - scale * float(values.mean())),
    }


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Drop onnxruntime's "Please consider pre-processing" root-logger warning."""

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Please consider")

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _quantized_dynamic(model: onnx.ModelProto) -> onnx.ModelProto:
    from satchel.manager.quantize import quantize_dynamic_portable

    with tempfile.TemporaryDirectory(prefix="satchel-catalogue-") as tmp, _quiet_quantizer():
        source, target = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        onnx.save_model(model, str(source))
        quantize_dynamic_portable(source, target)
        return onnx.load(str(target))


def _save(model: onnx.ModelProto, path: Path, external_data: bool) -> Path:
    if external_data:
        # saving with external data rewrites the tensors it is given into file references
        detached = onnx.ModelProto()
        detached.CopyFrom(model)
        onnx.save_model(
            detached,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + ".data",
            size_threshold=0,
        )
    else:
        onnx.save_model(model, str(path))
    return path


def _he(
    rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, gain: float = 1.0
) -> np.ndarray:
    return (rng.standard_normal(shape) * gain * math.sqrt(2.0 / fan_in)).astype(np.float32)


def _bias(rng: np.random.Generator, size: int) -> np.ndarray:
    return (rng.standard_normal(size) * 0.1).astype(np.float32)


def _calibration_feeds(
    make_feeds: Callable[[np.random.Generator, int], list[Feed]], seed: int
) -> list[Feed]:
    return make_feeds(np.random.default_rng(seed + _CALIBRATION_SEED), _CALIBRATION_FEEDS)


# --- sample feeds ----------------------------------------------------------------------------


def _normal_rows(name: str, width: int) -> Callable[[np.random.Generator, int], list[Feed]]:
    def make(rng: np.random.Generator, count: int) -> list[Feed]:
        return [{name: rng.standard_normal((1, width)).astype(np.float32)} for _ in range(count)]

    return make


def _scene(rng: np.random.Generator) -> np.ndarray:
    """A [1, 3, 32, 32] image in 0..1: dim noisy background, one to three bright rectangles."""
    image = rng.uniform(0.0, 0.4, (3, 32, 32))
    for _ in range(int(rng.integers(1, 4))):
        x, y = rng.integers(0, 26, 2)
        w, h = rng.integers(5, 14, 2)
        image[:, y : y + h, x : x + w] = rng.uniform(0.5, 1.0, (3, 1, 1))
    return image[None].astype(np.float32)


def _scenes(rng: np.random.Generator, count: int) -> list[Feed]:
    return [{"image": _scene(rng)} for _ in range(count)]


def _audio_frames(rng: np.random.Generator, count: int) -> list[Feed]:
    """32 ms frames at 16 kHz, every other one voiced (harmonics of a 100-250 Hz pitch), all
    from the same mid-stream state and sample rate (stored once in the npz)."""
    state = np.tanh(rng.standard_normal((2, 1, 128)) * 0.5).astype(np.float32)
    sample_rate = np.array(16000, dtype=np.int64)
    t = np.arange(512) / 16000.0
    feeds: list[Feed] = []
    for i in range(count):
        frame = rng.normal(0.0, 0.01, 512)
        if i % 2:
            pitch = rng.uniform(100.0, 250.0)
            for harmonic in (1, 2, 3):
                phase = rng.uniform(0, 2 * math.pi)
                frame += rng.uniform(0.05, 0.2) * np.sin(2 * math.pi * pitch * harmonic * t + phase)
        frame = np.clip(frame, -1.0, 1.0)
        feeds.append({"input": frame[None].astype(np.float32), "state": state, "sr": sample_rate})
    return feeds


def _multi_io_rows(rng: np.random.Generator, count: int) -> list[Feed]:
    """Image features and metadata (hour of day, device type, visit count, returning flag)."""
    feeds: list[Feed] = []
    for _ in range(count):
        meta = [rng.integers(0, 24), rng.integers(0, 4), rng.integers(0, 10), rng.integers(0, 2)]
        feeds.append(
            {
                "image": rng.standard_normal((1, 16)).astype(np.float32),
                "meta": np.array([meta], dtype=np.int64),
            }
        )
    return feeds


# --- 1. recurrent-state-scalar: a voice-activity detector ------------------------------------


def _vad_build(w: Weights) -> onnx.ModelProto:
    nodes = [
        _node("Cast", ["sr"], ["sr.float"], to=TensorProto.FLOAT),
        _node("Div", ["sr.float", "sr.base"], ["sr.ratio"]),
        _node("Mul", ["input", "sr.ratio"], ["input.scaled"]),
        *_dense("input.scaled", "encoder.weight", "encoder.bias", "encoder.pre"),
        _node("Tanh", ["encoder.pre"], ["encoder.out"]),
        _node("Gather", ["state", "state.index0"], ["h1"], axis=0),
        _node("Gather", ["state", "state.index1"], ["h2"], axis=0),
    ]
    previous = "encoder.out"
    for layer, hidden in (("rnn1", "h1"), ("rnn2", "h2")):
        nodes += [
            _node("MatMul", [previous, f"{layer}.weight_ih"], [f"{layer}.ih"]),
            _node("MatMul", [hidden, f"{layer}.weight_hh"], [f"{layer}.hh"]),
            _node("Add", [f"{layer}.ih", f"{layer}.hh"], [f"{layer}.sum"]),
            _node("Add", [f"{layer}.sum", f"{layer}.bias"], [f"{layer}.pre"]),
            _node("Tanh", [f"{layer}.pre"], [f"{layer}.h"]),
            _node("Unsqueeze", [f"{layer}.h", "state.axis0"], [f"{layer}.h3"]),
        ]
        previous = f"{layer}.h"
    nodes += [
        *_dense("rnn2.h", "decoder.weight", "decoder.bias", "decoder.logit"),
        _node("Sigmoid", ["decoder.logit"], ["output"]),
        _node("Concat", ["rnn1.h3", "rnn2.h3"], ["stateN"], axis=0),
    ]
    constants: dict[str, np.ndarray] = {
        "sr.base": np.array(16000.0, np.float32),
        "state.index0": np.array(0, np.int64),
        "state.index1": np.array(1, np.int64),
        "state.axis0": np.array([0], np.int64),
    }
    inputs = [
        _value("input", TensorProto.FLOAT, ["batch", 512]),
        _value("state", TensorProto.FLOAT, [2, "batch", 128]),
        _value("sr", TensorProto.INT64, []),
    ]
    outputs = [
        _value("output", TensorProto.FLOAT, ["batch", 1]),
        _value("stateN", TensorProto.FLOAT, [2, "batch", 128]),
    ]
    return _model("voice_activity", nodes, inputs, outputs, {**w, **constants})


def _vad_weights(seed: int) -> Weights:
    rng = np.random.default_rng(seed)
    weights = {
        # gain 20: audio frames have an RMS of 0.01-0.2, the encoder should not idle near zero
        "encoder.weight": _he(rng, (512, 128), 512, gain=20.0),
        "encoder.bias": _bias(rng, 128),
        "rnn1.weight_ih": _he(rng, (128, 128), 128),
        "rnn1.weight_hh": _he(rng, (128, 128), 128, gain=0.5),
        "rnn1.bias": _bias(rng, 128),
        "rnn2.weight_ih": _he(rng, (128, 128), 128),
        "rnn2.weight_hh": _he(rng, (128, 128), 128, gain=0.5),
        "rnn2.bias": _bias(rng, 128),
        "decoder.weight": _he(rng, (128, 1), 128),
        "decoder.bias": np.zeros(1, np.float32),
    }
    feeds = _calibration_feeds(_audio_frames, seed)
    # speech probabilities mostly 0.05-0.5: a +4 logit shift then moves every one by >= 0.3
    return _calibrated_head(
        _vad_build,
        weights,
        feeds,
        logits="decoder.logit",
        weight="decoder.weight",
        bias="decoder.bias",
        mean=-1.5,
        std=0.6,
    )


# --- 2. probability: a rare-event detector ---------------------------------------------------


def _probability_build(w: Weights) -> onnx.ModelProto:
    nodes = [
        *_dense("features", "fc1.weight", "fc1.bias", "fc1.pre"),
        _node("Relu", ["fc1.pre"], ["fc1.out"]),
        *_dense("fc1.out", "head.weight", "head.bias", "head.logit"),
        _node("Sigmoid", ["head.logit"], ["probability"]),
    ]
    inputs = [_value("features", TensorProto.FLOAT, [1, 64])]
    outputs = [_value("probability", TensorProto.FLOAT, [1, 1])]
    return _model("rare_event_detector", nodes, inputs, outputs, w)


def _probability_weights(seed: int) -> Weights:
    rng = np.random.default_rng(seed)
    weights = {
        "fc1.weight": _he(rng, (64, 32), 64),
        "fc1.bias": _bias(rng, 32),
        "head.weight": _he(rng, (32, 1), 32),
        "head.bias": np.zeros(1, np.float32),
    }
    feeds = _calibration_feeds(_normal_rows("features", 64), seed)
    # a rare event: logits around logit(0.05) = -2.94, probabilities about 0.03-0.08
    return _calibrated_head(
        _probability_build,
        weights,
        feeds,
        logits="head.logit",
        weight="head.weight",
        bias="head.bias",
        mean=-2.94,
        std=0.25,
    )


# --- 3. detector: 16 boxes (x1, y1, x2, y2, score, class) in 320-pixel coordinates -----------

_ANCHORS = 16
_DETECTOR_CLASSES = 3
_SOURCE_IMAGE_SIZE = 320.0  # pixels of the camera frame the 32x32 input was resized from
_BACKGROUND_PRIOR = -1.5  # added to every anchor's score logit
_CLASS_SPREAD = 0.5  # how much the image moves class logits, against the anchor's prior
_CLASS_PRIOR = 3.0  # added to the logit of the class each anchor leans to


def _detector_build(w: Weights) -> onnx.ModelProto:
    per_anchor = 4 + 1 + _DETECTOR_CLASSES
    nodes = [
        _node(
            "Conv",
            ["image", "backbone.weight", "backbone.bias"],
            ["backbone.pre"],
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
            strides=[2, 2],
        ),
        _node("Relu", ["backbone.pre"], ["backbone.out"]),
        _node("Flatten", ["backbone.out"], ["features"], axis=1),
        *_dense("features", "head.weight", "head.bias", "head.out"),
        _node("Reshape", ["head.out", "head.shape"], ["anchors"]),
        _node(
            "Split",
            ["anchors", "split.fields"],
            ["corner.raw", "extent.raw", "score.raw", "class.logits"],
            axis=2,
        ),
        _node("Sigmoid", ["corner.raw"], ["corner.unit"]),
        _node("Sigmoid", ["extent.raw"], ["extent.unit"]),
        _node("Mul", ["corner.unit", "half"], ["x1y1"]),
        _node("Mul", ["extent.unit", "half"], ["extent"]),
        _node("Add", ["x1y1", "extent"], ["x2y2"]),
        _node("Concat", ["x1y1", "x2y2"], ["corners.unit"], axis=2),
        _node("Mul", ["corners.unit", "source.size"], ["corners"]),
        _node("Sigmoid", ["score.raw"], ["score"]),
        _node("ArgMax", ["class.logits"], ["class.index"], axis=2, keepdims=1),
        _node("Cast", ["class.index"], ["class"], to=TensorProto.FLOAT),
        _node("Concat", ["corners", "score", "class"], ["boxes"], axis=2),
    ]
    constants: dict[str, np.ndarray] = {
        "head.shape": np.array([1, _ANCHORS, per_anchor], np.int64),
        "split.fields": np.array([2, 2, 1, _DETECTOR_CLASSES], np.int64),
        "half": np.array(0.5, np.float32),
        "source.size": np.array(_SOURCE_IMAGE_SIZE, np.float32),
    }
    inputs = [_value("image", TensorProto.FLOAT, [1, 3, 32, 32])]
    outputs = [_value("boxes", TensorProto.FLOAT, [1, _ANCHORS, 6])]
    return _model("box_detector", nodes, inputs, outputs, {**w, **constants})


def _detector_weights(seed: int) -> Weights:
    rng = np.random.default_rng(seed)
    per_anchor = 4 + 1 + _DETECTOR_CLASSES
    weights = {
        "backbone.weight": _he(rng, (8, 3, 3, 3), 27),
        "backbone.bias": _bias(rng, 8),
        "head.weight": _he(rng, (8 * 16 * 16, _ANCHORS * per_anchor), 8 * 16 * 16),
        "head.bias": np.zeros(_ANCHORS * per_anchor, np.float32),
    }
    feeds = _calibration_feeds(_scenes, seed)
    # raw values spread over the sigmoid's useful range: boxes all over the frame
    calibrated = _calibrated_head(
        _detector_build,
        weights,
        feeds,
        logits="head.out",
        weight="head.weight",
        bias="head.bias",
        mean=0.0,
        std=1.5,
    )
    # as a trained detector: most anchors see background (low scores), and each anchor leans
    # to one class clearly enough that int8 rounding does not flip it
    head_weight = calibrated["head.weight"].reshape(-1, _ANCHORS, per_anchor).copy()
    head_bias = calibrated["head.bias"].reshape(_ANCHORS, per_anchor).copy()
    head_bias[:, 4] += _BACKGROUND_PRIOR
    head_weight[:, :, 5:] *= _CLASS_SPREAD
    head_bias[np.arange(_ANCHORS), 5 + rng.integers(0, _DETECTOR_CLASSES, _ANCHORS)] += _CLASS_PRIOR
    return {
        **calibrated,
        "head.weight": head_weight.reshape(calibrated["head.weight"].shape),
        "head.bias": head_bias.reshape(-1),
    }


# --- 4. segmentation: per-pixel foreground/background probabilities --------------------------


def _segmentation_build(w: Weights) -> onnx.ModelProto:
    nodes = [
        _node(
            "Conv",
            ["image", "encoder.weight", "encoder.bias"],
            ["encoder.pre"],
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
        ),
        _node("Relu", ["encoder.pre"], ["encoder.out"]),
        _node(
            "Conv",
            ["encoder.out", "classifier.weight", "classifier.bias"],
            ["mask.logits"],
            kernel_shape=[1, 1],
        ),
        _node("Softmax", ["mask.logits"], ["mask"], axis=1),
    ]
    inputs = [_value("image", TensorProto.FLOAT, [1, 3, 32, 32])]
    outputs = [_value("mask", TensorProto.FLOAT, [1, 2, 32, 32])]
    return _model("segmenter", nodes, inputs, outputs, w)


def _segmentation_weights(seed: int) -> Weights:
    rng = np.random.default_rng(seed)
    weights = {
        "encoder.weight": _he(rng, (8, 3, 3, 3), 27),
        "encoder.bias": _bias(rng, 8),
        "classifier.weight": _he(rng, (2, 8, 1, 1), 8),
        "classifier.bias": np.zeros(2, np.float32),
    }
    feeds = _calibration_feeds(_scenes, seed)
    # logits with a std of 1.5: masks clear away from class boundaries, yet not so steep at
    # them that int8 rounding moves a boundary pixel's probability by 5% (at 3 it moved 6.8%)
    return _calibrated_head(
        _segmentation_build,
        weights,
        feeds,
        logits="mask.logits",
        weight="classifier.weight",
        bias="classifier.bias",
        mean=0.0,
        std=1.5,
    )


# --- 5. embedding: an L2-normalised 128-d vector ---------------------------------------------


def _embedding_build(w: Weights) -> onnx.ModelProto:
    nodes = [
        *_dense("features", "fc1.weight", "fc1.bias", "fc1.pre"),
        _node("Relu", ["fc1.pre"], ["fc1.out"]),
        *_dense("fc1.out", "projection.weight", "projection.bias", "projection.out"),
        _node("ReduceL2", ["projection.out"], ["norm"], axes=[-1], keepdims=1),
        _node("Max", ["norm", "norm.eps"], ["norm.safe"]),
        _node("Div", ["projection.out", "norm.safe"], ["embedding"]),
    ]
    inputs = [_value("features", TensorProto.FLOAT, [1, 64])]
    outputs = [_value("embedding", TensorProto.FLOAT, [1, 128])]
    tensors = {**w, "norm.eps": np.array(1e-12, np.float32)}
    return _model("embedder", nodes, inputs, outputs, tensors)


def _embedding_weights(seed: int) -> Weights:
    rng = np.random.default_rng(seed)
    return {
        "fc1.weight": _he(rng, (64, 128), 64),
        "fc1.bias": _bias(rng, 128),
        "projection.weight": _he(rng, (128, 128), 128),
        "projection.bias": _bias(rng, 128),
    }


# --- 6. multi-io: image features and metadata in, class scores and a value out ---------------


def _multi_io_build(w: Weights) -> onnx.ModelProto:
    nodes = [
        _node("Cast", ["meta"], ["meta.float"], to=TensorProto.FLOAT),
        _node("Mul", ["meta.float", "meta.scale"], ["meta.scaled"]),
        _node("Concat", ["image", "meta.scaled"], ["joint"], axis=1),
        *_dense("joint", "trunk.weight", "trunk.bias", "trunk.pre"),
        _node("Relu", ["trunk.pre"], ["trunk.out"]),
        *_dense("trunk.out", "policy.weight", "policy.bias", "logits"),
        *_dense("trunk.out", "value.weight", "value.bias", "value"),
    ]
    inputs = [
        _value("image", TensorProto.FLOAT, [1, 16]),
        _value("meta", TensorProto.INT64, [1, 4]),
    ]
    outputs = [
        _value("logits", TensorProto.FLOAT, [1, 10]),
        _value("value", TensorProto.FLOAT, [1, 1]),
    ]
    # hour, device type, visit count, returning flag -> roughly 0..1
    tensors = {**w, "meta.scale": np.array([1 / 24, 1 / 4, 1 / 10, 1.0], np.float32)}
    return _model("ranker", nodes, inputs, outputs, tensors)


def _multi_io_weights(seed: int) -> Weights:
    rng = np.random.default_rng(seed)
    return {
        "trunk.weight": _he(rng, (20, 64), 20),
        "trunk.bias": _bias(rng, 64),
        "policy.weight": _he(rng, (64, 10), 64),
        "policy.bias": _bias(rng, 10),
        "value.weight": _he(rng, (64, 1), 64),
        "value.bias": _bias(rng, 1),
    }


# --- 7. classifier and 8. its larger sibling saved with external data ------------------------


def _mlp_build(layers: Sequence[int], graph_name: str) -> Callable[[Weights], onnx.ModelProto]:
    def build(w: Weights) -> onnx.ModelProto:
        nodes: list[onnx.NodeProto] = []
        previous = "input"
        for i in range(1, len(layers)):
            name = f"fc{i}"
            nodes += _dense(previous, f"{name}.weight", f"{name}.bias", f"{name}.pre")
            if i < len(layers) - 1:
                nodes.append(_node("Relu", [f"{name}.pre"], [f"{name}.out"]))
                previous = f"{name}.out"
        nodes.append(_node("Identity", [f"fc{len(layers) - 1}.pre"], ["logits"]))
        inputs = [_value("input", TensorProto.FLOAT, [1, layers[0]])]
        outputs = [_value("logits", TensorProto.FLOAT, [1, layers[-1]])]
        return _model(graph_name, nodes, inputs, outputs, w)

    return build


def _mlp_weights(layers: Sequence[int]) -> Callable[[int], Weights]:
    def make(seed: int) -> Weights:
        rng = np.random.default_rng(seed)
        weights: Weights = {}
        for i in range(1, len(layers)):
            weights[f"fc{i}.weight"] = _he(rng, (layers[i - 1], layers[i]), layers[i - 1])
            weights[f"fc{i}.bias"] = _bias(rng, layers[i])
        return weights

    return make


_CLASSIFIER = (64, 128, 10)
_LARGE_CLASSIFIER = (256, 512, 256, 10)  # about 1 MB of float32 weights

_STANDARD_BREAKS = (WEIGHT_NOISE, SIGN_FLIP, NAN_PATH, OTHER_MODEL)

FAMILIES: tuple[Family, ...] = (
    Family(
        name="recurrent-state-scalar",
        summary="voice-activity detector (audio frame, recurrent state, sample-rate scalar)",
        seed=101,
        make_weights=_vad_weights,
        build=_vad_build,
        make_feeds=_audio_frames,
        sample_count=8,
        broken=(SHIFTED_BIAS,),
        broadcast=frozenset({"state", "sr"}),
        shifted_bias=("decoder.bias", 4.0),
    ),
    Family(
        name="probability",
        summary="rare-event detector (one sigmoid probability, about 0.05)",
        seed=202,
        make_weights=_probability_weights,
        build=_probability_build,
        make_feeds=_normal_rows("features", 64),
        sample_count=16,
        broken=(SHIFTED_BIAS,),
        shifted_bias=("head.bias", 4.0),
    ),
    Family(
        name="detector",
        summary="box detector (16 boxes x1 y1 x2 y2 score class, 320-pixel frame)",
        seed=303,
        make_weights=_detector_weights,
        build=_detector_build,
        make_feeds=_scenes,
        sample_count=12,
        broken=(BOXES_OFF, OTHER_MODEL),
        boxes_output="boxes",
    ),
    Family(
        name="segmentation",
        summary="segmenter (per-pixel foreground/background softmax)",
        seed=404,
        make_weights=_segmentation_weights,
        build=_segmentation_build,
        make_feeds=_scenes,
        sample_count=10,
        broken=_STANDARD_BREAKS,
        last_layer=("classifier.weight",),
        nan_path=NanPath("image", 0.2, ("mask",)),
    ),
    Family(
        name="embedding",
        summary="embedder (L2-normalised 128-d vector)",
        seed=505,
        make_weights=_embedding_weights,
        build=_embedding_build,
        make_feeds=_normal_rows("features", 64),
        sample_count=12,
        broken=_STANDARD_BREAKS,
        last_layer=("projection.weight",),
        nan_path=NanPath("features", 0.0, ("embedding",)),
    ),
    Family(
        name="multi-io",
        summary="ranker (image features + int64 metadata in; class scores + value out)",
        seed=606,
        make_weights=_multi_io_weights,
        build=_multi_io_build,
        make_feeds=_multi_io_rows,
        sample_count=12,
        broken=(SHIFTED_BIAS, *_STANDARD_BREAKS),
        last_layer=("policy.weight", "value.weight"),
        shifted_bias=("value.bias", 1.0),
        nan_path=NanPath("image", 0.0, ("logits", "value")),
    ),
    Family(
        name="classifier",
        summary="MLP classifier (10 class scores)",
        seed=707,
        make_weights=_mlp_weights(_CLASSIFIER),
        build=_mlp_build(_CLASSIFIER, "classifier"),
        make_feeds=_normal_rows("input", _CLASSIFIER[0]),
        sample_count=16,
        broken=_STANDARD_BREAKS,
        last_layer=(f"fc{len(_CLASSIFIER) - 1}.weight",),
        nan_path=NanPath("input", 0.0, ("logits",)),
    ),
    Family(
        name="external-data",
        summary="larger MLP classifier saved with its weights in a .data file beside it",
        seed=808,
        make_weights=_mlp_weights(_LARGE_CLASSIFIER),
        build=_mlp_build(_LARGE_CLASSIFIER, "large_classifier"),
        make_feeds=_normal_rows("input", _LARGE_CLASSIFIER[0]),
        sample_count=8,
        broken=(WEIGHT_NOISE,),
        last_layer=(f"fc{len(_LARGE_CLASSIFIER) - 1}.weight",),
        external_data=True,
    ),
)
