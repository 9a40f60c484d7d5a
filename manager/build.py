"""`satchel bundle build`: measure the shipped model against its reference, write the smoke
test into the bundle, and refuse to build a bundle whose model disagrees beyond thresholds.

The shipped model and the reference (the float model when the shipped one is quantized) both
run on the samples here; the reference outputs become the smoke test's expectations, and the
device later runs the same samples on its own hardware against them.
"""

from __future__ import annotations

import hashlib
import io
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from agent.runtimes import (
    LoadedModel,
    ModelRuntimeError,
    TensorSpec,
    get_runtime,
    installed_runtimes,
    runtime_for_file,
)
from agent.runtimes.samples import feed_for, run_samples, time_runs
from bundles.durable import atomic_writer
from bundles.keys import SigningKey
from bundles.manifest import (
    Compatibility,
    HealthPolicy,
    Manifest,
    ModelEntry,
    SmokeTest,
    TensorInfo,
)
from bundles.pack import Payload, write_bundle
from bundles.smoke import Agreement, accuracy_failures, compare_outputs, percentile
from bundles.timeutil import utcnow
from manager.errors import BuildError

INPUTS_PATH = "smoke/inputs.npz"
REFERENCE_PATH = "smoke/reference.npz"
MIN_RUNTIME_VERSION = {"onnxruntime": "1.16", "tflite": "2.0"}


@dataclass(frozen=True)
class BuildDefaults:
    generated_samples: int = 32  # samples made when no --samples file is given
    seed: int = 0  # of the generated samples
    quantized_min_cosine: float = 0.99  # vs float reference, when --reference is given
    quantized_min_top1: float = 0.90
    self_min_cosine: float = 0.999  # device vs build host, when there is no reference
    self_min_top1: float = 0.99
    warmup_runs: int = 3
    latency_runs: int = 20
    progress_min_bytes: int = 32 * 1024 * 1024  # show a progress bar above this model size


@dataclass(frozen=True)
class BuildRequest:
    name: str
    version: str
    model: Path
    reference: Path | None = None
    samples: Path | None = None
    sequence: int | None = None
    device_classes: tuple[str, ...] = ()
    architectures: tuple[str, ...] = ()
    latency_budget_ms: float | None = None
    max_memory_mb: float | None = None
    max_abs_error: float | None = None
    min_cosine: float | None = None
    min_top1: float | None = None
    expires: datetime | None = None
    health_policy: HealthPolicy = field(default_factory=HealthPolicy)
    description: str = ""
    min_agent_version: str = "0.1.0"


@dataclass(frozen=True)
class BuildResult:
    manifest: Manifest
    agreement: Agreement
    host_p50_ms: float
    host_p95_ms: float
    output: Path
    bundle_bytes: int
    bundle_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.manifest.name,
            "version": self.manifest.version,
            "sequence": self.manifest.sequence,
            "output": str(self.output),
            "bundle_bytes": self.bundle_bytes,
            "bundle_sha256": self.bundle_sha256,
            "agreement": self.agreement.to_dict(),
            "host_p50_ms": self.host_p50_ms,
            "host_p95_ms": self.host_p95_ms,
        }


def _load(path: Path, role: str) -> LoadedModel:
    try:
        return get_runtime(runtime_for_file(path)).load(path)
    except ModelRuntimeError as e:
        raise BuildError(f"{role} {path}: {e}") from e


def _load_samples(path: Path, model: LoadedModel) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            samples = {k: np.asarray(npz[k]) for k in npz.files}
    except (OSError, ValueError) as e:
        raise BuildError(f"cannot read samples {path}: {e}") from e
    names = {s.name for s in model.inputs}
    if set(samples) != names:
        raise BuildError(
            f"samples {path} hold arrays {sorted(samples)}, the model's inputs are {sorted(names)}"
        )
    return samples


def _generate(spec: TensorSpec, n: int, rng: np.random.Generator) -> np.ndarray:
    dims = [d if d > 0 else 1 for d in spec.shape[1:]] if spec.shape else []
    shape = (n, *dims)
    if spec.quantization is not None or spec.datatype.startswith("FP"):
        return rng.standard_normal(shape).astype(np.float32)
    if spec.datatype == "BOOL":
        return rng.integers(0, 2, shape).astype(bool)
    return rng.integers(0, 8, shape).astype(spec.dtype)


def _generated_samples(model: LoadedModel, d: BuildDefaults) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(d.seed)
    return {s.name: _generate(s, d.generated_samples, rng) for s in model.inputs}


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def _sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * 1024 * 1024):
            sha.update(chunk)
    return sha.hexdigest()


