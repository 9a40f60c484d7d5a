"""Honest signed bundles, made by `bundles.pack.write_bundle` exactly as `satchel bundle build`
makes them, and re-signed variants whose manifest or compressed members a trusted builder
changed."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from satchel.bundles.canonical import encode_canonical
from satchel.bundles.config import PackOptions
from satchel.bundles.keys import SigningKey, sign_all
from satchel.bundles.manifest import (
    Compatibility,
    HealthPolicy,
    Manifest,
    ModelEntry,
    SmokeTest,
    TensorInfo,
    member_name,
)
from satchel.bundles.pack import Payload, write_bundle
from tests.factory.keys import Keyring
from tests.factory.tar import pack_members, read_members

CREATED = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)  # build time of test bundles

# One thread: output identical to multi-threaded packing is not needed, speed on 2 cores is.
TEST_PACK = PackOptions(zstd_level=3, zstd_threads=0)

ManifestMutation = Callable[[dict[str, Any]], "dict[str, Any] | bytes | None"]


def _pseudo_random(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


DEFAULT_PAYLOADS: dict[str, bytes] = {
    "model.onnx": _pseudo_random(3000, 1),
    "smoke/inputs.npz": b"inputs " * 40,
    "smoke/reference.npz": b"reference " * 30,
}


def default_manifest(
    name: str,
    version: str,
    sequence: int,
    paths: list[str],
    *,
    created: datetime = CREATED,
    expires: datetime | None = None,
) -> Manifest:
    """A valid manifest (files left empty for `write_bundle` to measure) for `paths`.

    The model is `model.onnx` or `model.tflite` when present, else the first path; a smoke
    test is declared when `smoke/inputs.npz` and `smoke/reference.npz` are both present.
    """
    model_file = next((p for p in paths if p in ("model.onnx", "model.tflite")), paths[0])
    runtime = "tflite" if model_file.endswith(".tflite") else "onnxruntime"
    model = ModelEntry(
        name="main",
        runtime=runtime,
        file=model_file,
        inputs=(TensorInfo("input", "FP32", (-1, 8)),),
        outputs=(TensorInfo("output", "FP32", (-1, 3)),),
        quantization="dynamic-int8",
    )
    smoke: tuple[SmokeTest, ...] = ()
    if {"smoke/inputs.npz", "smoke/reference.npz"} <= set(paths):
        smoke = (
            SmokeTest("main", "smoke/inputs.npz", "smoke/reference.npz", max_abs_error=0.1),
        )
    return Manifest(
        name=name,
        version=version,
        sequence=sequence,
        created=created,
        expires=expires,
        files=(),
        models=(model,),
        smoke_tests=smoke,
        health_policy=HealthPolicy(),
        compatibility=Compatibility(device_classes=("edge-box",)),
    )


@dataclass(frozen=True)
class BuiltBundle:
    """A bundle file written by the factory, and what went into it."""

    path: Path
    data: bytes  # the whole bundle file
    manifest: Manifest  # as `write_bundle` measured it, before any mutation
    manifest_bytes: bytes  # the manifest.json member actually in the file
    payloads: dict[str, bytes]


def chunk_hashes(compressed: bytes, chunk_size: int) -> list[str]:
    """The chunk index of a compressed member: the sha256 of each `chunk_size` bytes."""
    return [
        hashlib.sha256(compressed[i : i + chunk_size]).hexdigest()
        for i in range(0, len(compressed), chunk_size)
    ]


def sign_manifest(manifest_bytes: bytes, keys: list[SigningKey]) -> bytes:
    """The manifest.sig member for `manifest_bytes` signed by `keys`."""
    return encode_canonical([s.to_dict() for s in sign_all(manifest_bytes, keys)])


def build_test_bundle(
    path: Path,
    *,
    keys: Keyring,
    name: str = "vision",
    version: str = "1.0.0",
    sequence: int = 1,
    payloads: dict[str, bytes] | None = None,
    signers: list[SigningKey] | None = None,
    created: datetime = CREATED,
    expires: datetime | None = None,
    mutate_manifest: ManifestMutation | None = None,
    replace_compressed: dict[str, bytes] | None = None,
) -> BuiltBundle:
    """Write a signed bundle with `bundles.pack.write_bundle` and return it.

    `signers` default to the keyring's signing keys. `replace_compressed` swaps the zstd
    member of a payload path for other compressed bytes and updates that file's compressed
    size and hash in the manifest (its declared size and content hash stay honest), so a
    trusted builder can be made to ship, say, a decompression bomb. `mutate_manifest` gets
    the manifest as a dict and changes it in place or returns a new dict, or returns raw
    manifest.json bytes. Either way the result is re-signed by `signers`.
    """
    payloads = dict(DEFAULT_PAYLOADS if payloads is None else payloads)
    signers = keys.signing_keys if signers is None else signers
    manifest = default_manifest(
        name, version, sequence, list(payloads), created=created, expires=expires
    )
    with open(path, "wb") as f:
        final = write_bundle(
            f, manifest, [Payload(p, b) for p, b in payloads.items()], signers, TEST_PACK
        )
    data = path.read_bytes()
    manifest_bytes = final.to_bytes()
    if mutate_manifest is not None or replace_compressed:
        data, manifest_bytes = _resign(
            data, final, signers, mutate_manifest, replace_compressed or {}
        )
        path.write_bytes(data)
    return BuiltBundle(path, data, final, manifest_bytes, payloads)


def _resign(
    data: bytes,
    manifest: Manifest,
    signers: list[SigningKey],
    mutate: ManifestMutation | None,
    replacements: dict[str, bytes],
) -> tuple[bytes, bytes]:
    members = read_members(data)
    doc = manifest.to_dict()
    for entry in doc["files"]:
        compressed = replacements.get(entry["path"])
        if compressed is None:
            continue
        entry["compressed_size"] = len(compressed)
        entry["compressed_sha256"] = hashlib.sha256(compressed).hexdigest()
        if "chunk_size" in entry:
            entry["chunk_sha256"] = chunk_hashes(compressed, entry["chunk_size"])
        index = next(i for i, m in enumerate(members) if m.name == member_name(entry["path"]))
        members[index] = replace(members[index], data=compressed)
    result = mutate(doc) if mutate is not None else None
    if isinstance(result, bytes):
        manifest_bytes = result
    else:
        manifest_bytes = encode_canonical(doc if result is None else result)
    members[0] = replace(members[0], data=manifest_bytes)
    members[1] = replace(members[1], data=sign_manifest(manifest_bytes, signers))
    return pack_members(members), manifest_bytes
