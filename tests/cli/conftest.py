"""Fixtures for the admin CLI tests.

`cli.run(...)` calls the `satchel` command in-process through click's CliRunner (fast, for
the bulk of the cases); `cli.spawn(...)` runs the installed console script as a real
subprocess, for the handful of cases that prove the script, its exit codes and its stderr.
Both return an `Outcome` whose helpers check the exit-code contract of SPEC.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from satchel.manager.cli import main
from satchel.manager.keydir import init_keydir
from tests.factory import Outcome
from tests.models import make_mlp_weights, onnx_mlp, quantize_onnx, sample_inputs, tflite_mlp

SATCHEL_SCRIPT = Path(sys.executable).with_name("satchel")
SPAWN_TIMEOUT_S = 120  # a hung subprocess fails the test instead of the whole run
IN_DIM = 64  # width of the test models' single input
PASSPHRASE_ENV = "SATCHEL_KEY_PASSPHRASE"


def _clean_environ() -> dict[str, str]:
    """The environment without any SATCHEL_* setting of the developer's shell."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SATCHEL_")}


class Cli:
    """Runs `satchel` in-process (`run`) or as the installed console script (`spawn`)."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd

    def run(self, *args: str | Path, env: Mapping[str, str] | None = None) -> Outcome:
        """Invoke the click command in-process; stdin is empty and not a terminal."""
        unset: dict[str, str | None] = {k: None for k in os.environ if k.startswith("SATCHEL_")}
        result = CliRunner(env={**unset, **(env or {})}).invoke(
            main, [str(a) for a in args], catch_exceptions=True
        )
        stderr = result.stderr
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            # CliRunner swallows unexpected exceptions: show them as the real script would.
            stderr += "".join(traceback.format_exception(result.exception))
        return Outcome(result.exit_code, result.stdout, stderr)

    def spawn(self, *args: str | Path, env: Mapping[str, str] | None = None) -> Outcome:
        """Run the installed `satchel` console script with stdin closed (not a terminal)."""
        proc = subprocess.run(
            [str(SATCHEL_SCRIPT), *(str(a) for a in args)],
            cwd=self.cwd,
            env={**_clean_environ(), **(env or {})},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=SPAWN_TIMEOUT_S,
            check=False,
        )
        return Outcome(proc.returncode, proc.stdout, proc.stderr)


@dataclass(frozen=True)
class Models:
    """Test models and sample files, made once per session (read-only for tests)."""

    float_onnx: Path  # float32 MLP 64 -> 128 -> 10
    int8_onnx: Path  # the same, dynamic INT8
    other_onnx: Path  # float32 MLP with different weights: disagrees with float_onnx
    float_tflite: Path  # the same float MLP as TFLite
    int8_tflite: Path  # the same MLP as int8 TFLite
    samples: Path  # INPUTS.npz: {"input": [16, 64] float32}
    wrong_samples: Path  # INPUTS.npz without the model's input


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


def dir_state(path: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under `path` with its mode and content, to prove a refusal changed nothing."""
    return {
        str(p.relative_to(path)): (p.stat().st_mode, p.read_bytes())
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def snapshot() -> Any:
    """`snapshot(dir)`: the files of a directory with modes and contents."""
    return dir_state
