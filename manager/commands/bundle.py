"""`satchel bundle build|inspect|verify|add|list|remove`: make and check signed model bundles,
and store them in the manager.

`add`, `list` and `remove` work on the manager's fleet (its database, or its API with
`--url`), which they import when they run: the other commands work on the bundle core alone."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from satchel.bundles.manifest import HealthPolicy
from satchel.bundles.timeutil import utcnow
from satchel.manager.commands.common import (
    echo_json,
    ends_fast,
    human_bytes,
    load_keys,
    passphrase_file_option,
    passphrase_from,
    refusals_exit_1,
)
from satchel.manager.commands.context import fleet_of
from satchel.manager.commands.reports import describe, output_line
from satchel.manager.errors import KeyDirError
from satchel.manager.keydir import key_names, read_root


@click.group()
def bundle() -> None:
    """Build, inspect and verify signed model bundles."""


def _progress_bar(total: int, label: str) -> Any:
    """A progress bar on stderr when it is a terminal, else None."""
    if not sys.stderr.isatty():  # tqdm would draw nothing (disable=None): spare its import
        return None
    from tqdm import tqdm  # a quarter second to import: only when a bar is drawn

    return tqdm(total=total, unit="B", unit_scale=True, desc=label, disable=None, leave=False)


@bundle.command("build")
@click.option("--name", required=True, help="Model channel, e.g. person-detector.")
@click.option("--version", "version", required=True, help="Release version string.")
@click.option(
    "--model",
    "model_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    callback=lambda ctx, param, value: _model_or_variants(ctx, param, value),
    help="Model to ship (.onnx or .tflite), usually INT8. Required without --variant.",
)
@click.option(
    "--variant",
    "variant_specs",
    multiple=True,
    metavar="NAME:MODEL[:REFERENCE]",
    help="A variant of the release (repeat): the device picks one by its state and by each "
    "request (docs/VARIANTS.md). Each is smoke-tested on its own; REFERENCE defaults to "
    "--reference.",
)
@click.option("--default-variant", help="The variant served by default [default: the first].")
@click.option(
    "--variant-budget-ms",
    "variant_budgets",
    multiple=True,
    metavar="NAME=MS",
    help="A variant's own p95 latency budget on the device [default: --latency-budget-ms].",
)
@click.option(
    "--variant-policy",
    metavar="JSON|FILE",
    help='Selection policy, e.g. \'{"rules": [{"when": {"battery_below": 30}, "use": "lite", '
    '"leave": {"battery_above": 80}}], "dwell_s": 30}\' [default: the last variant below 30% '
    "battery, back above 80%].",
)
@click.option(
    "--variant-accuracy",
    "variant_accuracy",
    multiple=True,
    metavar="NAME=LEVEL",
    help="A variant's accuracy rank for requests' accuracy_level [default: the first variant "
    "highest, in order].",
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
@click.option("--shadow-requests", type=click.IntRange(0), default=0, show_default=True,
              help="Field requests the new release answers in shadow (compared with the "
              "active release, never seen by clients) before it serves; 0: no shadow stage.")
@click.option("--shadow-fraction", type=click.FloatRange(0, 1, min_open=True), default=0.1,
              show_default=True, help="Share of field requests copied to the shadow release.")
@click.option("--shadow-agreement", type=click.FloatRange(0, 1), default=0.99,
              show_default=True,
              help="Share of shadow requests whose outputs must pass the smoke-test comparison.")
@click.option("--shadow-max-s", "shadow_max_seconds", type=click.FloatRange(0, min_open=True),
              help="Judge the shadow stage after this long even if fewer requests came.")
@click.option("--ramp", "ramp", metavar="P1,P2,...",
              help="Traffic ramp after the shadow stage: percent steps ending at 100, e.g. "
              "10,50,100.")
@click.option("--ramp-step-requests", type=click.IntRange(1), default=100, show_default=True,
              help="Answers by the new release judged at each ramp step.")
@click.option("--ramp-step-s", "ramp_step_seconds", type=click.FloatRange(0, min_open=True),
              help="A ramp step also ends after this long.")
@click.option("--capture", metavar="REASON[,REASON]",
              help="Keep field inputs for retraining: disagreement, nonfinite, "
              "low-margin:MARGIN (off by default; the device may forbid it).")
@click.option("--capture-max", type=click.IntRange(1), default=100, show_default=True,
              help="Field inputs a device keeps at most.")
@click.option("--capture-max-mb", type=click.FloatRange(0, min_open=True), default=16.0,
              show_default=True, help="Megabytes of field inputs a device keeps at most.")
@click.option("--encrypt-to", "encrypt_to", multiple=True, metavar="[NAME=]PUBKEY|device:ID",
              help="Encrypt every payload, the data key wrapped for this recipient: a public "
              "key (PEM) of a device (its device.pub), a device class, a fleet or the manager "
              "(`satchel keys recipient init`), or device:ID, a device the manager knows. "
              "Repeatable. docs/ENCRYPTION.md.")
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
@click.option("--delta-from", "delta_from", type=click.Path(dir_okay=False, exists=True,
              path_type=Path), help="The channel's earlier release (OLD.satchel): also write "
              "OUTPUT's delta, NAME.delta.satchel, its files as patches against OLD's "
              "(docs/DELTAS.md).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@refusals_exit_1
@ends_fast
def build_cmd(**opts: Any) -> None:
    """Build a signed bundle with the model, its smoke test and its health policy.

    Runs the reference (float) model and the shipped model on the samples, stores inputs,
    reference outputs and thresholds as the smoke test, and refuses to build when the
    shipped model disagrees with its reference beyond the thresholds.
    """
    # Imported here: numpy, onnx and the runtimes load only when a bundle is built.
    from satchel.manager.build import BuildDefaults, BuildRequest, build_bundle

    activation = _activation_policy(opts)
    if opts["delta_from"] is not None:  # refused before the build, not after it
        from satchel.bundles.delta import check_base_bundle

        check_base_bundle(opts["delta_from"], opts["name"])
    encryption = _encryption(opts["encrypt_to"])
    variant_specs = _variant_specs(opts)  # [] without --variant
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
        activation=activation,
        encryption=encryption,
    )
    builder: Any = build_bundle
    if variant_specs:
        from satchel.manager.build_variants import build_variant_bundle

        builder = _variant_builder(build_variant_bundle, variant_specs, opts)
    size = opts["model_path"].stat().st_size
    bar = _progress_bar(size, "packing") if size >= BuildDefaults().progress_min_bytes else None
    try:
        result = builder(req, keys, opts["output"], progress=bar.update if bar else None)
    finally:
        if bar is not None:
            bar.close()
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    delta = _delta(opts, result.output, keys, encryption)  # None without --delta-from
    if opts["as_json"]:
        echo_json({**result.to_dict(), **({"delta": delta} if delta else {})})
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
    for name, v in (m.build.get("variants") or {}).items():
        click.echo(f"  variant {name}: {v['quantization']}, host p95 {v['host_p95_ms']:.3f} ms")
    if m.encryption is not None:
        names = ", ".join(n for n, _ in m.encryption.recipients)
        click.echo(f"  encrypted (AES-256-GCM) for {len(m.encryption.recipients)} "
                   f"recipient(s): {names}")
    click.echo(f"  signed by {len(keys)} key(s); sha256 {result.bundle_sha256}")
    if delta:
        click.echo(f"built delta {delta['output']} ({human_bytes(delta['bundle_bytes'])}, "
                   f"{delta['share']:.1%} of the full bundle): {len(delta['patched'])} "
                   f"patch(es) against {delta['base']['version']} (sequence "
                   f"{delta['base']['sequence']}), {len(delta['whole'])} file(s) whole")


def _delta(opts: dict[str, Any], full: Path, keys: Any, encryption: Any) -> dict[str, Any] | None:
    """With --delta-from, write the delta of the bundle just built beside it and describe it.
    Raises DeltaBaseError and the bundle errors of the base."""
    if opts["delta_from"] is None:
        return None
    from satchel.bundles.delta import delta_path_for, make_delta_bundle

    d = make_delta_bundle(full, opts["delta_from"], delta_path_for(full), keys,
                          encryption=encryption)
    base = d.manifest.delta_base
    return {"output": str(delta_path_for(full)), "bundle_bytes": d.bytes,
            "share": d.bytes / full.stat().st_size, "patched": list(d.patched),
            "whole": list(d.whole), "base": base.to_dict() if base else None}


def _encryption(specs: tuple[str, ...]) -> Any:
    """The --encrypt-to recipients as a bundles.crypt.BundleEncryption (None without).
    Raises KeyFileError, UsageError."""
    if not specs:
        return None
    from satchel.bundles.crypt import BundleEncryption
    from satchel.manager.commands.bundle_crypt import resolve_recipients
    from satchel.manager.errors import UsageError

    try:
        return BundleEncryption(tuple(resolve_recipients(specs)))
    except ValueError as e:
        raise UsageError(f"--encrypt-to: {e}") from e


def _model_or_variants(ctx: click.Context, param: click.Parameter, value: Path | None) -> Any:
    """--model is required unless --variant gives the models (a missing option is processed
    after every given one, so --variant is known here). Raises click.MissingParameter."""
    if value is None and not ctx.params.get("variant_specs"):
        raise click.MissingParameter(ctx=ctx, param=param)
    return value


def _variant_specs(opts: dict[str, Any]) -> list[Any]:
    """The --variant options (the first one's model stands in for --model). Raises
    click.UsageError."""
    if not opts["variant_specs"]:
        if opts["model_path"] is None:
            raise click.UsageError("Missing option '--model' (or give --variant NAME:MODEL).")
        return []
    if opts["model_path"] is not None:
        raise click.UsageError("give the models as --variant NAME:MODEL, not --model as well")
    from dataclasses import replace

    from satchel.manager.build_variants import parse_variant

    specs = [parse_variant(v) for v in opts["variant_specs"]]
    budgets: dict[str, float] = {}
    for item in opts["variant_budgets"]:
        name, _, ms = item.partition("=")
        try:
            budgets[name.strip()] = float(ms)
        except ValueError:
            raise click.UsageError(f"--variant-budget-ms {item!r}: expected NAME=MS") from None
        if not budgets[name.strip()] > 0:
            raise click.UsageError(f"--variant-budget-ms {item!r}: the budget must be > 0")
    unknown = sorted(set(budgets) - {s.name for s in specs})
    if unknown:
        raise click.UsageError(f"--variant-budget-ms names {unknown[0]!r}, which is not a "
                               "--variant")
    specs = [replace(s, latency_budget_ms=budgets.get(s.name)) for s in specs]
    opts["model_path"] = specs[0].model
    return specs


def _variant_builder(build: Any, specs: list[Any], opts: dict[str, Any]) -> Any:
    """`build_bundle`'s signature over `build_variant_bundle` with the variant options."""
    from pathlib import Path as _Path

    from satchel.bundles.variants import parse_policy

    text = opts["variant_policy"]
    if text is not None and not text.lstrip().startswith("{"):
        try:
            text = _Path(text).read_text()
        except OSError as e:
            raise click.UsageError(f"--variant-policy {text}: {e.strerror}") from None
    accuracy: dict[str, int] = {}
    for item in opts["variant_accuracy"]:
        name, _, level = item.partition("=")
        if not level.strip().isdigit():
            raise click.UsageError(f"--variant-accuracy {item!r}: expected NAME=LEVEL (an integer)")
        accuracy[name.strip()] = int(level)
    policy = parse_policy(text, "--variant-policy") if text is not None else None

    def run(req: Any, keys: Any, out: Any, progress: Any = None) -> Any:
        return build(req, specs, keys, out, default=opts["default_variant"], policy=policy,
                     accuracy=accuracy, progress=progress)

    return run


def _activation_policy(opts: dict[str, Any]) -> Any:
    """The shadow, ramp and capture flags as the manifest's activation policy (None: none
    asked). Raises click.UsageError."""
    from satchel.bundles.activation import build_policy

    try:
        return build_policy(
            shadow_requests=opts["shadow_requests"], shadow_fraction=opts["shadow_fraction"],
            shadow_agreement=opts["shadow_agreement"],
            shadow_max_seconds=opts["shadow_max_seconds"], ramp=opts["ramp"],
            ramp_step_requests=opts["ramp_step_requests"],
            ramp_step_seconds=opts["ramp_step_seconds"], capture=opts["capture"],
            capture_max=opts["capture_max"], capture_max_mb=opts["capture_max_mb"],
        )
    except ValueError as e:
        raise click.UsageError(str(e)) from None


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
    from satchel.bundles.reader import read_unverified

    with open(file, "rb") as f:
        manifest, sigs = read_unverified(f)
        encryption = _encryption_of(f, manifest)
    sig_dicts = [{"keyid": s.keyid, "sig": s.to_dict()["sig"]} for s in sigs]
    if as_json:
        echo_json(
            {
                "manifest": manifest.to_dict(),
                "signatures": sig_dicts,
                "file_bytes": file.stat().st_size,
                **({"encryption": encryption} if encryption is not None else {}),
            }
        )
        return
    for line in describe(manifest, sig_dicts, key_names(keydir) if keydir else {}):
        click.echo(line)
    if encryption is not None:
        click.echo(f"encrypted: {encryption['scheme']} (payload members are ciphertext; "
                   "signature and hashes check without a key)")
        built = ", ".join(f"{r['name']} {r['fingerprint'][:16]}" for r in encryption["built_for"])
        click.echo(f"  built for: {built}")
        now = encryption["recipients"] or []
        click.echo("  recipients (keys.json): "
                   + ", ".join(f"{r['name']} {r['fingerprint'][:16]}" for r in now))


def _encryption_of(f: Any, manifest: Any) -> dict[str, Any] | None:
    """What inspect shows of an encrypted bundle (keys.json read after manifest.sig)."""
    if manifest.encryption is None:
        return None
    from satchel.bundles.cryptbundle import describe_encryption
    from satchel.bundles.errors import BundleError
    from satchel.bundles.reader import read_keys

    try:
        keys = read_keys(f)
    except BundleError:
        keys = None  # shown as unreadable: inspecting does not verify
    return describe_encryption(manifest, keys)


@bundle.command("verify")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--trust",
    "trust",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="root.json: the trust root to verify against.",
)
@click.option("--identity", "identities", multiple=True,
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="An X25519 private key (PEM) that unlocks an encrypted bundle, to check its "
              "decrypted content too. Without one, an encrypted bundle's signature and "
              "ciphertext are checked.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@refusals_exit_1
def verify_cmd(file: Path, trust: Path, identities: tuple[Path, ...], as_json: bool) -> None:
    """Check a bundle as a device would: signatures, threshold, expiry, layout, every hash.

    Exit 0 if it verifies, 1 with the reason on one line if not.
    """
    from satchel.bundles.reader import check_payloads, verify_bundle

    root = read_root(trust)
    try:
        f = open(file, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as e:
        raise KeyDirError(f"cannot read {file}: {e.strerror}") from e
    with f:
        verified = verify_bundle(f, root, utcnow())
        content_checked = verified.manifest.encryption is None or bool(identities)
        if verified.manifest.encryption is not None and identities:
            from satchel.bundles.crypt import unlock_bundle
            from satchel.bundles.recipients import load_identity

            verified = unlock_bundle(verified, [load_identity(p) for p in identities],
                                     "the given key")
        if content_checked:
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
                # encrypted bundles only: whether the plaintext was checked (--identity)
                **({"encrypted": True, "content_checked": content_checked}
                   if m.encryption is not None else {}),
            }
        )
        return
    what = "payload(s) match"
    if not content_checked:
        what = "encrypted payload(s) match as ciphertext (content not checked: no --identity)"
    click.echo(
        f"OK: {m.name} {m.version} (sequence {m.sequence}) verified against trust root "
        f"v{root.version}: {len(verified.signers)} of {root.signing_role.threshold} "
        f"required signature(s), {len(m.files)} {what}"
    )


