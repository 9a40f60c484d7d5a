"""`satchel bundle build | inspect | verify`: make and check signed model bundles."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from bundles.manifest import HealthPolicy, Manifest
from bundles.reader import check_payloads, read_unverified, verify_bundle
from bundles.timeutil import format_time, utcnow
from manager.commands.common import (
    echo_json,
    human_bytes,
    load_keys,
    passphrase_file_option,
    passphrase_from,
    refusals_exit_1,
)
from manager.errors import KeyDirError
from manager.keydir import key_names, read_root


@click.group()
def bundle() -> None:
    """Build, inspect and verify signed model bundles."""


def _progress_bar(total: int, label: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=label, disable=None, leave=False)


@bundle.command("build")
@click.option("--name", required=True, help="Model channel, e.g. person-detector.")
@click.option("--version", "version", required=True, help="Release version string.")
@click.option(
    "--model",
    "model_path",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Model to ship (.onnx or .tflite), usually INT8.",
)
@click.option(
    "--reference",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Float model the shipped one is compared with (when quantized).",
)
@click.option(
    "--samples",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="INPUTS.npz: one array per model input, keyed by input name.",
)
@click.option("--sequence", type=click.IntRange(0), help="Default: build time, epoch seconds.")
@click.option("--device-class", "device_classes", multiple=True, help="Allowed device class.")
@click.option("--arch", "architectures", multiple=True, help="Allowed CPU arch (x86_64...).")
@click.option(
    "--latency-budget-ms",
    type=click.FloatRange(min=0, min_open=True),
    help="p95 latency budget measured on the device.",
)
@click.option(
    "--max-memory-mb",
    type=click.FloatRange(min=0, min_open=True),
    help="Peak memory budget of the smoke test on the device.",
)
@click.option("--max-abs-error", type=click.FloatRange(min=0), help="Largest |out - ref|.")
@click.option("--min-cosine", type=click.FloatRange(-1, 1), help="Cosine similarity floor.")
@click.option("--min-top1", type=click.FloatRange(0, 1), help="Top-1 agreement floor.")
@click.option("--expires-days", type=click.IntRange(1), help="Manifest expiry (days).")
@click.option(
    "--probation-s",
    type=click.FloatRange(0),
    default=600.0,
    show_default=True,
    help="Health probation window after activation.",
)
@click.option("--max-error-rate", type=click.FloatRange(0, 1), default=0.05, show_default=True)
@click.option("--max-nan-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option(
    "--max-p95-latency-ms",
    type=click.FloatRange(min=0, min_open=True),
    help="Health policy p95 latency limit while serving.",
)
@click.option(
    "--min-samples",
    type=click.IntRange(1),
    default=20,
    show_default=True,
    help="Inferences before the health policy judges.",
)
@click.option("--description", default="", help="Free text shown by inspect.")
@click.option(
    "--key",
    "key_paths",
    multiple=True,
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Signing key (repeat for a threshold above one).",
)
@passphrase_file_option
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@refusals_exit_1
def build_cmd(**opts: Any) -> None:
    """Build a signed bundle with the model, its smoke test and its health policy.

    Runs the reference (float) model and the shipped model on the samples, stores inputs,
    reference outputs and thresholds as the smoke test, and refuses to build when the
    shipped model disagrees with its reference beyond the thresholds.
    """
    from manager.build import BuildDefaults, BuildRequest, build_bundle

    keys = load_keys(opts["key_paths"], passphrase_from(opts["passphrase_file"]))
    expires = utcnow() + timedelta(days=opts["expires_days"]) if opts["expires_days"] else None
    req = BuildRequest(
        name=opts["name"],
        version=opts["version"],
        model=opts["model_path"],
        reference=opts["reference"],
        samples=opts["samples"],
        sequence=opts["sequence"],
        device_classes=opts["device_classes"],
        architectures=opts["architectures"],
        latency_budget_ms=opts["latency_budget_ms"],
        max_memory_mb=opts["max_memory_mb"],
        max_abs_error=opts["max_abs_error"],
        min_cosine=opts["min_cosine"],
        min_top1=opts["min_top1"],
        expires=expires,
        description=opts["description"],
        health_policy=HealthPolicy(
            probation_s=opts["probation_s"],
            min_samples=opts["min_samples"],
            max_error_rate=opts["max_error_rate"],
            max_nan_rate=opts["max_nan_rate"],
            max_p95_latency_ms=opts["max_p95_latency_ms"],
        ),
    )
    size = opts["model_path"].stat().st_size
    bar = _progress_bar(size, "packing") if size >= BuildDefaults().progress_min_bytes else None
    try:
        result = build_bundle(req, keys, opts["output"], progress=bar.update if bar else None)
    finally:
        if bar is not None:
            bar.close()
    if opts["as_json"]:
        echo_json(result.to_dict())
        return
    a, m = result.agreement, result.manifest
    top1 = "n/a" if a.top1_agreement is None else f"{a.top1_agreement:.1%}"
    click.echo(f"built {result.output} ({human_bytes(result.bundle_bytes)})")
    click.echo(
        f"  {m.name} {m.version} sequence {m.sequence}, {m.models[0].runtime}, "
        f"quantization {m.models[0].quantization}"
    )
    click.echo(
        f"  vs reference on {a.samples} samples: max abs error {a.max_abs_error:.4g}, "
        f"min cosine {a.min_cosine:.5f}, top-1 {top1}"
    )
    click.echo(f"  host latency p50 {result.host_p50_ms:.3f} ms, p95 {result.host_p95_ms:.3f} ms")
    click.echo(f"  signed by {len(keys)} key(s); sha256 {result.bundle_sha256}")


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
        )
        for t in model.inputs:
            lines.append(f"    input  {t.name} {t.datatype} {list(t.shape)}")
        for t in model.outputs:
            lines.append(f"    output {t.name} {t.datatype} {list(t.shape)}")
    for s in m.smoke_tests:
        limits = [
            f"{k}={v}" for k, v in s.to_dict().items() if k not in ("model", "inputs", "reference")
        ]
        lines.append(f"  smoke test on {s.model}: {', '.join(limits)}")
    hp = m.health_policy.to_dict()
    lines.append("  health policy: " + ", ".join(f"{k}={v}" for k, v in hp.items()))
    lines.append(f"  files ({human_bytes(m.unpacked_size)} unpacked):")
    for f in m.files:
        lines.append(
            f"    {f.path:<24} {human_bytes(f.size):>10} -> "
            f"{human_bytes(f.compressed_size):>10}  sha256 {f.sha256[:16]}"
        )
    for sig in sigs:
        name = names.get(sig["keyid"])
        lines.append(f"  signed by {sig['keyid'][:16]}" + (f" ({name})" if name else ""))
    return lines


@bundle.command("inspect")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--keys",
    "keydir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Key directory, to name the signing keys.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the manifest and signatures as JSON.")
@refusals_exit_1
def inspect_cmd(file: Path, keydir: Path | None, as_json: bool) -> None:
    """Show a bundle's manifest, models, thresholds, health policy and signatures.

    Inspecting does not verify: use `satchel bundle verify` for that.
    """
    with open(file, "rb") as f:
        manifest, sigs = read_unverified(f)
    sig_dicts = [{"keyid": s.keyid, "sig": s.to_dict()["sig"]} for s in sigs]
    if as_json:
        echo_json(
            {
                "manifest": manifest.to_dict(),
                "signatures": sig_dicts,
                "file_bytes": file.stat().st_size,
            }
        )
        return
    for line in describe(manifest, sig_dicts, key_names(keydir) if keydir else {}):
        click.echo(line)


@bundle.command("verify")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--trust",
    "trust",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="root.json: the trust root to verify against.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@refusals_exit_1
def verify_cmd(file: Path, trust: Path, as_json: bool) -> None:
    """Check a bundle as a device would: signatures, threshold, expiry, layout, every hash.

    Exit 0 if it verifies, 1 with the reason on one line if not.
    """
    root = read_root(trust)
    try:
        f = open(file, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as e:
        raise KeyDirError(f"cannot read {file}: {e.strerror}") from e
    with f:
        verified = verify_bundle(f, root, utcnow())
        check_payloads(f, verified)
    m = verified.manifest
    if as_json:
        echo_json(
            {
                "ok": True,
                "name": m.name,
                "version": m.version,
                "sequence": m.sequence,
                "signers": sorted(verified.signers),
                "trust_root_version": root.version,
                "files": len(m.files),
            }
        )
        return
    click.echo(
        f"OK: {m.name} {m.version} (sequence {m.sequence}) verified against trust root "
        f"v{root.version}: {len(verified.signers)} of {root.signing_role.threshold} "
        f"required signature(s), {len(m.files)} payload(s) match"
    )
