"""`satchel bundle build`: measure the shipped model against its reference, write the smoke
test into the bundle, and refuse to build a bundle whose model disagrees beyond thresholds.

The shipped model and the reference (the float model when the shipped one is quantized) both
run on the samples here; the reference outputs become the smoke test's expectations, and the
device later runs the same samples on its own hardware against them.

The model's own files are compressed and hashed into the bundle on a thread of their own
(`_ModelPacker`) while the models load and run: zstd, hashlib and onnxruntime release the GIL,
so the build costs little more than the longer of the two. The ONNX graph is read without
its weights (`onnx_graph`), and each model is loaded once, by its runtime.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import platform
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from satchel.agent.runtimes import (
    LoadedModel,
    ModelRuntimeError,
    TensorSpec,
    get_runtime,
    runtime_for_file,
)
from satchel.agent.runtimes.samples import (
    encode,
    encoded_feeds,
    generate_samples,
    plan_feeds,
    real_values,
    run_feeds,
    stored_samples,
)
from satchel.bundles.activation import ActivationPolicy
from satchel.bundles.config import DEFAULT_PACK, PackOptions
from satchel.bundles.durable import atomic_writer
from satchel.bundles.identifiers import CHANNEL_RE, VERSION_RE
from satchel.bundles.keys import SigningKey
from satchel.bundles.manifest import (
    Compatibility,
    HealthPolicy,
    Manifest,
    ModelEntry,
    OutputCheck,
    SmokeTest,
    TensorInfo,
)
from satchel.bundles.pack import BundleBody, Payload, in_place_room, index_chunk_size
from satchel.bundles.smoke import (
    DEFAULT_CHECKS,
    Agreement,
    CheckDefaults,
    accuracy_failures,
    compare_outputs,
    default_check,
    detect_kind,
    percentile,
    useless_thresholds,
    with_overrides,
)
from satchel.bundles.timeutil import utcnow
from satchel.manager.errors import BuildError
from satchel.manager.external_data import DATA_FILE, shipped_plan
from satchel.manager.model_files import ModelFiles, model_files, onnx_graph
from satchel.manager.onnx_graph import GraphSummary

INPUTS_PATH = "smoke/inputs.npz"
REFERENCE_PATH = "smoke/reference.npz"
MIN_RUNTIME_VERSION = {"onnxruntime": "1.16", "tflite": "2.0"}
_ONNX_FLOAT16 = 10  # onnx.TensorProto.FLOAT16
_HASH_READ_BYTES = 4 * 1024 * 1024  # read per step when hashing the written bundle


def spare_cores() -> int:
    """Intra-op threads for the build's model sessions: every core this process may use but
    one, which the packing thread (zstd, then hashing beside it) keeps busy meanwhile."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


@dataclass(frozen=True)
class BuildDefaults:
    generated_samples: int = 32  # feeds made when no --samples file is given
    seed: int = 0  # of the generated samples
    checks: CheckDefaults = DEFAULT_CHECKS  # per-output thresholds (bundles/smoke.py)
    warmup_runs: int = 3  # the device's smoke test; on this host only if no feed ran before
    latency_runs: int = 20  # the device's smoke test; at most this many on this host
    host_latency_s: float = 0.25  # seconds; this host's latency runs stop after this
    # The model runs beside packing: a runtime's default of one thread per core (spinning
    # between runs) takes the core zstd needs, and the build waits for the slower of the two.
    model_threads: int = field(default_factory=spare_cores)
    # zstd on the packing thread itself (0 workers): it runs beside the model, whose runtime
    # wants the cores; zstd's own workers would take them and ~100 MB of buffers besides
    # (the member's hashing and writing run on a worker of their own: bundles/pack.py).
    pack: PackOptions = replace(DEFAULT_PACK, zstd_threads=0, chunk_bytes=1024 * 1024)
    progress_min_bytes: int = 32 * 1024 * 1024  # show a progress bar above this model size
    max_feeds: int = 10_000  # sample feeds in one smoke test
    smoke_warn_min_bytes: int = 1024 * 1024  # smoke data below this is never warned about
    external_data_min_bytes: int = 16 * 1024 * 1024  # a single-file ONNX model larger than this
    # ships its weights as external data, which onnxruntime maps instead of copying (issue 14):
    # loading a single file holds its bytes and the weights made from them at once


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
    max_abs_error: float | None = None  # on every output
    min_cosine: float | None = None  # on every vector output
    min_top1: float | None = None  # on class-score and label outputs
    min_sqnr_db: float | None = None  # on every output but one-value scores
    max_rel_error: float | None = None  # on every output
    output_checks: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> overrides
    signature: str | None = None  # TFLite signature to run
    expires: datetime | None = None
    health_policy: HealthPolicy = field(default_factory=HealthPolicy)
    activation: ActivationPolicy | None = None  # shadow, ramp, capture (bundles/activation.py)
    description: str = ""
    min_agent_version: str = "0.1.0"
    # bundles.crypt.BundleEncryption: encrypt every payload (`--encrypt-to`, issue 19)
    encryption: Any = None