def detect_quantization(path: Path, model: LoadedModel) -> str:
    """Name the quantization of a model file: dynamic-int8, static-int8, int8 or none."""
    if model.runtime == "tflite":
        quantized = any(s.datatype in ("INT8", "UINT8") for s in [*model.inputs, *model.outputs])
        return "int8" if quantized else "none"
    try:
        import onnx
    except ImportError:  # the manager extra carries onnx; without it we cannot tell
        return "none"
    ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
    if ops & {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul"}:
        return "dynamic-int8"
    if ops & {"QuantizeLinear", "QLinearMatMul", "QLinearConv"}:
        return "static-int8"
    return "none"


def _tensor_infos(specs: list[TensorSpec]) -> tuple[TensorInfo, ...]:
    return tuple(TensorInfo(s.name, s.datatype, tuple(s.shape)) for s in specs)


def _thresholds(req: BuildRequest, d: BuildDefaults) -> tuple[float | None, float, float]:
    if req.reference is not None:
        cos, top1 = d.quantized_min_cosine, d.quantized_min_top1
    else:
        cos, top1 = d.self_min_cosine, d.self_min_top1
    return (
        req.max_abs_error,
        req.min_cosine if req.min_cosine is not None else cos,
        req.min_top1 if req.min_top1 is not None else top1,
    )


def _check_outputs(shipped: LoadedModel, reference: LoadedModel) -> None:
    ours = {s.name for s in shipped.outputs}
    theirs = {s.name for s in reference.outputs}
    if ours != theirs:
        raise BuildError(
            f"model outputs {sorted(ours)} differ from reference outputs {sorted(theirs)}"
        )


def build_bundle(
    req: BuildRequest,
    keys: list[SigningKey],
    out: Path,
    *,
    defaults: BuildDefaults = BuildDefaults(),
    progress: Callable[[int], None] | None = None,
    now: datetime | None = None,
) -> BuildResult:
    """Measure, smoke-test on this host, and write a signed bundle to `out` (atomically).

    Raises BuildError when a model cannot be loaded or run, samples do not fit, or the shipped
    model disagrees with its reference beyond the thresholds (the message gives the figures);
    BundleError subclasses from packing.
    """
    created = now or utcnow()
    runtime = _runtime_name(req.model)
    shipped = _load(req.model, "model")
    reference = _load(req.reference, "reference model") if req.reference else shipped
    try:
        if req.samples:
            samples = _load_samples(req.samples, shipped)
        else:
            samples = _generated_samples(shipped, defaults)
        if reference is not shipped:
            _check_outputs(shipped, reference)
        try:
            outputs, _ = run_samples(shipped, samples)
            expected = outputs
            if reference is not shipped:
                expected, _ = run_samples(reference, samples)
            latencies = time_runs(
                shipped, feed_for(shipped, samples, 0), defaults.warmup_runs, defaults.latency_runs
            )
        except ModelRuntimeError as e:
            raise BuildError(f"running the models on the samples failed: {e}") from e
        quantization = detect_quantization(req.model, shipped)
        inputs, outputs_info = _tensor_infos(shipped.inputs), _tensor_infos(shipped.outputs)
    finally:
        shipped.close()
        if reference is not shipped:
            reference.close()
    max_abs, min_cos, min_top1 = _thresholds(req, defaults)
    smoke = SmokeTest(
        model="model",
        inputs=INPUTS_PATH,
        reference=REFERENCE_PATH,
        max_abs_error=max_abs,
        min_cosine=min_cos,
        min_top1_agreement=min_top1,
        warmup_runs=defaults.warmup_runs,
        latency_runs=defaults.latency_runs,
        p95_latency_budget_ms=req.latency_budget_ms,
        max_memory_mb=req.max_memory_mb,
    )
    agreement = compare_outputs(outputs, expected)
    failures = accuracy_failures(agreement, smoke)
    if failures:
        raise BuildError(
            f"model disagrees with its reference on {agreement.samples} samples: "
            + "; ".join(failures)
        )
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    model_file = f"model{req.model.suffix.lower()}"
    manifest = Manifest(
        name=req.name,
        version=req.version,
        sequence=req.sequence if req.sequence is not None else int(time.time()),
        created=created,
        expires=req.expires,
        files=(),
        models=(
            ModelEntry(
                name="model",
                runtime=runtime,
                file=model_file,
                inputs=inputs,
                outputs=outputs_info,
                quantization=quantization,
                reference_sha256=_sha256_file(req.reference) if req.reference else None,
            ),
        ),
        smoke_tests=(smoke,),
        health_policy=req.health_policy,
        compatibility=Compatibility(
            device_classes=req.device_classes,
            architectures=req.architectures,
            runtimes={runtime: MIN_RUNTIME_VERSION[runtime]},
            min_agent_version=req.min_agent_version,
        ),
        description=req.description,
        build={
            "host": f"{platform.system()} {platform.machine()}",
            "runtime_versions": installed_runtimes(),
            "host_p50_ms": round(p50, 4),
            "host_p95_ms": round(p95, 4),
            "agreement": agreement.to_dict(),
        },
    )
    payloads = [
        Payload(model_file, req.model),
        Payload(INPUTS_PATH, _npz_bytes(samples)),
        Payload(REFERENCE_PATH, _npz_bytes(expected)),
    ]
    final = _write_atomically(out, manifest, payloads, keys, progress)
    return BuildResult(
        manifest=final,
        agreement=agreement,
        host_p50_ms=p50,
        host_p95_ms=p95,
        output=out,
        bundle_bytes=out.stat().st_size,
        bundle_sha256=_sha256_file(out),
    )


def _runtime_name(path: Path) -> str:
    try:
        return runtime_for_file(path)
    except ModelRuntimeError as e:
        raise BuildError(str(e)) from e


def _write_atomically(
    out: Path,
    manifest: Manifest,
    payloads: list[Payload],
    keys: list[SigningKey],
    progress: Callable[[int], None] | None,
) -> Manifest:
    """Write the bundle through the durable-write helper. Raises BuildError, BundleError."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(out) as f:
            return write_bundle(f, manifest, payloads, keys, progress=progress, tmp_dir=out.parent)
    except OSError as e:
        raise BuildError(f"cannot write bundle {out}: {e.strerror or e}") from e
