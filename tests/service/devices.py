"""Devices of the agent service tests and what they install: real ONNX models, bundles with a
smoke test they pass, and state dirs initialised by the real `init`."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from satchel.agent.config import AgentConfig
from satchel.agent.provision import init_device
from satchel.bundles.keys import SigningKey
from satchel.bundles.manifest import HealthPolicy
from tests.factory.keys import Keyring
from tests.factory.model_makers import make_mlp_weights, onnx_mlp, sample_inputs
from tests.factory.smoke_tested import smoke_tested_bundle
from tests.service.procs import AGENT

IN_DIM, HIDDEN, OUT_DIM = 8, 16, 3
CHANNEL = "vision"
DEVICE_CLASS = "edge-box"
# Quick tries for tests: no long waits between retries, short timeouts.
FAST = AgentConfig(
    connect_timeout_s=2.0, read_timeout_s=5.0, retry_attempts=3, backoff_base_s=0.01,
    backoff_max_s=0.05, poll_interval_s=0.2, download_stalls=4, progress_log_s=0.0,
    usb_scan_interval_s=0.1,
)
SHORT = HealthPolicy(probation_s=0.0, min_samples=5)  # judged at once: no probation


@dataclass(frozen=True)
class Models:
    good: Path
    other: Path
    big: Path  # a few MB, so a download can be cut in the middle


def make_models(directory: Path) -> Models:
    """Two 8 -> 16 -> 3 MLPs with different weights, and a big one, as ONNX in `directory`."""
    return Models(
        good=onnx_mlp(make_mlp_weights(IN_DIM, HIDDEN, OUT_DIM, seed=1), directory / "good.onnx"),
        other=onnx_mlp(make_mlp_weights(IN_DIM, HIDDEN, OUT_DIM, seed=2), directory / "other.onnx"),
        big=onnx_mlp(make_mlp_weights(IN_DIM, 65536, OUT_DIM, seed=3), directory / "big.onnx"),
    )


def positive_inputs(n: int, seed: int = 0) -> np.ndarray:
    x = sample_inputs(IN_DIM, n, seed)
    x[:, 0] = np.abs(x[:, 0]) + 0.1
    return x


def build_bundle(
    out: Path,
    keys: Keyring,
    model_file: Path,
    *,
    version: str,
    sequence: int,
    channel: str = CHANNEL,
    policy: HealthPolicy = SHORT,
    signer: SigningKey | None = None,
    wrong_reference: bool = False,
) -> Path:
    """A signed bundle of `model_file` with a smoke test it passes on positive inputs (unless
    `wrong_reference`, which ships reference outputs it cannot match)."""
    return smoke_tested_bundle(
        out, signer or keys.signing, model_file, positive_inputs(4, seed=sequence),
        channel=channel, version=version, sequence=sequence, policy=policy,
        wrong_reference=wrong_reference,
    )


@dataclass
class Device:
    state_dir: Path
    device_id: str
    keys: Keyring
    work: Path

    def bundle(self, model: Path, version: str, sequence: int, **kwargs: Any) -> Path:
        return build_bundle(self.work / f"{version}-{sequence}.satchel", self.keys, model,
                            version=version, sequence=sequence, **kwargs)

    def cli(self, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
        """Run `satchel-agent --state-dir STATE ARGS...` for real."""
        done = subprocess.run(
            [str(AGENT), "--state-dir", str(self.state_dir), *args],
            capture_output=True, text=True, timeout=120, check=False,
            env={**_clean_env(), **env},
        )
        if check:
            assert done.returncode == 0, done.stderr
        return done


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SATCHEL_AGENT_")}


def make_device(tmp_path: Path, keys: Keyring, device_id: str = "dev-1") -> Device:
    state_dir = tmp_path / device_id / "state"
    init_device(state_dir, keys.root_json, device_id, DEVICE_CLASS)
    work = tmp_path / device_id / "work"
    work.mkdir(parents=True)
    return Device(state_dir, device_id, keys, work)
