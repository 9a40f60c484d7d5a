"""Fixtures for the admin CLI tests: `cli` (see `invoke.Cli`), the session's test models,
key directories, a built INT8 bundle, and a snapshot of a directory's files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from satchel.manager.keydir import init_keydir
from tests.cli.invoke import Cli
from tests.cli.model_files import IN_DIM, Models
from tests.factory.model_makers import (
    make_mlp_weights,
    onnx_mlp,
    quantize_onnx,
    sample_inputs,
    tflite_mlp,
)
from tests.factory.trees import dir_state


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    root = tmp_path_factory.mktemp("models")
    weights = make_mlp_weights(in_dim=IN_DIM, seed=0)
    float_onnx = onnx_mlp(weights, root / "float.onnx")
    int8_onnx = root / "int8.onnx"
    quantize_onnx(float_onnx, int8_onnx)
    samples, wrong = root / "samples.npz", root / "wrong-samples.npz"
    np.savez(samples, input=sample_inputs(IN_DIM, 16, seed=1))
    np.savez(wrong, features=sample_inputs(IN_DIM, 16, seed=1))
    return Models(
        float_onnx=float_onnx,
        int8_onnx=int8_onnx,
        other_onnx=onnx_mlp(make_mlp_weights(in_dim=IN_DIM, seed=7), root / "other.onnx"),
        float_tflite=tflite_mlp(weights, root / "float.tflite"),
        int8_tflite=tflite_mlp(weights, root / "int8.tflite", int8=True),
        samples=samples,
        wrong_samples=wrong,
    )


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


@pytest.fixture
def keydir(tmp_path: Path) -> Path:
    """A fresh, unencrypted key directory (root v1, one signing key), for tests that change it."""
    path = tmp_path / "keys"
    init_keydir(path)
    return path


@pytest.fixture(scope="session")
def shared_keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A key directory that no test changes."""
    path = tmp_path_factory.mktemp("shared") / "keys"
    init_keydir(path)
    return path


@pytest.fixture(scope="session")
def int8_bundle(
    tmp_path_factory: pytest.TempPathFactory, models: Models, shared_keydir: Path
) -> Path:
    """An INT8 ONNX bundle checked against its float reference, built once (read-only)."""
    out = tmp_path_factory.mktemp("bundles") / "int8.satchel"
    Cli(out.parent).run(
        "bundle", "build", "--name", "detector", "--version", "1.2.3", "--sequence", "42",
        "--model", models.int8_onnx, "--reference", models.float_onnx,
        "--samples", models.samples, "--device-class", "cam-v2", "--latency-budget-ms", "50",
        "--max-memory-mb", "64", "--key", shared_keydir / "signing.key", "-o", out,
    ).ok()
    return out


@pytest.fixture
def snapshot() -> Any:
    """`snapshot(dir)`: the files of a directory with modes and contents."""
    return dir_state