@dataclass(frozen=True)
class BuildResult:
    manifest: Manifest
    agreement: Agreement
    host_p50_ms: float
    host_p95_ms: float
    output: Path
    bundle_bytes: int
    bundle_sha256: str
    model_bytes: int = 0  # the model with all its data files
    warnings: tuple[str, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)  # phase -> seconds (_Clock)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.manifest.name,
            "version": self.manifest.version,
            "sequence": self.manifest.sequence,
            "output": str(self.output),
            "bundle_bytes": self.bundle_bytes,
            "bundle_sha256": self.bundle_sha256,
            "model_bytes": self.model_bytes,
            "agreement": self.agreement.to_dict(),
            "checks": [c.to_dict() for c in self.manifest.smoke_tests[0].outputs],
            "host_p50_ms": self.host_p50_ms,
            "host_p95_ms": self.host_p95_ms,
            "warnings": list(self.warnings),
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
        }


def check_release(name: str, version: str, sequence: int | None) -> None:
    """Refuse a channel name, version or sequence the manifest cannot carry, before any model
    runs. Raises BuildError stating the rule."""
    if not CHANNEL_RE.fullmatch(name):
        raise BuildError(
            f"channel name {name[:80]!r} is invalid: use 1-64 lowercase letters, digits, '.', "
            "'_' or '-', starting with a letter or digit"
        )
    if not VERSION_RE.fullmatch(version):
        raise BuildError(
            f"version {version[:80]!r} is invalid: use 1-64 letters, digits, '.', '+', '_', "
            "'~' or '-', starting with a letter or digit"
        )
    if sequence is not None and not 0 <= sequence <= 2**63 - 1:
        raise BuildError(f"sequence {sequence} is invalid: use an integer from 0 to 2^63-1")


def _load(path: Path, role: str, signature: str | None = None,
          threads: int | None = None) -> LoadedModel:
    try:
        adapter = get_runtime(runtime_for_file(path))
        if signature is not None:
            return adapter.load(path, signature=signature, threads=threads)
        return adapter.load(path, threads=threads)
    except ModelRuntimeError as e:
        raise BuildError(f"{role} {path.name}: {e}") from e


