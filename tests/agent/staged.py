"""Staged-activation test kit: real ONNX models (a good one, one that agrees with it in the
lab only with itself, one that turns NaN on field inputs), signed bundles with an activation
policy installed by the real installer, and a real inference server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import requests

from satchel.agent.config import AgentConfig
from satchel.agent.install.installer import InstallResult, install
from satchel.agent.provision import init_device
from satchel.agent.runtimes import get_runtime, runtime_for_file
from satchel.agent.server import AgentServer, MemoryEventSink
from satchel.agent.state import DeviceState
from satchel.bundles.activation import ActivationPolicy, build_policy
from satchel.bundles.manifest import (
    Compatibility,
    HealthPolicy,
    Manifest,
    ModelEntry,
    SmokeTest,
    TensorInfo,
    parse_manifest,
)
from satchel.bundles.pack import Payload, write_bundle
from satchel.bundles.reader import read_unverified
from satchel.bundles.timeutil import utcnow
from tests.factory.bundles import TEST_PACK
from tests.factory.keys import Keyring
from tests.factory.model_makers import make_mlp_weights, onnx_mlp
from tests.factory.smoke_tested import npz_bytes
from tests.server.devices import HIDDEN, IN_DIM, OUT_DIM, negative_inputs, positive_inputs
from tests.server.servers import FAST

CHANNEL = "vision"
POLICY = HealthPolicy(probation_s=600.0, min_samples=16, max_error_rate=0.5, max_nan_rate=0.0)


@dataclass(frozen=True)
class StagedModels:
    good: Path  # an MLP
    twin: Path  # the same weights, another file: agrees with `good` everywhere
    other: Path  # other weights: passes its own smoke test, disagrees with `good` in the field
    nan: Path  # `good`'s weights, NaN when the first feature is negative (never in the lab)


def make_models(directory: Path) -> StagedModels:
    w1 = make_mlp_weights(IN_DIM, HIDDEN, OUT_DIM, seed=1)
    w2 = make_mlp_weights(IN_DIM, HIDDEN, OUT_DIM, seed=2)
    return StagedModels(
        good=onnx_mlp(w1, directory / "good.onnx"),
        twin=onnx_mlp(w1, directory / "twin.onnx"),
        other=onnx_mlp(w2, directory / "other.onnx"),
        nan=onnx_mlp(w1, directory / "nan.onnx", nan_for_negative_first_feature=True),
    )


def staged_bundle(
    out: Path, keys: Keyring, model_file: Path, *, version: str, sequence: int,
    activation: ActivationPolicy | None, policy: HealthPolicy = POLICY,
    max_memory_mb: float | None = None,
) -> Path:
    """A signed bundle of `model_file` whose smoke test (positive inputs, the model's own
    outputs as references) passes, with `activation` in its signed manifest."""
    inputs = positive_inputs(4, seed=sequence)
    model = get_runtime(runtime_for_file(model_file)).load(model_file)
    reference = model.run({model.inputs[0].name: inputs})
    manifest = Manifest(
        name=CHANNEL, version=version, sequence=sequence, created=utcnow(), files=(),
        models=(ModelEntry(
            name="main", runtime="onnxruntime", file="model.onnx",
            inputs=tuple(TensorInfo(s.name, s.datatype, s.shape) for s in model.inputs),
            outputs=tuple(TensorInfo(s.name, s.datatype, s.shape) for s in model.outputs),
        ),),
        smoke_tests=(SmokeTest("main", "smoke/inputs.npz", "smoke/reference.npz",
                               max_abs_error=1e-3, warmup_runs=1, latency_runs=3,
                               max_memory_mb=max_memory_mb),),
        health_policy=policy, compatibility=Compatibility(), activation=activation,
    )
    payloads = [
        Payload("model.onnx", model_file),
        Payload("smoke/inputs.npz", npz_bytes({model.inputs[0].name: inputs})),
        Payload("smoke/reference.npz", npz_bytes(reference)),
    ]
    with open(out, "wb") as f:
        write_bundle(f, manifest, payloads, [keys.signing], TEST_PACK)
    return out


@dataclass
class Rig:
    """A device, its server, and what it reported."""

    state_dir: Path
    keys: Keyring
    work: Path
    models: StagedModels
    events: MemoryEventSink
    config: AgentConfig
    server: AgentServer | None = None

    @property
    def state(self) -> DeviceState:
        return DeviceState(self.state_dir)

    def install(self, model: Path, *, version: str, sequence: int,
                activation: ActivationPolicy | None = None,
                policy: HealthPolicy = POLICY,
                max_memory_mb: float | None = None) -> InstallResult:
        bundle = staged_bundle(self.work / f"{version}.satchel", self.keys, model,
                               version=version, sequence=sequence, activation=activation,
                               policy=policy, max_memory_mb=max_memory_mb)
        result = install(self.state_dir, bundle, config=self.config)
        if self.server is not None:
            self.server.reload_now()
        return result

    def start(self) -> AgentServer:
        self.server = AgentServer(self.state_dir, listen="127.0.0.1:0", unix_socket=None,
                                  event_sink=self.events, config=FAST,
                                  agent_config=self.config).start()
        return self.server

    def infer(self, x: np.ndarray) -> dict[str, Any]:
        assert self.server is not None
        body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                            "data": x.ravel().tolist()}]}
        r = requests.post(f"{self.server.url}/v2/models/{CHANNEL}/infer",
                          data=json.dumps(body), timeout=10)
        assert r.status_code == 200, r.text
        answer: dict[str, Any] = r.json()
        return answer

    def status(self) -> dict[str, Any]:
        channels: dict[str, Any] = self.state.status()["channels"]
        return dict(channels[CHANNEL])

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events.events]


@contextlib.contextmanager
def rig(tmp_path: Path, keys: Keyring, models: StagedModels,
        config: AgentConfig | None = None) -> Iterator[Rig]:
    state_dir = tmp_path / "state"
    init_device(state_dir, keys.root_json, "dev-1", "edge-box")
    work = tmp_path / "work"
    work.mkdir()
    r = Rig(state_dir, keys, work, models, MemoryEventSink(),
            config or AgentConfig(lock_wait_s=10.0))
    try:
        yield r
    finally:
        if r.server is not None:
            r.server.stop()


def field_inputs(n: int, seed: int = 7) -> list[np.ndarray]:
    """Field requests of one row each: half with a negative first feature (never in the lab)."""
    rows = np.concatenate([positive_inputs(n - n // 2, seed), negative_inputs(n // 2, seed + 1)])
    rng = np.random.default_rng(seed)
    rng.shuffle(rows)
    return [rows[i : i + 1] for i in range(n)]


def shadow(requests_: int, *, fraction: float = 1.0, agreement: float = 0.99,
           ramp: str | None = None, step_requests: int = 10,
           capture: str | None = None) -> ActivationPolicy:
    policy = build_policy(shadow_requests=requests_, shadow_fraction=fraction,
                          shadow_agreement=agreement, ramp=ramp,
                          ramp_step_requests=step_requests, capture=capture)
    assert policy is not None
    return policy


def manifest_of(bundle: Path) -> Any:
    with open(bundle, "rb") as f:
        manifest, _ = read_unverified(f)
    return parse_manifest(manifest.to_bytes())
