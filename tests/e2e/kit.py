"""What the admin makes once for the whole end-to-end suite: keys by `satchel keys init`, ONNX
models, and bundles by `satchel bundle build`; and inputs that a model does or does not keep
finite on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from satchel.agent.runtimes import get_runtime
from tests.e2e.commands import SATCHEL, run
from tests.factory.model_makers import INPUT_NAME, make_mlp_weights, onnx_mlp, sample_inputs

IN_DIM, HIDDEN, OUT_DIM = 8, 16, 3
DEVICE_CLASS = "edge-box"


@dataclass(frozen=True)
class Kit:
    """What the admin made once for the whole suite."""

    root: Path  # session directory
    keydir: Path
    good: Path  # ONNX models
    newer: Path
    nan: Path
    big: Path
    v1: Path  # bundles: vision 1.0.0 (sequence 100), good, probation 1 s
    v1_1: Path  # vision 1.1.0 (150), another good model
    bad: Path  # vision 2.0.0 (200): NaN for a negative first feature; probation 120 s
    big_bundle: Path  # vision 3.0.0 (300), a few MB

    def bundle(self, name: str) -> Path:
        return {"v1": self.v1, "v1_1": self.v1_1, "bad": self.bad,
                "big": self.big_bundle}[name]


def positive(n: int, seed: int) -> np.ndarray:
    x = sample_inputs(IN_DIM, n, seed)
    x[:, 0] = np.abs(x[:, 0]) + 0.1
    return x


def negative(n: int, seed: int) -> np.ndarray:
    x = sample_inputs(IN_DIM, n, seed)
    x[:, 0] = -np.abs(x[:, 0]) - 0.1
    return x


def _build(kit_dir: Path, keydir: Path, model: Path, samples: Path, version: str,
           sequence: int, probation_s: float) -> Path:
    out = kit_dir / f"vision-{version}.satchel"
    run(SATCHEL, "bundle", "build", "--name", "vision", "--version", version, "--model", model,
        "--samples", samples, "--sequence", str(sequence), "--device-class", DEVICE_CLASS,
        "--probation-s", str(probation_s), "--min-samples", "5", "--max-nan-rate", "0",
        "--key", keydir / "signing.key", "-o", out)
    return out


def make_kit(d: Path) -> Kit:
    """Keys, models and bundles in `d`."""
    keydir = d / "keys"
    run(SATCHEL, "keys", "init", keydir)
    w1 = make_mlp_weights(IN_DIM, HIDDEN, OUT_DIM, seed=1)
    w2 = make_mlp_weights(IN_DIM, HIDDEN, OUT_DIM, seed=2)
    good, newer = onnx_mlp(w1, d / "good.onnx"), onnx_mlp(w2, d / "newer.onnx")
    nan = onnx_mlp(w2, d / "nan.onnx", nan_for_negative_first_feature=True)
    big = onnx_mlp(make_mlp_weights(IN_DIM, 65536, OUT_DIM, seed=3), d / "big.onnx")
    samples = d / "samples.npz"
    # the NaN model passes its smoke test on these: their first feature is positive
    np.savez(samples, **{INPUT_NAME: positive(16, seed=0)})  # type: ignore[arg-type]
    return Kit(
        root=d, keydir=keydir, good=good, newer=newer, nan=nan, big=big,
        v1=_build(d, keydir, good, samples, "1.0.0", 100, 1.0),
        v1_1=_build(d, keydir, newer, samples, "1.1.0", 150, 1.0),
        bad=_build(d, keydir, nan, samples, "2.0.0", 200, 120.0),
        big_bundle=_build(d, keydir, big, samples, "3.0.0", 300, 1.0),
    )


def expected_outputs(model: Path, x: np.ndarray) -> np.ndarray:
    """What the model itself predicts, run in this process."""
    loaded = get_runtime("onnxruntime").load(model)
    (out,) = loaded.run({loaded.inputs[0].name: x.astype(np.float32)}).values()
    return np.asarray(out)
