"""`satchel bundle build --variant NAME:MODEL[:REFERENCE]`: one release, several models.

Each variant is built as `manager.build` builds a single model (its runs on the samples, its
judgement against its reference, its smoke test and budgets), into one bundle signed once.
Variant NAME's files sit under `variants/NAME/` (its model and data files, its smoke inputs and
reference outputs); the default variant's model is the manifest's first, so that whatever reads
`models[0]` reads the default. The `variants` section (bundles/variants.py) names them, their
accuracy ranks and the selection policy.

Every variant takes the same inputs and gives the same outputs (names, datatypes, shapes):
the device answers a request with any of them.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from satchel.bundles.errors import WrongTypeError
from satchel.bundles.keys import SigningKey
from satchel.bundles.manifest import Compatibility, Manifest, ModelEntry, SmokeTest
from satchel.bundles.pack import Payload
from satchel.bundles.smoke import Agreement, percentile
from satchel.bundles.timeutil import utcnow
from satchel.bundles.variants import (
    MAX_VARIANTS,
    VARIANT_NAME_RE,
    Policy,
    Variant,
    Variants,
    default_policy,
)
from satchel.manager.build import (
    MIN_RUNTIME_VERSION,
    BuildDefaults,
    BuildRequest,
    BuildResult,
    _BundleFile,
    _Clock,
    _json_safe,
    _judge,
    _load_samples,
    _ModelPacker,
    _npz_bytes,
    _run_models,
    _Runs,
    _runtime_name,
    _warnings,
    check_release,
)
from satchel.manager.errors import BuildError
from satchel.manager.model_files import ModelFiles, model_files


@dataclass(frozen=True)
class VariantSpec:
    name: str
    model: Path
    reference: Path | None = None  # None: the release's --reference, if any
    latency_budget_ms: float | None = None  # None: the release's --latency-budget-ms


def parse_variant(value: str) -> VariantSpec:
    """`NAME:MODEL[:REFERENCE]` as a VariantSpec. Raises BuildError in one line."""
    name, sep, rest = value.partition(":")
    if not sep or not rest:
        raise BuildError(f"--variant {value!r}: expected NAME:MODEL[:REFERENCE]")
    if not VARIANT_NAME_RE.fullmatch(name):
        raise BuildError(
            f"--variant name {name[:40]!r} is invalid: use 1-32 lowercase letters, digits, "
            "'_' or '-', starting with a letter or digit"
        )
    model, sep, reference = rest.partition(":")
    for path in (model, reference):
        if path and not Path(path).is_file():
            raise BuildError(f"--variant {name}: no such model file {path}")
    return VariantSpec(name, Path(model), Path(reference) if sep and reference else None)


@dataclass(frozen=True)
class _Built:
    """One variant, built: what the manifest says of it and what it measured."""

    entry: ModelEntry
    smoke: SmokeTest
    runs: _Runs
    agreement: Agreement
    p50: float
    p95: float
    warnings: list[str]
    model_bytes: int


def _order(specs: list[VariantSpec], default: str | None) -> list[VariantSpec]:
    """The variants, the default first. Raises BuildError."""
    if not specs:
        raise BuildError("no --variant given")
    if len(specs) > MAX_VARIANTS:
        raise BuildError(f"{len(specs)} variants; a release carries at most {MAX_VARIANTS}")
    names = [s.name for s in specs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise BuildError(f"--variant {repeated[0]!r} is given twice")
    default = default or names[0]
    if default not in names:
        raise BuildError(f"--default-variant {default!r} is not a --variant; "
                         f"variants: {', '.join(names)}")
    return sorted(specs, key=lambda s: s.name != default)


def _payloads(spec: VariantSpec, files: ModelFiles) -> list[Payload]:
    folder = f"variants/{spec.name}"
    return [
        Payload(f"{folder}/model{spec.model.suffix.lower()}", spec.model),
        *(Payload(f"{folder}/{f}", files.folder / f) for f in files.data_files),
    ]


def _check_same_interface(first: _Built, other: _Built) -> None:
    a, b = first.entry, other.entry
    if not _compatible(a.inputs, b.inputs):
        raise BuildError(
            f"variant {b.name!r} takes {_tensors(b.inputs)}, but {a.name!r} takes "
            f"{_tensors(a.inputs)}: every variant must take the same inputs"
        )
    if {t.name for t in a.outputs} != {t.name for t in b.outputs}:
        raise BuildError(
            f"variant {b.name!r} gives {_tensors(b.outputs)}, but {a.name!r} gives "
            f"{_tensors(a.outputs)}: every variant must give the same outputs"
        )


def _compatible(ours: Any, theirs: Any) -> bool:
    """Same names and datatypes, shapes of the same rank that agree wherever both are fixed
    (a TFLite [1, 32] beside an ONNX [-1, 32])."""
    if {t.name for t in ours} != {t.name for t in theirs}:
        return False
    by_name = {t.name: t for t in theirs}
    for t in ours:
        u = by_name[t.name]
        if t.datatype != u.datatype or len(t.shape) != len(u.shape):
            return False
        if any(x != y and x != -1 and y != -1 for x, y in zip(t.shape, u.shape, strict=True)):
            return False
    return True


def _tensors(specs: Any) -> str:
    return ", ".join(f"{t.name} {t.datatype}{list(t.shape)}" for t in specs)


def _build_one(
    req: BuildRequest, spec: VariantSpec, body: Any, raw_samples: Any, out: Path,
    defaults: BuildDefaults, clock: _Clock, progress: Callable[[int], None] | None,
) -> tuple[_Built, list[Payload]]:
    vreq = replace(req, model=spec.model, reference=spec.reference or req.reference,
                   latency_budget_ms=spec.latency_budget_ms or req.latency_budget_ms)
    files = model_files(spec.model)
    if vreq.reference is not None:
        model_files(vreq.reference)
    payloads = _payloads(spec, files)
    packer = _ModelPacker(body, payloads, progress, also_hash=vreq.reference)
    try:
        try:
            runs = _run_models(vreq, files, raw_samples, defaults, clock)
            with clock.phase("judge"):
                checks, agreement, smoke = _judge(vreq, runs, defaults)
        except BuildError as e:
            raise BuildError(f"variant {spec.name}: {e}") from e
        packer.wait(out)
    finally:
        packer.cancel()
    folder = f"variants/{spec.name}"
    smoke = replace(smoke, model=spec.name, inputs=f"{folder}/smoke/inputs.npz",
                    reference=f"{folder}/smoke/reference.npz")
    entry = ModelEntry(
        name=spec.name, runtime=_runtime_name(spec.model), file=payloads[0].path,
        inputs=runs.inputs, outputs=runs.outputs_info, quantization=runs.quantization,
        reference_sha256=packer.hashed, data_files=files.data_files, signature=req.signature,
    )
    p50, p95 = percentile(runs.latencies, 50), percentile(runs.latencies, 95)
    inputs_npz, reference_npz = _npz_bytes(runs.stored), _npz_bytes(runs.expected)
    model_bytes = files.total_bytes()
    warnings = [f"variant {spec.name}: {w}" for w in _warnings(
        vreq, checks, p95, len(inputs_npz) + len(reference_npz), model_bytes,
        defaults.smoke_warn_min_bytes)]
    smoke_payloads = [Payload(smoke.inputs, inputs_npz), Payload(smoke.reference, reference_npz)]
    return _Built(entry, smoke, runs, agreement, p50, p95, warnings, model_bytes), smoke_payloads


def build_variant_bundle(
    req: BuildRequest,
    specs: list[VariantSpec],
    keys: list[SigningKey],
    out: Path,
    *,
    default: str | None = None,
    policy: Policy | None = None,
    accuracy: dict[str, int] | None = None,
    defaults: BuildDefaults | None = None,
    progress: Callable[[int], None] | None = None,
    now: datetime | None = None,
) -> BuildResult:
    """Build every variant as `build_bundle` builds one model and write one signed bundle.

    `accuracy`: a variant's accuracy rank (default: the order given, the first highest);
    `policy`: the selection policy (default `bundles.variants.default_policy`). Raises
    BuildError (the failing variant named), BundleError subclasses from packing.
    """
    clock = _Clock()
    defaults = defaults or BuildDefaults()
    check_release(req.name, req.version, req.sequence)
    ranks = {s.name: len(specs) - i for i, s in enumerate(specs)}
    unknown = sorted(set(accuracy or {}) - set(ranks))
    if unknown:
        raise BuildError(f"accuracy level given for {unknown[0]!r}, which is not a --variant")
    ranks.update(accuracy or {})
    ordered = _order(specs, default)
    variants = Variants(
        default=ordered[0].name,
        variants=tuple(Variant(s.name, s.name, ranks[s.name]) for s in ordered),
    )
    try:
        variants = variants.with_policy(policy or default_policy(tuple(s.name for s in specs)))
    except WrongTypeError as e:
        raise BuildError(str(e)) from e
    created = now or utcnow()
    raw_samples = _load_samples(req.samples) if req.samples else None
    out = Path(out)
    every = [p for s in ordered for p in _payloads(s, model_files(s.model))]
    built: list[_Built] = []
    with _BundleFile(out, created, every, defaults.pack, req.encryption) as bundle:
        body = bundle.body
        smoke_payloads: list[Payload] = []
        for spec in ordered:
            one, data = _build_one(req, spec, body, raw_samples, out, defaults,
                                   clock, progress)
            if built:
                _check_same_interface(built[0], one)
            built.append(one)
            smoke_payloads += data
        for payload in smoke_payloads:
            body.add(payload)
        first = built[0]
        build_info = {
            "host": f"{platform.system()} {platform.machine()}",
            "runtime_versions": {k: v for b in built for k, v in b.runs.runtime_versions.items()},
            "host_p50_ms": round(first.p50, 4),
            "host_p95_ms": round(first.p95, 4),
            "host_latency_runs": len(first.runs.latencies),
            "agreement": _json_safe(first.agreement.to_dict()),
            "variants": {
                b.entry.name: {
                    "host_p50_ms": round(b.p50, 4), "host_p95_ms": round(b.p95, 4),
                    "quantization": b.entry.quantization, "model_bytes": b.model_bytes,
                    "max_rel_error": _json_safe(round(b.agreement.max_rel_error, 6)),
                } for b in built
            },
        }
        runtimes = sorted({b.entry.runtime for b in built})
        manifest = Manifest(
            name=req.name,
            version=req.version,
            sequence=req.sequence if req.sequence is not None else int(time.time()),
            created=created,
            expires=req.expires,
            files=(),
            models=tuple(b.entry for b in built),
            smoke_tests=tuple(b.smoke for b in built),
            health_policy=req.health_policy,
            compatibility=Compatibility(
                device_classes=req.device_classes,
                architectures=req.architectures,
                runtimes={r: MIN_RUNTIME_VERSION[r] for r in runtimes},
                min_agent_version=req.min_agent_version,
            ),
            description=req.description,
            build=build_info,
            variants=variants,
            activation=req.activation,
        )
        with clock.phase("write"):
            final = bundle.finish(manifest, keys)
    bundle_sha256 = bundle.sha256()
    clock.seconds["total"] = clock.elapsed()
    return BuildResult(
        manifest=final,
        agreement=first.agreement,
        host_p50_ms=first.p50,
        host_p95_ms=first.p95,
        output=out,
        bundle_bytes=out.stat().st_size,
        bundle_sha256=bundle_sha256,
        model_bytes=sum(b.model_bytes for b in built),
        warnings=tuple(w for b in built for w in b.warnings),
        timings=dict(clock.seconds),
    )
