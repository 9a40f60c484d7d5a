"""`satchel bundle build | inspect | verify`: make and check signed model bundles."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from satchel.bundles.manifest import HealthPolicy, Manifest
from satchel.bundles.reader import check_payloads, read_unverified, verify_bundle
from satchel.bundles.timeutil import format_time, utcnow
from satchel.manager.commands.common import (
    echo_json,
    human_bytes,
    load_keys,
    passphrase_file_option,
    passphrase_from,
    refusals_exit_1,
)
from satchel.manager.errors import KeyDirError
from satchel.manager.keydir import key_names, read_root


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
    help="INPUTS.npz: one array per model input, keyed by input name. An array of the "
    "input's declared shape is one feed (scalars and state tensors too; one feed is reused "
    "for every feed of the other inputs); an array with one more leading axis holds several "
    "feeds, e.g. [32, 1, 3, 224, 224] for an input declared [1, 3, 224, 224]. "
    "Default: 32 generated feeds.",
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
@click.option(
    "--max-abs-error", type=click.FloatRange(min=0), help="Largest |out - ref|, every output."
)
@click.option(
    "--max-rel-error",
    type=click.FloatRange(min=0),
    help="Largest |out - ref| over the reference's range, every output "
    "[default 0.05 for one-value outputs, 0.15 others; 0.01/0.02 without --reference].",
)
@click.option(
    "--min-sqnr-db",
    type=float,
    help="Signal-to-noise floor in dB, every output but one-value ones "
    "[default 15, 10 for class scores; 30 without --reference].",
)
@click.option(
    "--min-cosine",
    type=click.FloatRange(-1, 1),
    help="Cosine similarity floor on vector outputs [default 0.98 on embeddings only].",
)
@click.option(
    "--min-top1",
    type=click.FloatRange(0, 1),
    help="Top-1 agreement floor on class-score outputs [default 0.90; 0.99 without --reference].",
)
@click.option(
    "--check",
    "output_checks",
    multiple=True,
    metavar="NAME:KEY=VALUE[,KEY=VALUE]",
    help="Per-output kind and thresholds, e.g. 'speech_prob:kind=score,max_abs_error=0.02'. "
    "Kinds: score, classes, labels, embedding, tensor. Keys: kind, max_abs_error, "
    "max_rel_error, min_sqnr_db, min_cosine, min_top1_agreement.",
)
@click.option("--signature", help="TFLite signature to run, for models with several.")
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
    from satchel.manager.build import BuildDefaults, BuildRequest, build_bundle

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
        min_sqnr_db=opts["min_sqnr_db"],
        max_rel_error=opts["max_rel_error"],
        output_checks=parse_output_checks(opts["output_checks"]),
        signature=opts["signature"],
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
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if opts["as_json"]:
        echo_json(result.to_dict())
        return
    a, m = result.agreement, result.manifest
    click.echo(f"built {result.output} ({human_bytes(result.bundle_bytes)})")
    click.echo(
        f"  {m.name} {m.version} sequence {m.sequence}, {m.models[0].runtime}, "
        f"quantization {m.models[0].quantization}, model {human_bytes(result.model_bytes)}"
    )
    against = "reference" if opts["reference"] else "itself (no --reference)"
    feeds = f"{a.samples} sample feed{'' if a.samples == 1 else 's'}"
    click.echo(f"  vs {against} on {feeds}: {a.headline()}")
    for o in a.outputs:
        click.echo(f"    {output_line(o)}")
    click.echo(f"  host latency p50 {result.host_p50_ms:.3f} ms, p95 {result.host_p95_ms:.3f} ms")
    click.echo(f"  signed by {len(keys)} key(s); sha256 {result.bundle_sha256}")


def parse_output_checks(values: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """`NAME:KEY=VALUE[,KEY=VALUE]` options as {name: {key: value}}. Raises click.BadParameter."""
    checks: dict[str, dict[str, Any]] = {}
    for value in values:
        name, sep, rest = value.rpartition(":")
        if not sep or not name or not rest:
            raise click.BadParameter(f"{value!r}: expected NAME:KEY=VALUE[,KEY=VALUE]",
                                     param_hint="--check")
        entry = checks.setdefault(name, {})
        for pair in rest.split(","):
            key, eq, raw = pair.partition("=")
            key = key.strip()
            if not eq:
                raise click.BadParameter(f"{pair!r}: expected KEY=VALUE", param_hint="--check")
            if key == "kind":
                entry[key] = raw.strip()
                continue
            try:
                entry[key] = float(raw)
            except ValueError:
                raise click.BadParameter(
                    f"{key}={raw!r}: not a number", param_hint="--check"
                ) from None
    return checks


def _measured_line(o: dict[str, Any]) -> str:
    figures = [
        f"{label} {o[key]:.4g}" for key, label in (
            ("max_abs_error", "max abs error"), ("rel_error", "rel error"), ("sqnr_db", "SQNR dB"),
            ("min_cosine", "min cosine"), ("top1_agreement", "top-1"),
        ) if isinstance(o.get(key), int | float)
    ]
    return f"{o.get('name')} ({o.get('kind')}): " + ", ".join(figures)


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
            lines.append(f"    data   {data}")
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
    measured = m.build.get("agreement") if isinstance(m.build, dict) else None
    if isinstance(measured, dict) and isinstance(measured.get("outputs"), list):
        n = measured.get("samples")
        lines.append(f"  measured at build on {n} sample feed{'' if n == 1 else 's'}:")
        for o in measured["outputs"]:
            lines.append(f"    {_measured_line(o)}")
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
