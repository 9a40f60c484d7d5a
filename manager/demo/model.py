"""The demo's model: a classifier trained here in numpy, exported to ONNX, and a bad twin."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from satchel.manager.modelgen import mlp_forward, onnx_mlp, train_mlp

IN_DIM, HIDDEN, CLASSES = 64, 256, 10


@dataclass(frozen=True)
class DemoData:
    train_accuracy: float
    holdout_x: np.ndarray  # live traffic for the devices
    holdout_y: np.ndarray


def make_models(out: Path) -> DemoData:
    """Train the classifier; write float.onnx, calibration.npz, samples.npz, and the bad
    release's nan.onnx and its lab samples (whose first feature is never negative)."""
    weights, x, y = train_mlp(n_samples=3000, in_dim=IN_DIM, hidden=HIDDEN, classes=CLASSES,
                              epochs=8)
    train, holdout = slice(0, 2400), slice(2400, None)
    onnx_mlp(weights, out / "float.onnx")
    np.savez(out / "calibration.npz", input=x[:256])
    np.savez(out / "samples.npz", input=x[256:320])
    # The bad release: same weights, but a defect that turns outputs into NaN for inputs whose
    # first feature is negative. Its lab samples never show it, so it passes its smoke test.
    onnx_mlp(weights, out / "nan.onnx", nan_for_negative_first_feature=True)
    lab = x[x[:, 0] >= 0][:64]
    np.savez(out / "lab-samples.npz", input=lab)
    accuracy = float(np.mean(mlp_forward(weights, x[train]).argmax(axis=1) == y[train]))
    return DemoData(accuracy, x[holdout], y[holdout])