def _load_samples(path: Path) -> dict[str, np.ndarray]:
    """Raises BuildError (one line) for a file that is not an .npz of plain arrays."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz")
            samples = {k: np.asarray(npz[k]) for k in npz.files}
    except OSError as e:
        raise BuildError(f"cannot read samples {path.name}: {e.strerror or e}") from e
    except (ValueError, EOFError, zipfile.BadZipFile) as e:
        raise BuildError(
            f"samples {path.name} is not an .npz file of arrays (write one with numpy.savez: "
            "one array per model input, keyed by input name)"
        ) from e
    except AttributeError as e:  # np.load returned a plain array (.npy)
        raise BuildError(f"samples {path.name} is a .npy array, not an .npz of arrays") from e
    if not samples:
        raise BuildError(f"samples {path.name} holds no array")
    for name, array in samples.items():
        if array.dtype.kind not in "biuf":
            raise BuildError(
                f"samples {path.name}: array {name!r} holds {array.dtype}, not numbers"
            )
        if array.size == 0:
            raise BuildError(
                f"samples {path.name}: array {name!r} is empty (shape {list(array.shape)})"
            )
    return samples


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


def detect_quantization(path: Path, model: LoadedModel, graph: GraphSummary | None = None) -> str:
    """Name the quantization of a model file: dynamic-int8, static-int8, int8, uint8, float16
    or none. `graph`: the ONNX model's summary when already read. Raises BuildError for an ONNX
    file that cannot be read."""
    if model.runtime == "tflite":
        types = {s.datatype for s in [*model.inputs, *model.outputs] if s.quantization}
        if "UINT8" in types:
            return "uint8"
        return "int8" if types else _tflite_weight_types(path)
    if graph is None:
        graph = onnx_graph(path)
    ops = graph.op_types
    if ops & {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul", "ConvInteger"}:
        return "dynamic-int8"
    if ops & {"QuantizeLinear", "QLinearMatMul", "QLinearConv", "DequantizeLinear"}:
        return "static-int8"
    if _ONNX_FLOAT16 in graph.initializer_types:
        return "float16"
    return "none"


def _tflite_weight_types(path: Path) -> str:
    """float16 for a TFLite model whose weights are fp16 (dequantized at load), else none."""
    try:
        import tflite
    except ImportError:
        return "none"
    try:
        model = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
        for g in range(model.SubgraphsLength()):
            graph = model.Subgraphs(g)
            for t in range(graph.TensorsLength()):
                if graph.Tensors(t).Type() == tflite.TensorType.FLOAT16:
                    return "float16"
    except Exception:  # an unreadable flatbuffer: the runtime already loaded it, say nothing
        return "none"
    return "none"


def _tensor_infos(specs: list[TensorSpec]) -> tuple[TensorInfo, ...]:
    return tuple(TensorInfo(s.name, s.datatype, tuple(s.shape)) for s in specs)


def _check_outputs(shipped: LoadedModel, reference: LoadedModel) -> None:
    ours = {s.name for s in shipped.outputs}
    theirs = {s.name for s in reference.outputs}
    if ours != theirs:
        raise BuildError(
            f"model outputs {sorted(ours)} differ from reference outputs {sorted(theirs)}"
        )
    ours_in = {s.name for s in shipped.inputs}
    theirs_in = {s.name for s in reference.inputs}
    if ours_in != theirs_in:
        raise BuildError(
            f"model inputs {sorted(ours_in)} differ from reference inputs {sorted(theirs_in)}"
        )


def _reference_feeds(
    shipped: LoadedModel, reference: LoadedModel, feeds: list[dict[str, np.ndarray]]
) -> list[dict[str, np.ndarray]]:
    """The shipped model's feeds as the reference takes them: the same real values."""
    ours = {s.name: s for s in shipped.inputs}
    theirs = {s.name: s for s in reference.inputs}
    try:
        return [
            {n: encode(real_values(a, ours[n]), theirs[n]) for n, a in feed.items()}
            for feed in feeds
        ]
    except ModelRuntimeError as e:
        raise BuildError(f"the reference model cannot take the samples: {e}") from e


def _check_output_names(req: BuildRequest, model: LoadedModel) -> None:
    """Refuse --check options naming no output, before any model runs. Raises BuildError."""
    names = sorted(s.name for s in model.outputs)
    unknown = sorted(set(req.output_checks) - set(names))
    if unknown:
        raise BuildError(f"--check names {unknown[0]!r}, which is not an output; outputs: {names}")


def resolve_checks(
    req: BuildRequest,
    expected: dict[str, np.ndarray],
    declared: dict[str, tuple[int, ...]],
    defaults: CheckDefaults,
) -> tuple[OutputCheck, ...]:
    """Each output's kind and thresholds: the defaults for its kind, then the user's global
    thresholds where they fit the kind, then the user's per-output ones. Raises BuildError."""
    unknown = sorted(set(req.output_checks) - set(expected))
    if unknown:
        raise BuildError(
            f"--check names {unknown[0]!r}, which is not an output; outputs: {sorted(expected)}"
        )
    with_reference = req.reference is not None
    checks = []
    for name in sorted(expected):
        overrides = req.output_checks.get(name, {})
        kind = overrides.get("kind") or detect_kind(name, expected[name], declared.get(name))
        check = default_check(name, kind, with_reference=with_reference, defaults=defaults)
        vector = kind in ("classes", "embedding", "tensor")
        globals_: dict[str, Any] = {
            "max_abs_error": req.max_abs_error,
            "max_rel_error": req.max_rel_error,
            "min_sqnr_db": req.min_sqnr_db if kind != "score" and kind != "labels" else None,
            "min_cosine": req.min_cosine if vector else None,
            "min_top1_agreement": req.min_top1 if kind in ("classes", "labels") else None,
        }
        check = replace(check, **{k: v for k, v in globals_.items() if v is not None})
        try:
            check = with_overrides(check, overrides)
        except ValueError as e:
            raise BuildError(f"--check {name}: {e}") from e
        checks.append(check)
    return tuple(checks)


