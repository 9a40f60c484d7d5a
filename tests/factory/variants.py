"""Releases with variants for tests: a float MLP ("full"), its dynamic INT8 form ("int8") and a
much smaller MLP ("lite"), real ONNX models run by onnxruntime, built into one signed bundle
by `manager.build_variants` (what `satchel bundle build --variant` runs)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from satchel.bundles.manifest import HealthPolicy
from satchel.bundles.variants import Policy
from satchel.manager import modelgen
from satchel.manager.build import BuildDefaults, BuildRequest, BuildResult
from satchel.manager.build_variants import VariantSpec, build_variant_bundle
from satchel.manager.modelgen import Weights
from tests.factory.keys import Keyring
from tests.factory.model_makers import make_mlp_weights, onnx_mlp, quantize_onnx, sample_inputs

IN_DIM = 32
OUT_DIM = 10
FAST = BuildDefaults(latency_runs=5, warmup_runs=1, host_latency_s=0.05)


@dataclass(frozen=True)
class VariantModels:
    full: Path  # float MLP 32 -> 256 -> 10
    int8: Path  # the same, dynamic INT8
    lite: Path  # float MLP 32 -> 8 -> 10 (other weights: compared with itself)
    slow: Path  # `full` with `slow_steps` 256x256 MatMuls added (same outputs; ~0.2 ms each)
    other_inputs: Path  # an MLP taking 16 features: cannot be a variant of the others
    samples: Path  # {"input": [8, 32] float32}


def slow_onnx(weights: Weights, path: Path, steps: int) -> Path:
    """`onnx_mlp(weights)` with exactly `steps` 256x256 MatMuls chained in (about 0.2 ms each
    on one core), not a number sized by timing numpy here (which onnxruntime beats by a
    varying factor)."""
    sized_by = modelgen._matmul_seconds
    modelgen._matmul_seconds = lambda n, repeats=5: 1e-3  # one step per slow_ms
    try:
        return onnx_mlp(weights, path, slow_ms=float(steps))
    finally:
        modelgen._matmul_seconds = sized_by


def make_variant_models(root: Path, slow_steps: int = 150) -> VariantModels:
    root.mkdir(parents=True, exist_ok=True)
    weights = make_mlp_weights(in_dim=IN_DIM, hidden=256, out_dim=OUT_DIM, seed=0)
    full = onnx_mlp(weights, root / "full.onnx")
    int8 = root / "int8.onnx"
    quantize_onnx(full, int8)
    lite = onnx_mlp(make_mlp_weights(in_dim=IN_DIM, hidden=8, out_dim=OUT_DIM, seed=3),
                    root / "lite.onnx")
    slow = slow_onnx(weights, root / "slow.onnx", slow_steps) if slow_steps else full
    other = onnx_mlp(make_mlp_weights(in_dim=16, seed=1), root / "other-inputs.onnx")
    samples = root / "samples.npz"
    np.savez(samples, input=sample_inputs(IN_DIM, 8, seed=1))
    return VariantModels(full, int8, lite, slow, other, samples)


def variant_bundle(
    out: Path,
    keys: Keyring,
    specs: list[VariantSpec],
    *,
    name: str = "kws",
    version: str = "1.0.0",
    sequence: int = 1,
    samples: Path | None = None,
    policy: Policy | None = None,
    default: str | None = None,
    accuracy: dict[str, int] | None = None,
    health: HealthPolicy | None = None,
    latency_budget_ms: float | None = None,
) -> BuildResult:
    """Build a signed bundle with `specs` as its variants (each compared with itself)."""
    req = BuildRequest(
        name=name, version=version, model=specs[0].model, samples=samples, sequence=sequence,
        health_policy=health or HealthPolicy(), latency_budget_ms=latency_budget_ms,
    )
    return build_variant_bundle(req, specs, [keys.signing], out, default=default,
                                policy=policy, accuracy=accuracy, defaults=FAST)