@bundle.command("add")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the stored bundle as JSON.")
@click.pass_context
@refusals_exit_1
def bundle_add(ctx: click.Context, file: Path, as_json: bool) -> None:
    """Verify FILE against the trust root and store it; a refused bundle leaves nothing."""
    info, created = fleet_of(ctx).add_bundle(file)
    if as_json:
        echo_json({**info, "created": created})
        return
    what = "stored" if created else "already stored"
    base = info.get("delta_base")  # a delta bundle, linked to its full one (docs/DELTAS.md)
    click.echo(
        f"{what}: {info['name']} {info['version']} (sequence {info['sequence']}, "
        f"{human_bytes(info['size'])})"
        + (f", delta against {base['version']} (sequence {base['sequence']})" if base else "")
    )
    click.echo(info["sha256"])


@bundle.command("remove")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Print the removed bundle as JSON.")
@click.pass_context
@refusals_exit_1
def bundle_remove(ctx: click.Context, ref: str, as_json: bool) -> None:
    """Forget bundle REF (NAME:VERSION or sha256) and delete its file from the store;
    refused while a deployment refers to it."""
    removed = fleet_of(ctx).remove_bundle(ref)
    if as_json:
        echo_json(removed)
        return
    click.echo(f"removed: {removed['name']} {removed['version']} ({removed['sha256'][:16]})")


@bundle.command("list")
@click.option("--name", default=None, help="Only this channel.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
@refusals_exit_1
def bundle_list(ctx: click.Context, name: str | None, as_json: bool) -> None:
    """List the bundles in the manager's store."""
    found = fleet_of(ctx).list_bundles(name)
    if as_json:
        echo_json({"bundles": found})
        return
    if not found:
        click.echo("no bundles")
        return
    click.echo(f"{'CHANNEL':<20} {'VERSION':<16} {'SEQUENCE':>12} {'SIZE':>10}  SHA256")
    for b in found:
        click.echo(
            f"{b['name']:<20} {b['version']:<16} {b['sequence']:>12} "
            f"{human_bytes(b['size']):>10}  {b['sha256'][:16]}"
        )


def _encryption_commands() -> None:
    """`bundle rewrap` and `bundle decrypt` (manager/commands/bundle_crypt.py, issue 19)."""
    from satchel.manager.commands.bundle_crypt import decrypt_cmd, rewrap_cmd

    bundle.add_command(rewrap_cmd)
    bundle.add_command(decrypt_cmd)


_encryption_commands()