def _warnings(
    req: BuildRequest, checks: tuple[OutputCheck, ...], p95: float, smoke_bytes: int,
    model_bytes: int, min_warn_bytes: int,
) -> list[str]:
    found = [w for c in checks for w in useless_thresholds(c)]
    if req.latency_budget_ms is not None and req.latency_budget_ms < p95:
        found.append(
            f"latency budget {req.latency_budget_ms:g} ms is below this host's own p95 "
            f"({p95:.3g} ms): a device as fast as this one fails it"
        )
    if smoke_bytes > model_bytes and smoke_bytes >= min_warn_bytes:
        found.append(
            f"smoke data ({smoke_bytes / 2**20:.1f} MiB) is larger than the model "
            f"({model_bytes / 2**20:.1f} MiB): every device downloads it; pass fewer samples"
        )
    return found


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
    A single-file ONNX model above `defaults.external_data_min_bytes` ships its weights as
    external data (manager/external_data.py).

    Raises BuildError when the release names are invalid, a model cannot be loaded or run,
    samples do not fit, the output cannot be written, or the shipped model disagrees with its
    reference beyond the thresholds (the message gives the figures); BundleError subclasses
    from packing.
    """
    return _build_bundle(req, keys, out, defaults=defaults, progress=progress, now=now)


def _build_bundle(
    req: BuildRequest,
    keys: list[SigningKey],
    out: Path,
    *,
    defaults: BuildDefaults,
    progress: Callable[[int], None] | None,
    now: datetime | None,
) -> BuildResult:
    clock = _Clock()
    with clock.phase("read"):
        check_release(req.name, req.version, req.sequence)
        created = now or utcnow()
        runtime = _runtime_name(req.model)
        files = model_files(req.model)
        if req.reference is not None:
            model_files(req.reference)  # a reference with a missing data file: refuse in one line
        raw_samples = _load_samples(req.samples) if req.samples else None
        # a large single-file ONNX model ships as model.onnx + model.onnx.data, packed from
        # ranges of the file itself; the build runs the file as it is (onnxruntime maps its
        # weights from it, as from the data file: agent/runtimes/onnx_weights.py)
        plan = shipped_plan(req.model, defaults.external_data_min_bytes)
    out = Path(out)
    if plan is not None:
        model_payloads = [Payload(_model_file(req.model), plan.graph),
                          Payload(DATA_FILE, plan.data)]
        data_files: tuple[str, ...] = (DATA_FILE,)
    else:
        model_payloads = [
            Payload(_model_file(req.model), req.model),
            *(Payload(f, files.folder / f) for f in files.data_files),
        ]
        data_files = files.data_files
    with _BundleFile(out, created, model_payloads, defaults.pack, req.encryption) as bundle:
        body = bundle.body
        packer = _ModelPacker(body, model_payloads, progress, also_hash=req.reference)
        try:
            runs = _run_models(req, files, raw_samples, defaults, clock)
            with clock.phase("judge"):
                checks, agreement, smoke = _judge(req, runs, defaults)
            p50, p95 = percentile(runs.latencies, 50), percentile(runs.latencies, 95)
            inputs_npz, reference_npz = _npz_bytes(runs.stored), _npz_bytes(runs.expected)
            model_bytes = sum(p.size() for p in model_payloads)
            warnings = _warnings(req, checks, p95, len(inputs_npz) + len(reference_npz),
                                 model_bytes, defaults.smoke_warn_min_bytes)
            build_info = {
                "host": f"{platform.system()} {platform.machine()}",
                "runtime_versions": runs.runtime_versions,
                "host_p50_ms": round(p50, 4),
                "host_p95_ms": round(p95, 4),
                "host_latency_runs": len(runs.latencies),
                "agreement": _json_safe(agreement.to_dict()),
            }
            with clock.phase("pack_wait"):
                packer.wait(out)
            clock.seconds["pack"] = packer.seconds
            manifest = _manifest(req, created, runtime, data_files, runs, smoke, build_info,
                                 packer.hashed)
            with clock.phase("write"):
                body.add(Payload(INPUTS_PATH, inputs_npz))
                body.add(Payload(REFERENCE_PATH, reference_npz))
                final = bundle.finish(manifest, keys)
        finally:
            packer.cancel()  # a refused build stops packing; a finished one has stopped
    with clock.phase("bundle_sha256"):  # what hashing took beyond the write's own wait
        bundle_sha256 = bundle.sha256()
    clock.seconds["total"] = clock.elapsed()
    return BuildResult(
        manifest=final,
        agreement=agreement,
        host_p50_ms=p50,
        host_p95_ms=p95,
        output=out,
        bundle_bytes=out.stat().st_size,
        bundle_sha256=bundle_sha256,
        model_bytes=model_bytes,
        warnings=tuple(warnings),
        timings=dict(clock.seconds),
    )


def _manifest(
    req: BuildRequest,
    created: datetime,
    runtime: str,
    data_files: tuple[str, ...],
    runs: _Runs,
    smoke: SmokeTest,
    build_info: dict[str, Any],
    reference_sha256: str | None,
) -> Manifest:
    """The release's manifest, its files to be filled in by packing."""
    return Manifest(
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
                file=_model_file(req.model),
                inputs=runs.inputs,
                outputs=runs.outputs_info,
                quantization=runs.quantization,
                reference_sha256=reference_sha256,
                data_files=data_files,
                signature=req.signature,
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
        build=build_info,
        activation=req.activation,
    )


