"""Delta bundles (bundles/delta.py): a fine-tuned model ships as a patch against the release
before it, is rebuilt exactly (by Satchel and by the stock `zstd -d --patch-from`), and is
refused against any other base."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from satchel.bundles.delta import (
    check_base_file,
    delta_path_for,
    make_delta_bundle,
    with_bases,
)
from satchel.bundles.delta_manifest import METHOD_ZSTD_PATCH
from satchel.bundles.errors import (
    DeltaBaseError,
    PayloadHashError,
    UnexpectedFieldError,
    WrongTypeError,
)
from satchel.bundles.manifest import Manifest, member_name
from satchel.bundles.reader import check_payloads, unpack_bundle, verify_bundle
from satchel.bundles.timeutil import utcnow
from tests.factory.bundles import build_test_bundle
from tests.factory.delta import ModelPair, model_pairs
from tests.factory.keys import Keyring

SMOKE = {"smoke/inputs.npz": b"inputs " * 40, "smoke/reference.npz": b"reference " * 30}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelPair]:
    return model_pairs(tmp_path_factory.mktemp("delta-models"))


def _releases(tmp: Path, keys: Keyring, pair: ModelPair,
              extra: dict[str, bytes] | None = None) -> tuple[Path, Path]:
    """The old release (sequence 5) and the new full one (sequence 6) of channel kws."""
    old = build_test_bundle(tmp / "kws-2.0.0.satchel", keys=keys, name="kws", version="2.0.0",
                            sequence=5, payloads={"model.onnx": pair.old.read_bytes(), **SMOKE})
    new = build_test_bundle(
        tmp / "kws-2.1.0.satchel", keys=keys, name="kws", version="2.1.0", sequence=6,
        payloads={"model.onnx": pair.new.read_bytes(), **SMOKE, **(extra or {})},
    )
    return old.path, new.path


def _unpacked(bundle: Path, keys: Keyring, target: Path,
              bases: dict[str, Path] | None = None) -> Manifest:
    target.mkdir()
    with open(bundle, "rb") as f:
        verified = verify_bundle(f, keys.root, utcnow(), defer_payloads=True)
        if bases is not None:
            verified = with_bases(verified, bases)
        unpack_bundle(f, verified, target, fsync=False)
    return verified.manifest


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("kind", ["float32", "int8"])
def test_delta_rebuilds_the_fine_tuned_model_from_the_old_release(
    tmp_path: Path, keys: Keyring, pairs: dict[str, ModelPair], kind: str
) -> None:
    pair = pairs[kind]
    old, new = _releases(tmp_path, keys, pair, extra={"labels.txt": b"yes\nno\n"})
    delta = delta_path_for(new)
    summary = make_delta_bundle(new, old, delta, [keys.signing])
    assert delta.name == "kws-2.1.0.delta.satchel"
    assert set(summary.patched) == {"model.onnx", *SMOKE}
    assert summary.whole == ("labels.txt",)  # not in the old release: shipped whole
    assert summary.bytes < new.stat().st_size / 2
    m = summary.manifest
    assert m.delta_base is not None
    assert (m.delta_base.channel, m.delta_base.version, m.delta_base.sequence) == (
        "kws", "2.0.0", 5)
    entry = m.file("model.onnx")
    assert entry.delta is not None
    assert entry.delta.method == METHOD_ZSTD_PATCH
    assert entry.delta.base_sha256 == _sha(pair.old)
    assert (entry.size, entry.sha256) == (pair.new.stat().st_size, _sha(pair.new))

    base = tmp_path / "base"
    _unpacked(old, keys, base)
    out = tmp_path / "out"
    _unpacked(delta, keys, out, {p: base / p for p in summary.patched})
    assert (out / "model.onnx").read_bytes() == pair.new.read_bytes()
    assert (out / "labels.txt").read_bytes() == b"yes\nno\n"


@pytest.mark.skipif(shutil.which("zstd") is None or shutil.which("tar") is None,
                    reason="needs the stock zstd and tar")
def test_stock_zstd_patch_from_reproduces_the_signed_content(
    tmp_path: Path, keys: Keyring, pairs: dict[str, ModelPair]
) -> None:
    pair = pairs["float32"]
    old, new = _releases(tmp_path, keys, pair)
    delta = tmp_path / "d.satchel"
    summary = make_delta_bundle(new, old, delta, [keys.signing])
    work = tmp_path / "x"
    work.mkdir()
    subprocess.run(["tar", "-xf", str(delta)], cwd=work, check=True)
    out = tmp_path / "model.onnx"
    subprocess.run(["zstd", "-q", "-d", f"--patch-from={pair.old}",
                    str(work / member_name("model.onnx")), "-o", str(out)], check=True)
    entry = summary.manifest.file("model.onnx")
    sha = subprocess.run(["sha256sum", str(out)], capture_output=True, text=True, check=True)
    assert sha.stdout.split()[0] == entry.sha256


def test_patch_against_the_wrong_base_is_refused_and_staging_emptied(
    tmp_path: Path, keys: Keyring, pairs: dict[str, ModelPair]
) -> None:
    pair = pairs["float32"]
    old, new = _releases(tmp_path, keys, pair)
    delta = tmp_path / "d.satchel"
    summary = make_delta_bundle(new, old, delta, [keys.signing])
    entry = summary.manifest.file("model.onnx")
    with pytest.raises(DeltaBaseError, match="differs from the one the patch was made against"):
        check_base_file(entry, pairs["int8"].old)
    out = tmp_path / "out"
    wrong = {p: pairs["int8"].old for p in summary.patched}  # checked by nobody before: the
    with pytest.raises(PayloadHashError):  # rebuilt content fails its signed hash
        _unpacked(delta, keys, out, wrong)
    assert list(out.iterdir()) == []


def test_corrupted_base_file_is_refused(
    tmp_path: Path, keys: Keyring, pairs: dict[str, ModelPair]
) -> None:
    pair = pairs["float32"]
    old, new = _releases(tmp_path, keys, pair)
    delta = tmp_path / "d.satchel"
    summary = make_delta_bundle(new, old, delta, [keys.signing])
    base = tmp_path / "base"
    _unpacked(old, keys, base)
    data = bytearray((base / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x40  # one bit flipped on disk
    (base / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(DeltaBaseError):
        check_base_file(summary.manifest.file("model.onnx"), base / "model.onnx")
    out = tmp_path / "out"
    with pytest.raises(PayloadHashError):
        _unpacked(delta, keys, out, {p: base / p for p in summary.patched})
    assert list(out.iterdir()) == []


def test_delta_without_its_base_is_refused_but_still_verifies(
    tmp_path: Path, keys: Keyring, pairs: dict[str, ModelPair]
) -> None:
    old, new = _releases(tmp_path, keys, pairs["int8"])
    delta = tmp_path / "d.satchel"
    make_delta_bundle(new, old, delta, [keys.signing])
    with open(delta, "rb") as f:  # `satchel bundle verify`: signatures and member hashes
        verified = verify_bundle(f, keys.root, utcnow(), defer_payloads=True)
        check_payloads(f, verified)
        with pytest.raises(DeltaBaseError, match="no base"):
            with_bases(verified, {})
    out = tmp_path / "out"
    with pytest.raises(DeltaBaseError):
        _unpacked(delta, keys, out)


def test_delta_from_another_channel_or_a_newer_release_is_refused(
    tmp_path: Path, keys: Keyring, pairs: dict[str, ModelPair]
) -> None:
    old, new = _releases(tmp_path, keys, pairs["int8"])
    other = build_test_bundle(tmp_path / "o.satchel", keys=keys, name="vision", sequence=1)
    with pytest.raises(DeltaBaseError, match="channel vision, not kws"):
        make_delta_bundle(new, other.path, tmp_path / "d.satchel", [keys.signing])
    with pytest.raises(DeltaBaseError, match="not older"):
        make_delta_bundle(old, new, tmp_path / "d.satchel", [keys.signing])
    delta = tmp_path / "d.satchel"
    make_delta_bundle(new, old, delta, [keys.signing])
    with pytest.raises(DeltaBaseError, match="from full bundles"):
        make_delta_bundle(new, delta, tmp_path / "d2.satchel", [keys.signing])
    assert not (tmp_path / "d2.satchel").exists()


def test_manifest_delta_fields_are_validated(keys: Keyring, tmp_path: Path,
                                             pairs: dict[str, ModelPair]) -> None:
    old, new = _releases(tmp_path, keys, pairs["int8"])
    delta = tmp_path / "d.satchel"
    good = make_delta_bundle(new, old, delta, [keys.signing]).manifest.to_dict()

    def parsed(change: dict) -> Manifest:
        return Manifest.from_dict({**good, **change})

    with pytest.raises(WrongTypeError, match="not below"):
        parsed({"delta_base": {**good["delta_base"], "sequence": 6}})
    with pytest.raises(WrongTypeError, match="channel"):
        parsed({"delta_base": {**good["delta_base"], "channel": "vision"}})
    with pytest.raises(WrongTypeError, match="no 'delta_base'"):
        Manifest.from_dict({k: v for k, v in good.items() if k != "delta_base"})
    files = [dict(f) for f in good["files"]]
    files[0]["delta"] = {**files[0]["delta"], "method": "bsdiff"}
    with pytest.raises(WrongTypeError, match="unknown patch method"):
        parsed({"files": files})
    files[0]["delta"] = {**good["files"][0]["delta"], "extra": 1}
    with pytest.raises(UnexpectedFieldError):
        parsed({"files": files})
