"""`satchel bundle inspect | verify`: show a bundle; check it as a device would."""

from __future__ import annotations

import re
import shutil
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from satchel.bundles.keys import PublicKey
from satchel.manager.keydir import init_keydir

if TYPE_CHECKING:
    from tests.cli.invoke import Cli
    from tests.cli.model_files import Models


def _signing_keyid(keydir: Path) -> str:
    return PublicKey.from_pem((keydir / "signing.pub").read_bytes()).keyid


def _copy(bundle: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy.satchel"
    shutil.copy(bundle, copy)
    return copy


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _member_offset(bundle: Path, name: str) -> tuple[int, int]:
    """(offset of the member's data, its size), read with Python's stock tar reader."""
    with tarfile.open(bundle, "r:") as tar:
        member = tar.getmember(name)
        return member.offset_data, member.size


# --- inspect ---------------------------------------------------------------------------------


def test_inspect_shows_what_the_bundle_holds(
    cli: Cli, int8_bundle: Path, shared_keydir: Path
) -> None:
    keyid = _signing_keyid(shared_keydir)

    text = cli.run("bundle", "inspect", int8_bundle).ok().stdout

    assert text.startswith("bundle detector 1.2.3 (sequence 42)\n")
    assert "expires never" in text
    assert "devices: classes cam-v2" in text
    assert "model model: model.onnx on onnxruntime, quantization dynamic-int8" in text
    assert "input  input FP32 [-1, 64]" in text
    assert "output logits FP32 [-1, 10]" in text
    assert "output logits: kind=classes, max_rel_error=0.15, min_sqnr_db=10.0" in text
    assert "min_top1_agreement=0.9" in text
    assert "measured at build on 1 sample feed:" in text
    assert "logits (classes): max abs error" in text and "SQNR dB" in text
    assert "p95_latency_budget_ms=50.0" in text and "max_memory_mb=64.0" in text
    assert "health policy: probation_s=600.0, min_samples=20, max_error_rate=0.05" in text
    for path in ("model.onnx", "smoke/inputs.npz", "smoke/reference.npz"):
        assert f"    {path}" in text
    assert f"signed by {keyid[:16]}\n" in text
    named = cli.run("bundle", "inspect", int8_bundle, "--keys", shared_keydir).ok().stdout
    assert f"signed by {keyid[:16]} (signing)" in named


def test_inspect_json_holds_manifest_and_signatures(
    cli: Cli, int8_bundle: Path, shared_keydir: Path
) -> None:
    doc = cli.run("bundle", "inspect", int8_bundle, "--json").json()

    manifest = doc["manifest"]
    assert (manifest["name"], manifest["version"], manifest["sequence"]) == (
        "detector", "1.2.3", 42
    )
    assert [f["path"] for f in manifest["files"]] == [
        "model.onnx", "smoke/inputs.npz", "smoke/reference.npz"
    ]
    assert manifest["models"][0]["runtime"] == "onnxruntime"
    assert [s["keyid"] for s in doc["signatures"]] == [_signing_keyid(shared_keydir)]
    assert all(len(s["sig"]) == 88 for s in doc["signatures"])  # base64 of 64 bytes
    assert doc["file_bytes"] == int8_bundle.stat().st_size


def test_inspect_of_a_file_that_is_not_a_bundle_is_refused(
    cli: Cli, models: Models
) -> None:
    line = cli.spawn("bundle", "inspect", models.float_onnx).refusal()

    assert line.startswith("error: bundle ")


def test_inspect_does_not_vouch_for_a_tampered_manifest_signature(
    cli: Cli, int8_bundle: Path, shared_keydir: Path, tmp_path: Path
) -> None:
    bundle = _copy(int8_bundle, tmp_path)
    offset, size = _member_offset(bundle, "manifest.json")
    # A letter inside the channel name: the manifest stays valid JSON (a byte at a fixed
    # position could land on a quote or a colon, as the build time shifts the text).
    manifest = bundle.read_bytes()[offset : offset + size]
    _flip_byte(bundle, offset + manifest.index(b'"name":"detector"') + len(b'"name":"d'))

    # Inspecting reads without trust; verifying is what refuses.
    cli.run("bundle", "inspect", bundle).ok()
    line = cli.run("bundle", "verify", bundle, "--trust", shared_keydir / "root.json").refusal()
    assert "signature by key" in line and "does not match (altered or corrupted)" in line


# --- verify ----------------------------------------------------------------------------------


def test_verify_accepts_a_good_bundle(cli: Cli, int8_bundle: Path, shared_keydir: Path) -> None:
    out = cli.spawn("bundle", "verify", int8_bundle, "--trust", shared_keydir / "root.json").ok()

    assert out.stdout.startswith("OK: detector 1.2.3 (sequence 42) verified against trust root v1")
    assert "1 of 1 required signature(s), 3 payload(s) match" in out.stdout
    assert out.stderr == ""


def test_verify_json(cli: Cli, int8_bundle: Path, shared_keydir: Path) -> None:
    doc = cli.run("bundle", "verify", int8_bundle, "--trust", shared_keydir / "root.json",
                  "--json").json()

    assert doc == {
        "ok": True, "name": "detector", "version": "1.2.3", "sequence": 42,
        "signers": [_signing_keyid(shared_keydir)], "trust_root_version": 1, "files": 3,
    }


def test_bundle_from_another_key_dir_is_refused(
    cli: Cli, int8_bundle: Path, tmp_path: Path
) -> None:
    stranger = tmp_path / "other-keys"
    init_keydir(stranger)

    line = cli.spawn("bundle", "verify", int8_bundle, "--trust", stranger / "root.json").refusal()

    assert "signed only by keys the trust root does not list" in line


def test_tampered_payload_is_refused(
    cli: Cli, int8_bundle: Path, shared_keydir: Path, tmp_path: Path
) -> None:
    bundle = _copy(int8_bundle, tmp_path)
    offset, size = _member_offset(bundle, "payload/model.onnx.zst")
    _flip_byte(bundle, offset + size // 2)

    line = cli.spawn("bundle", "verify", bundle, "--trust", shared_keydir / "root.json").refusal()

    assert re.search(r"payload model\.onnx (chunk \d+ of \d+ )?does not match its signed hash",
                     line), line


@pytest.mark.parametrize("keep", [0, 700, 0.5, -1024, -1])
def test_truncated_bundle_is_refused(
    cli: Cli, int8_bundle: Path, shared_keydir: Path, tmp_path: Path, keep: float
) -> None:
    data = int8_bundle.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    bundle = tmp_path / "truncated.satchel"
    bundle.write_bytes(data[:cut])

    line = cli.run("bundle", "verify", bundle, "--trust", shared_keydir / "root.json").refusal()

    assert "bundle file is truncated" in line


def test_verify_with_a_trust_file_that_is_not_a_root_is_refused(
    cli: Cli, int8_bundle: Path, shared_keydir: Path
) -> None:
    line = cli.run("bundle", "verify", int8_bundle, "--trust", shared_keydir / "root.pub").refusal()

    assert "trust root" in line