def _model_file(model: Path) -> str:
    """The model's name in the bundle."""
    return f"model{model.suffix.lower()}"


@dataclass(frozen=True)
class _Runs:
    """What running the models on the samples gave."""

    outputs: dict[str, np.ndarray]  # the shipped model's, one index per feed
    expected: dict[str, np.ndarray]  # the reference's (the shipped model's without one)
    stored: dict[str, np.ndarray]  # the samples as the bundle stores them
    latencies: list[float]  # ms, of this host's latency runs
    inputs: tuple[TensorInfo, ...]
    outputs_info: tuple[TensorInfo, ...]
    quantization: str
    runtime_versions: dict[str, str]


def _run_models(
    req: BuildRequest,
    files: ModelFiles,
    raw_samples: dict[str, np.ndarray] | None,
    defaults: BuildDefaults,
    clock: _Clock,
) -> _Runs:
    """Load the shipped model and its reference once each, run the samples through both and
    time the shipped one. Raises BuildError."""
    with clock.phase("load"):
        threads = defaults.model_threads
        shipped = _load(req.model, "model", req.signature, threads)
        reference = (
            _load(req.reference, "reference model", req.signature, threads)
            if req.reference else shipped
        )
    try:
        if reference is not shipped:
            _check_outputs(shipped, reference)
        _check_output_names(req, shipped)
        generated = raw_samples is None
        try:
            if raw_samples is None:
                raw_samples = generate_samples(
                    shipped.inputs, defaults.generated_samples, defaults.seed
                )
            plan = plan_feeds(shipped.inputs, raw_samples)
            if plan.count > defaults.max_feeds:
                raise BuildError(
                    f"samples hold {plan.count} feeds; at most {defaults.max_feeds} go in a bundle"
                )
            feeds = encoded_feeds(shipped, raw_samples)
            stored = stored_samples(shipped.inputs, feeds)
        except ModelRuntimeError as e:
            raise BuildError(f"samples do not fit the model: {e}") from e
        try:
            with clock.phase("run"):
                outputs, sample_latencies = run_feeds(shipped, feeds)
                expected = outputs
                if reference is not shipped:
                    expected, _ = run_feeds(reference, _reference_feeds(shipped, reference, feeds))
            with clock.phase("latency"):
                latencies = _host_latencies(shipped, feeds[0], sample_latencies, defaults)
        except ModelRuntimeError as e:
            hint = "; give real inputs with --samples" if generated else ""
            raise BuildError(f"running the models on the samples failed: {e}{hint}") from e
        version = get_runtime(shipped.runtime).version()
        return _Runs(
            outputs=outputs,
            expected=expected,
            stored=stored,
            latencies=latencies,
            inputs=_tensor_infos(shipped.inputs),
            outputs_info=_tensor_infos(shipped.outputs),
            quantization=detect_quantization(req.model, shipped, files.graph),
            runtime_versions={shipped.runtime: version} if version else {},
        )
    finally:
        shipped.close()
        if reference is not shipped:
            reference.close()


