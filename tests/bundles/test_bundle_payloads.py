"""Payloads that a trusted builder signed but that lie when decompressed, and staging dirs that
must not be touched: decompression bombs, huge zstd windows, wrong sizes and hashes."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from satchel.bundles.config import Limits
from satchel.bundles.errors import PayloadHashError, PayloadSizeError, StagingError
from satchel.bundles.reader import unpack_bundle, verify_bundle
from tests.factory.bundles import BuiltBundle, build_test_bundle
from tests.factory.device import NOW, Device
from tests.factory.keys import Keyring
from tests.factory.trees import tree_snapshot
from tests.factory.zstd_frames import MiB, zstd_bomb, zstd_frame

REPO = Path(__file__).resolve().parents[2]
MODEL = bytes(range(256)) * 40  # compressible, so a zstd frame of it is small


def _bomb_bundle(tmp_path: Path, keys: Keyring, declared: int, expanded: int) -> BuiltBundle:
    """A bundle whose model is declared `declared` bytes (content and hash honest) but whose
    signed zstd member expands to `expanded` zero bytes."""
    payloads = {
        "model.onnx": bytes(declared),
        "smoke/inputs.npz": b"i",
        "smoke/reference.npz": b"r",
    }
    return build_test_bundle(
        tmp_path / "bomb.satchel",
        keys=keys,
        payloads=payloads,
        replace_compressed={"model.onnx": zstd_bomb(expanded)},
    )


@pytest.mark.parametrize("declared", [0, 1000, MiB, 2 * MiB + 5])
def test_decompression_bomb_is_refused_before_more_than_its_declared_size_is_written(
    tmp_path: Path, keys: Keyring, device: Device, declared: int
) -> None:
    bomb = _bomb_bundle(tmp_path, keys, declared, 64 * MiB)
    limits = Limits()
    written: list[int] = []
    f = io.BytesIO(bomb.data)
    verified = verify_bundle(f, keys.root, NOW)  # the signature is honest: only size lies
    with pytest.raises(PayloadSizeError) as info:
        unpack_bundle(f, verified, device.staging, fsync=False, progress=written.append)
    assert type(info.value) is PayloadSizeError
    assert "more than its declared" in str(info.value)
    assert sum(written) <= declared < sum(written) + limits.chunk_bytes
    assert list(device.staging.iterdir()) == []
    device.refuses(bomb.data, PayloadSizeError)


def test_decompression_bomb_is_refused_with_bounded_memory(tmp_path: Path, keys: Keyring) -> None:
    bomb = _bomb_bundle(tmp_path, keys, 4096, 1024 * MiB)
    assert len(bomb.data) < 64 * 1024
    staging = tmp_path / "staging"
    staging.mkdir()
    script = """
import json, resource, sys
from datetime import datetime
from pathlib import Path
from satchel.bundles.errors import PayloadSizeError
from satchel.bundles.reader import unpack_bundle, verify_bundle
from satchel.bundles.trust import load_root

root = load_root(Path(sys.argv[1]).read_bytes())
written = []
with open(sys.argv[2], "rb") as f:
    verified = verify_bundle(f, root, datetime.fromisoformat(sys.argv[4]))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        unpack_bundle(f, verified, Path(sys.argv[3]), fsync=False, progress=written.append)
        outcome = "accepted"
    except PayloadSizeError as e:
        outcome = type(e).__name__
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"outcome": outcome, "written": sum(written), "growth_kib": after - before}))
"""
    args = [keys.directory / "root.json", bomb.path, staging, NOW.isoformat()]
    proc = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=True,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["outcome"] == "PayloadSizeError"
    assert result["written"] <= 4096
    assert result["growth_kib"] < 64 * 1024, result  # 1 GiB of zeros never held in memory
    assert list(staging.iterdir()) == []


def test_payload_declared_larger_than_its_content_is_refused(
    tmp_path: Path, keys: Keyring, device: Device
) -> None:
    def grow(doc: dict) -> None:
        doc["files"][0]["size"] += 1

    lying = build_test_bundle(tmp_path / "b.satchel", keys=keys, mutate_manifest=grow)
    err = device.refuses(lying.data, PayloadSizeError)
    assert "declared" in str(err)


def test_payload_content_hash_mismatch_is_refused_and_earlier_files_removed(
    tmp_path: Path, keys: Keyring, device: Device
) -> None:
    def wrong_last_hash(doc: dict) -> None:
        doc["files"][-1]["sha256"] = "0" * 64  # earlier files unpack before this one fails

    lying = build_test_bundle(tmp_path / "b.satchel", keys=keys, mutate_manifest=wrong_last_hash)
    err = device.refuses(lying.data, PayloadHashError)
    assert "smoke/reference.npz" in str(err)


def test_signed_member_that_is_not_zstd_is_refused(
    tmp_path: Path, keys: Keyring, device: Device
) -> None:
    garbage = build_test_bundle(
        tmp_path / "b.satchel", keys=keys, replace_compressed={"smoke/inputs.npz": b"not zstd"}
    )
    device.refuses(garbage.data, PayloadHashError)


def test_signed_zstd_frame_cut_short_is_refused(
    tmp_path: Path, keys: Keyring, device: Device
) -> None:
    frame = zstd_frame(MODEL)
    cut = build_test_bundle(
        tmp_path / "b.satchel",
        keys=keys,
        payloads={"model.onnx": MODEL},
        replace_compressed={"model.onnx": frame[: len(frame) // 2]},
    )
    device.refuses(cut.data, PayloadSizeError)


def test_signed_zstd_frame_demanding_a_huge_window_is_refused(
    tmp_path: Path, keys: Keyring, device: Device
) -> None:
    # A frame may ask the decoder for up to 2 GiB (more on 64-bit) of window memory.
    greedy = build_test_bundle(
        tmp_path / "b.satchel",
        keys=keys,
        payloads={"model.onnx": MODEL},
        replace_compressed={"model.onnx": zstd_frame(MODEL, window_log=27)},
    )
    err = device.refuses(greedy.data, PayloadHashError)
    assert "memory" in str(err)


def test_unpacking_into_a_non_empty_staging_dir_is_refused_and_leaves_it_alone(
    bundle: BuiltBundle, device: Device
) -> None:
    (device.staging / "previous-release.onnx").write_bytes(b"keep me")
    (device.staging / "models").mkdir()
    before = tree_snapshot(device.tree)
    with pytest.raises(StagingError) as info:
        device.unpack(bundle.data)
    assert "not empty" in str(info.value)
    assert tree_snapshot(device.tree) == before


def test_unpacking_through_a_symlinked_staging_dir_is_refused(
    tmp_path: Path, bundle: BuiltBundle, keys: Keyring
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = tmp_path / "staging-link"
    link.symlink_to(elsewhere)
    before = tree_snapshot(tmp_path)
    f = io.BytesIO(bundle.data)
    verified = verify_bundle(f, keys.root, NOW)
    with pytest.raises(StagingError):
        unpack_bundle(f, verified, link, fsync=False)
    assert tree_snapshot(tmp_path) == before


@pytest.mark.parametrize("kind", ["missing", "a file"])
def test_unusable_staging_dir_is_refused(
    tmp_path: Path, bundle: BuiltBundle, keys: Keyring, kind: str
) -> None:
    target = tmp_path / "staging"
    if kind == "a file":
        target.write_bytes(b"")
    f = io.BytesIO(bundle.data)
    verified = verify_bundle(f, keys.root, NOW)
    with pytest.raises(StagingError) as info:
        unpack_bundle(f, verified, target, fsync=False)
    assert "\n" not in str(info.value)
    assert target.exists() == (kind == "a file")
