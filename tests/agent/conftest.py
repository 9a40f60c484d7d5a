"""Fixtures for the device agent: keys and a trust root, signed test bundles, a set-up device.

Bundles are written by `bundles.pack.write_bundle`, exactly as `satchel bundle build` writes
them, from real ONNX / TFLite models made by `tests.models`. A `Device` wraps a state
directory initialised by the real `init`, and runs `satchel-agent` either in-process
(click's runner, fast) or as a real subprocess (for crash tests and the console script).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from satchel.agent.cli import main
from satchel.agent.config import CRASH_AT_ENV, STATE_DIR_ENV
from satchel.agent.provision import init_device
from satchel.agent.state import FILES_DIR, MANIFEST_FILE, SIGNATURES_FILE, DeviceState
from satchel.bundles.config import PackOptions
from satchel.bundles.envelope import check_threshold
from satchel.bundles.keys import SigningKey, parse_signatures
from satchel.bundles.manifest import (
    Compatibility,
    Manifest,
    ModelEntry,
    SmokeTest,
    TensorInfo,
    parse_manifest,
)
from satchel.bundles.pack import Payload, write_bundle
from satchel.bundles.timeutil import utcnow
from satchel.bundles.trust import load_root, make_root, sign_root
from tests.factory import Outcome
from tests.models import (
    INPUT_NAME,
    OUTPUT_NAME,
    make_mlp_weights,
    mlp_forward,
    onnx_mlp,
    sample_inputs,
    tflite_mlp,
)

AGENT_SCRIPT = Path(sys.executable).with_name("satchel-agent")
SPAWN_TIMEOUT_S = 120  # a hung subprocess fails its test instead of the whole run
IN_DIM, HIDDEN, OUT_DIM = 16, 32, 4
SAMPLES = 8
DEVICE_CLASS = "test-board"
TEST_PACK = PackOptions(zstd_level=3, zstd_threads=0)  # one thread: 2 cores are shared


# --- keys and models ------------------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    root: SigningKey
    signing: SigningKey
    root_json: bytes


@pytest.fixture(scope="session")
def keys() -> Keys:
    root, signing = SigningKey.generate(), SigningKey.generate()
    trust = make_root(1, [root.public], [signing.public])
    return Keys(root, signing, sign_root(trust, [root]))


@dataclass(frozen=True)
class Model:
    """A model file with smoke inputs (float32, one row per sample) and float references."""

    path: Path
    inputs: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Model]:
    directory = tmp_path_factory.mktemp("models")
    weights = make_mlp_weights(IN_DIM, HIDDEN, OUT_DIM, seed=3)
    x = sample_inputs(IN_DIM, SAMPLES, seed=5)
    nan_x = x.copy()
    nan_x[:, 0] = -np.abs(nan_x[:, 0]) - 0.1  # every row's first feature negative
    ref = {OUTPUT_NAME: mlp_forward(weights, x)}
    return {
        "onnx": Model(onnx_mlp(weights, directory / "mlp.onnx"), {INPUT_NAME: x}, ref),
        "onnx-v2": Model(
            onnx_mlp(make_mlp_weights(IN_DIM, HIDDEN, OUT_DIM, seed=4), directory / "v2.onnx"),
            {INPUT_NAME: x},
            {OUTPUT_NAME: mlp_forward(make_mlp_weights(IN_DIM, HIDDEN, OUT_DIM, seed=4), x)},
        ),
        "onnx-nan": Model(
            onnx_mlp(weights, directory / "nan.onnx", nan_for_negative_first_feature=True),
            {INPUT_NAME: nan_x},
            {OUTPUT_NAME: mlp_forward(weights, nan_x)},
        ),
        "tflite": Model(tflite_mlp(weights, directory / "mlp.tflite"), {INPUT_NAME: x}, ref),
        "tflite-int8": Model(
            tflite_mlp(weights, directory / "int8.tflite", int8=True), {INPUT_NAME: x}, ref
        ),
    }


# --- bundles --------------------------------------------------------------------------------


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@dataclass(frozen=True)
class Spec:
    """What a test bundle is; every field has a sensible default."""

    name: str = "kws"
    version: str = "1.0.0"
    sequence: int = 1
    model: str = "onnx"
    smoke: dict[str, Any] = field(default_factory=dict)  # SmokeTest field overrides
    compatibility: Compatibility | None = None
    created: datetime | None = None
    expires: datetime | None = None
    sign_with: SigningKey | None = None  # default: the trusted signing key


class BundleMaker:
    """Writes signed bundles into a directory with `bundles.pack.write_bundle`."""

    def __init__(self, directory: Path, keys: Keys, models: dict[str, Model]) -> None:
        self.directory = directory
        self.keys = keys
        self.models = models

    def __call__(self, spec: Spec = Spec(), **changes: Any) -> Path:
        spec = replace(spec, **changes)
        model = self.models[spec.model]
        runtime = "onnxruntime" if model.path.suffix == ".onnx" else "tflite"
        model_file = f"model{model.path.suffix}"
        smoke = {"max_abs_error": 0.1, "min_cosine": 0.99, "warmup_runs": 1,
                 "latency_runs": 5, **spec.smoke}
        manifest = Manifest(
            name=spec.name,
            version=spec.version,
            sequence=spec.sequence,
            created=spec.created or utcnow() - timedelta(hours=1),
            expires=spec.expires,
            files=(),
            models=(ModelEntry(
                name="model", runtime=runtime, file=model_file,
                inputs=(TensorInfo(INPUT_NAME, "FP32", (-1, IN_DIM)),),
                outputs=(TensorInfo(OUTPUT_NAME, "FP32", (-1, OUT_DIM)),),
            ),),
            smoke_tests=(SmokeTest(model="model", inputs="smoke/inputs.npz",
                                   reference="smoke/reference.npz", **smoke),),
            compatibility=spec.compatibility or Compatibility(),
        )
        payloads = [
            Payload(model_file, model.path),
            Payload("smoke/inputs.npz", _npz(model.inputs)),
            Payload("smoke/reference.npz", _npz(model.reference)),
        ]
        out = self.directory / f"{spec.name}-{spec.sequence}-{spec.version}.satchel"
        with open(out, "wb") as f:
            write_bundle(f, manifest, payloads, [spec.sign_with or self.keys.signing], TEST_PACK)
        return out


@pytest.fixture
def make_bundle(tmp_path: Path, keys: Keys, models: dict[str, Model]) -> BundleMaker:
    directory = tmp_path / "bundles"
    directory.mkdir()
    return BundleMaker(directory, keys, models)


# --- devices --------------------------------------------------------------------------------


class Device:
    """A state directory set up by the real `init`, and ways to drive `satchel-agent` on it."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.state = DeviceState(state_dir)

    def run(self, *args: str) -> Outcome:
        """`satchel-agent --state-dir DIR ARGS...` in-process."""
        result = CliRunner().invoke(main, ["--state-dir", str(self.state_dir), *args])
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return Outcome(result.exit_code, result.stdout, result.stderr)

    def spawn(self, *args: str, crash_at: str | None = None,
              env: dict[str, str] | None = None) -> Outcome:
        """The installed console script as a real subprocess (state dir from the env var)."""
        full_env = {**os.environ, STATE_DIR_ENV: str(self.state_dir), **(env or {})}
        full_env.pop(CRASH_AT_ENV, None)
        if crash_at:
            full_env[CRASH_AT_ENV] = crash_at
        done = subprocess.run([str(AGENT_SCRIPT), *args], capture_output=True, text=True,
                              env=full_env, timeout=SPAWN_TIMEOUT_S, check=False)
        return Outcome(done.returncode, done.stdout, done.stderr)

    def status_bytes(self) -> bytes:
        return self.run("status", "--json").ok().stdout.encode()

    def status(self) -> dict[str, Any]:
        return json.loads(self.status_bytes())

    def active(self, channel: str = "kws") -> tuple[str, int] | None:
        info = self.status()["channels"].get(channel)
        return None if info is None else (info["active"]["version"], info["active"]["sequence"])

    def tree(self) -> dict[str, str]:
        """Every file under the state dir (but the lock, history and event queue, which
        record what happened) -> sha256 of its bytes."""
        out: dict[str, str] = {}
        for path in sorted(self.state_dir.rglob("*")):
            rel = str(path.relative_to(self.state_dir))
            if rel == "events" or rel.startswith("events/"):
                continue
            if path.is_file() and rel not in ("lock", "history.json"):
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif path.is_dir():
                out[rel] = "dir"
        return out

    def verify_active(self, channel: str = "kws") -> Manifest:
        """Re-hash every file of the channel's active release against its signed manifest
        and return that manifest; fails the test on any difference or extra file."""
        return verify_active_release(self.state_dir, channel)

    def history(self) -> list[dict[str, Any]]:
        return json.loads(self.run("history", "--json", "--limit", "1000").ok().stdout)