def _host_latencies(
    model: LoadedModel, feed: dict[str, np.ndarray], sample_latencies: list[float],
    defaults: BuildDefaults,
) -> list[float]:
    """This host's latency in ms: the runs of the sample feeds after the warm-up ones (they
    are inferences like any other), topped up with runs of `feed` while fewer than
    `latency_runs`, none begun after `host_latency_s`."""
    latencies = list(sample_latencies[defaults.warmup_runs:defaults.warmup_runs
                                      + defaults.latency_runs])
    if len(latencies) >= defaults.latency_runs:
        return latencies
    for _ in range(max(0, defaults.warmup_runs - len(sample_latencies))):
        model.run(feed)
    deadline = time.perf_counter() + defaults.host_latency_s
    while len(latencies) < defaults.latency_runs:
        start = time.perf_counter()
        model.run(feed)
        end = time.perf_counter()
        latencies.append((end - start) * 1000.0)
        if end >= deadline:
            break
    return latencies


def _judge(
    req: BuildRequest, runs: _Runs, defaults: BuildDefaults
) -> tuple[tuple[OutputCheck, ...], Agreement, SmokeTest]:
    """Each output's checks, the agreement with the reference, and the smoke test; raises
    BuildError when the reference is not finite or the shipped model fails a check."""
    for name, values in runs.expected.items():
        if not np.all(np.isfinite(values)):
            raise BuildError(
                f"the reference gives NaN/Inf on output {name!r} for these samples; "
                "a reference must be finite"
            )
    declared = {t.name: t.shape for t in runs.outputs_info}
    checks = resolve_checks(req, runs.expected, declared, defaults.checks)
    try:
        agreement = compare_outputs(runs.outputs, runs.expected, {c.name: c.kind for c in checks})
    except ValueError as e:
        raise BuildError(f"model and reference disagree in shape: {e}") from e
    smoke = SmokeTest(
        model="model",
        inputs=INPUTS_PATH,
        reference=REFERENCE_PATH,
        warmup_runs=defaults.warmup_runs,
        latency_runs=defaults.latency_runs,
        p95_latency_budget_ms=req.latency_budget_ms,
        max_memory_mb=req.max_memory_mb,
        outputs=checks,
    )
    failures = accuracy_failures(agreement, smoke)
    if failures:
        raise BuildError(
            f"model disagrees with its reference on {agreement.samples} sample "
            f"feed{'' if agreement.samples == 1 else 's'}: "
            + "; ".join(failures)
        )
    return checks, agreement, smoke


class _Clock:
    """Seconds spent in each phase of a build (`bundle build --json` reports them)."""

    def __init__(self) -> None:
        self._start = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def elapsed(self) -> float:
        return time.perf_counter() - self._start


class _Cancelled(Exception):
    """Raised inside the packer's progress hook to stop packing a build that was refused."""


class _ModelPacker:
    """Compresses and hashes the model's files into the bundle body on a thread of its own
    while the build loads and runs the models; then hashes `also_hash` (the reference model,
    whose sha256 the manifest names) into `hashed`."""

    def __init__(
        self,
        body: BundleBody,
        payloads: list[Payload],
        progress: Callable[[int], None] | None,
        *,
        also_hash: Path | None = None,
    ) -> None:
        self._body = body
        self._payloads = payloads
        self._progress = progress
        self._also_hash = also_hash
        self.hashed: str | None = None
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self.seconds = 0.0  # how long packing took, on its own thread
        self._thread = threading.Thread(target=self._pack, name="satchel-pack", daemon=True)
        self._thread.start()

    def _pack(self) -> None:
        start = time.perf_counter()
        try:
            for payload in self._payloads:
                self._body.add(payload, self._step)
            if self._also_hash is not None:
                self.hashed = self._hash(self._also_hash)
        except _Cancelled:
            pass
        except BaseException as e:  # handed over to the build's thread by wait()
            self._error = e
        self.seconds = time.perf_counter() - start

    @staticmethod
    def _hash(path: Path) -> str:
        try:
            return _sha256_file(path)
        except OSError as e:
            raise BuildError(f"cannot read {path.name}: {e.strerror or e}") from e

    def _step(self, size: int) -> None:
        if self._stop.is_set():
            raise _Cancelled
        if self._progress is not None:
            self._progress(size)

    def wait(self, out: Path) -> None:
        """Block until the model's files are in the body and `hashed` is set. Raises
        BuildError when they could not be written or read, and what else packing raised
        (BundleError, ValueError)."""
        self._thread.join()
        if isinstance(self._error, OSError):
            reason = self._error.strerror or self._error
            raise BuildError(f"cannot write bundle {out}: {reason}") from self._error
        if self._error is not None:
            raise self._error

    def cancel(self) -> None:
        """Stop packing (the build was refused) and wait for the thread to end."""
        self._stop.set()
        self._thread.join()


