"""Devices of the inference-server tests: real ONNX and TFLite models, and a real, initialised
device state on which the real installer puts releases with real smoke tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from satchel.agent.install.installer import install
from satchel.agent.provision import init_device
from satchel.agent.state import DeviceState, Release
from satchel.bundles.manifest import HealthPolicy
from tests.factory.keys import Keyring
from tests.factory.model_makers import sample_inputs
from tests.factory.smoke_tested import smoke_tested_bundle

IN_DIM, HIDDEN, OUT_DIM = 8, 16, 3
CHANNEL = "vision"
LENIENT = HealthPolicy(probation_s=600.0, min_samples=16, max_error_rate=0.5, max_nan_rate=0.0)


@dataclass(frozen=True)
class Models:
    good: Path  # ONNX MLP
    other: Path  # ONNX MLP, different weights (a newer release)
    nan: Path  # ONNX MLP whose outputs are NaN when the first feature is negative
    tflite: Path  # TFLite MLP, float32


def positive_inputs(n: int, seed: int = 0) -> np.ndarray:
    """Sample rows whose first feature is positive (the NaN model stays finite on them)."""
    x = sample_inputs(IN_DIM, n, seed)
    x[:, 0] = np.abs(x[:, 0]) + 0.1
    return x


def negative_inputs(n: int, seed: int = 0) -> np.ndarray:
    x = sample_inputs(IN_DIM, n, seed)
    x[:, 0] = -np.abs(x[:, 0]) - 0.1
    return x


def build_bundle(
    out: Path,
    keys: Keyring,
    model_file: Path,
    *,
    version: str,
    sequence: int,
    channel: str = CHANNEL,
    policy: HealthPolicy = LENIENT,
) -> Path:
    """A signed bundle of `model_file` with a smoke test it passes (positive inputs)."""
    return smoke_tested_bundle(
        out, keys.signing, model_file, positive_inputs(4, seed=sequence),
        channel=channel, version=version, sequence=sequence, policy=policy,
    )


@dataclass
class Device:
    """A real, initialised device state and a way to install releases on it."""

    state_dir: Path
    keys: Keyring
    work: Path

    @property
    def state(self) -> DeviceState:
        return DeviceState(self.state_dir)

    def install(
        self,
        model_file: Path,
        *,
        version: str,
        sequence: int,
        channel: str = CHANNEL,
        policy: HealthPolicy = LENIENT,
    ) -> Release:
        bundle = build_bundle(
            self.work / f"{channel}-{sequence}.satchel", self.keys, model_file,
            version=version, sequence=sequence, channel=channel, policy=policy,
        )
        return install(self.state_dir, bundle).release

    def active(self, channel: str = CHANNEL) -> Release | None:
        return self.state.active_release(channel)


def make_device(tmp_path: Path, keys: Keyring) -> Device:
    """A device initialised with `keys`' trust root in `tmp_path/state`, nothing installed."""
    state_dir = tmp_path / "state"
    init_device(state_dir, keys.root_json, "dev-1", "edge-box")
    work = tmp_path / "work"
    work.mkdir()
    return Device(state_dir, keys, work)