def verify_active_release(state_dir: Path, channel: str) -> Manifest:
    """Re-hash every file of the channel's active release against its signed manifest and
    return that manifest; fails the test on any difference or extra file."""
    release = DeviceState(state_dir).active_release(channel)
    assert release is not None, f"channel {channel} serves nothing"
    manifest_bytes = (release.directory / MANIFEST_FILE).read_bytes()
    root = load_root((state_dir / "root.json").read_bytes())
    signatures = parse_signatures(json.loads((release.directory / SIGNATURES_FILE).read_bytes()), 8)
    check_threshold(manifest_bytes, signatures, root.signing_keys(), root.signing_role, "test")
    manifest = parse_manifest(manifest_bytes)
    files = release.directory / FILES_DIR
    on_disk = sorted(str(p.relative_to(files)) for p in files.rglob("*") if p.is_file())
    assert on_disk == sorted(f.path for f in manifest.files)
    for entry in manifest.files:
        data = (files / entry.path).read_bytes()
        assert len(data) == entry.size and hashlib.sha256(data).hexdigest() == entry.sha256, (
            f"{entry.path} of {channel} {release.version} is not what was signed"
        )
    return manifest


@pytest.fixture
def device(tmp_path: Path, keys: Keys) -> Device:
    state_dir = tmp_path / "state"
    init_device(state_dir, keys.root_json, "dev-1", DEVICE_CLASS)
    return Device(state_dir)