def _json_safe(value: Any) -> Any:
    """`value` with non-finite floats as None: the manifest is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _runtime_name(path: Path) -> str:
    try:
        return runtime_for_file(path)
    except ModelRuntimeError as e:
        raise BuildError(str(e)) from e


class _BundleFile:
    """The bundle being written at `out`'s temporary name: its payloads packed by `body`
    straight into it behind room for the head (bundles/pack.py `head_room`), so nothing is
    copied at the end (`in_place_room`: a smaller model is copied).
    `finish` writes the head and makes the file `out` (fsync, rename) while a thread reads it
    back for its sha256; leaving without `finish` removes it.
    Raises BuildError when the folder or the file cannot be written."""

    def __init__(self, out: Path, created: datetime, payloads: list[Payload],
                 options: PackOptions, encryption: Any = None) -> None:
        self._out = out
        self.hasher: _FileHasher | None = None
        self._done = False
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            # the chunk index sized by the model's files (the smoke data is small beside them)
            chunk_size = index_chunk_size(payloads, options)
            room = in_place_room([*(p.size() for p in payloads), 0, 0], chunk_size)
            self._writer = atomic_writer(out)
            self._file = self._writer.__enter__()
        except OSError as e:
            raise BuildError(f"cannot write bundle {out}: {e.strerror or e}") from e
        try:
            self.body = BundleBody(int(created.timestamp()), chunk_size, options,
                                   tmp_dir=out.parent, encryption=encryption,
                                   into=self._file, room=room)
        except BaseException as e:
            self._abandon(e)
            self._raise(e)

    def finish(self, manifest: Manifest, keys: list[SigningKey]) -> Manifest:
        """Sign and write the head, make the bundle durable at `out`; the final manifest.
        Raises BuildError, BundleError."""
        try:
            final = self.body.write(self._file, manifest, keys)
            self._file.flush()
            self.hasher = _FileHasher(self._file.fileno())
            self._done = True
            self._writer.__exit__(None, None, None)
        except BaseException as e:
            if not self._done:
                self._abandon(e)
            elif self.hasher is not None:
                self.hasher.join()
            self._raise(e)
        return final

    def sha256(self) -> str:
        """The written bundle's sha256; raises BuildError."""
        assert self.hasher is not None, "finish() first"
        return self.hasher.result(self._out)

    def _abandon(self, error: BaseException) -> None:
        self._done = True
        if self.hasher is not None:
            self.hasher.join()
        self._writer.__exit__(type(error), error, error.__traceback__)  # removes the file

    def _raise(self, error: BaseException) -> NoReturn:
        """Raise `error`, an OSError as the BuildError saying the bundle cannot be written."""
        if isinstance(error, OSError):
            raise BuildError(f"cannot write bundle {self._out}: {error.strerror or error}") \
                from error
        raise error

    def __enter__(self) -> _BundleFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: object) -> None:
        if not self._done:
            self._abandon(error or BuildError("the bundle was left unfinished"))


class _FileHasher:
    """The sha256 of the file open at `fd` (written and flushed), read on a thread of its own
    from its start to its end as they are when made; `result` waits for it and raises the
    OSError reading raised."""

    def __init__(self, fd: int) -> None:
        self._fd = os.dup(fd)  # the writer closes its own descriptor meanwhile
        self._size = os.fstat(self._fd).st_size
        self._sha = hashlib.sha256()
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="satchel-hash", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            at = 0
            while at < self._size:
                data = os.pread(self._fd, min(_HASH_READ_BYTES, self._size - at), at)
                if not data:
                    raise OSError(f"bundle shrank while read back ({at} of {self._size} bytes)")
                self._sha.update(data)
                at += len(data)
        except OSError as e:
            self._error = e
        finally:
            os.close(self._fd)

    def join(self) -> None:
        self._thread.join()

    def result(self, out: Path) -> str:
        """The sha256; raises BuildError when the bundle could not be read back."""
        self.join()
        if self._error is not None:
            reason = self._error.strerror or self._error
            raise BuildError(f"cannot read back bundle {out}: {reason}") from self._error
        return self._sha.hexdigest()
