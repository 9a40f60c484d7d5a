"""A bundle and a model's agreement with its reference as terminal lines: `bundle inspect`
prints the manifest, `bundle build` and `model quantize` the agreement per output."""

from __future__ import annotations

from typing import Any

from satchel.bundles.manifest import Manifest
from satchel.bundles.timeutil import format_time
from satchel.manager.commands.common import human_bytes


def output_line(o: Any) -> str:
    """One output's figures, e.g. "logits (classes): max abs 0.03, SQNR 31.2 dB, top-1 100%"."""
    parts = [f"max abs error {o.max_abs_error:.4g} ({o.rel_error:.3g} of range {o.range:.4g})"]
    if o.sqnr_db is not None:
        parts.append(f"SQNR {o.sqnr_db:.1f} dB")
    if o.min_cosine is not None:
        parts.append(f"min cosine {o.min_cosine:.5f}")
    if o.top1_agreement is not None:
        parts.append(("agreement " if o.kind == "labels" else "top-1 ") + f"{o.top1_agreement:.1%}")
    if o.top5_agreement is not None:
        parts.append(f"top-5 {o.top5_agreement:.1%}")
    if o.nonfinite:
        parts.append(f"{o.nonfinite} NaN/Inf")
    return f"{o.name} ({o.kind}): " + ", ".join(parts)


def _measured_line(o: dict[str, Any]) -> str:
    figures = [
        f"{label} {o[key]:.4g}" for key, label in (
            ("max_abs_error", "max abs error"), ("rel_error", "rel error"), ("sqnr_db", "SQNR dB"),
            ("min_cosine", "min cosine"), ("top1_agreement", "top-1"),
        ) if isinstance(o.get(key), int | float)
    ]
    return f"{o.get('name')} ({o.get('kind')}): " + ", ".join(figures)


def describe(manifest: Manifest, sigs: list[dict[str, str]], names: dict[str, str]) -> list[str]:
    """Human-readable lines describing a manifest and its signatures."""
    m = manifest
    lines = [
        f"bundle {m.name} {m.version} (sequence {m.sequence})",
        f"  created {format_time(m.created)}, expires "
        f"{format_time(m.expires) if m.expires else 'never'}",
    ]
    if m.description:
        lines.append(f"  {m.description}")
    c = m.compatibility
    lines.append(
        f"  devices: classes {', '.join(c.device_classes) or 'any'}; arch "
        f"{', '.join(c.architectures) or 'any'}; agent >= {c.min_agent_version}; runtimes "
        + ", ".join(f"{k} >= {v}" for k, v in c.runtimes.items())
    )
    for model in m.models:
        lines.append(
            f"  model {model.name}: {model.file} on {model.runtime}, "
            f"quantization {model.quantization}"
            + (f", signature {model.signature}" if model.signature else "")
        )
        for data in model.data_paths():
            lines.append(f"    data   {data}" + (
                "  (ONNX external data: onnxruntime maps these weights, no copy in memory)"
                if model.runtime == "onnxruntime" else ""))
        for t in model.inputs:
            lines.append(f"    input  {t.name} {t.datatype} {list(t.shape)}")
        for t in model.outputs:
            lines.append(f"    output {t.name} {t.datatype} {list(t.shape)}")
    for s in m.smoke_tests:
        limits = [
            f"{k}={v}"
            for k, v in s.to_dict().items()
            if k not in ("model", "inputs", "reference", "outputs")
        ]
        lines.append(f"  smoke test on {s.model}: {', '.join(limits)}")
        for check in s.outputs:
            rules = ", ".join(f"{k}={v}" for k, v in check.to_dict().items() if k != "name")
            lines.append(f"    output {check.name}: {rules}")
    if m.variants is not None:  # several models, the device picks (docs/VARIANTS.md)
        v = m.variants
        listed = ", ".join(f"{x.name} (accuracy {x.accuracy_level})" for x in v.variants)
        lines.append(f"  variants: {listed}; default {v.default}; dwell {v.policy.dwell_s:g} s")
        lines += [f"    rule {r.describe()}" + (f" until {r.leave.describe()}" if r.leave else "")
                  for r in v.policy.rules]
    measured = m.build.get("agreement") if isinstance(m.build, dict) else None
    if isinstance(measured, dict) and isinstance(measured.get("outputs"), list):
        n = measured.get("samples")
        lines.append(f"  measured at build on {n} sample feed{'' if n == 1 else 's'}:")
        for o in measured["outputs"]:
            lines.append(f"    {_measured_line(o)}")
    hp = m.health_policy.to_dict()
    lines.append("  health policy: " + ", ".join(f"{k}={v}" for k, v in hp.items()))
    for stage, policy in (m.activation.to_dict() if m.activation else {}).items():
        lines.append(f"  activation {stage}: " + ", ".join(f"{k}={v}" for k, v in policy.items()))
    if m.delta_base is not None:
        lines.append(f"  delta against {m.delta_base.channel} {m.delta_base.describe()}: "
                     "patched files need that release on the device")
    lines.append(f"  files ({human_bytes(m.unpacked_size)} unpacked):")
    for f in m.files:
        lines.append(
            f"    {f.path:<24} {human_bytes(f.size):>10} -> "
            f"{human_bytes(f.compressed_size):>10}  sha256 {f.sha256[:16]}"
            + (f"  patch ({f.delta.method}) of base sha256 {f.delta.base_sha256[:16]}"
               if f.delta else "")
        )
    for sig in sigs:
        name = names.get(sig["keyid"])
        lines.append(f"  signed by {sig['keyid'][:16]}" + (f" ({name})" if name else ""))
    return lines
