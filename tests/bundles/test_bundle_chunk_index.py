"""The signed chunk index and the one-read verify + unpack it allows: every chunk of a compressed
member is checked against the manifest before the decompressor sees a byte of it, bundles
without an index still verify (in two reads), and an index that lies is refused with the
staging directory left empty."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import pytest
import zstandard

from satchel.bundles import reader
from satchel.bundles.chunkindex import chunk_size_for
from satchel.bundles.config import DEFAULT_LIMITS, PackOptions
from satchel.bundles.errors import (
    MissingFieldError,
    PayloadHashError,
    PayloadSizeError,
    TruncatedBundleError,
    WrongTypeError,
)
from satchel.bundles.manifest import member_name
from satchel.bundles.pack import Payload, index_chunk_size, write_bundle
from satchel.bundles.reader import check_payloads, unpack_bundle, verify_bundle
from tests.factory.bundles import (
    BuiltBundle,
    build_test_bundle,
    chunk_hashes,
    default_manifest,
)
from tests.factory.device import NOW, Device
from tests.factory.keys import Keyring
from tests.factory.spans import flip_byte, span_of, truncate
from tests.factory.tar import rewrite_member
from tests.factory.trees import read_tree

MiB = 1024 * 1024
MODEL_MEMBER = member_name("model.onnx")


class FeedRecorder:
    """Stands in for the zstandard module inside `bundles.reader` and records, per member,
    every byte the decompressor is fed, before handing it to the real one."""

    ZstdError = zstandard.ZstdError

    def __init__(self) -> None:
        self.fed: list[bytearray] = []

    def ZstdDecompressor(self, **kwargs: Any) -> Any:  # noqa: N802 - the module's name
        real = zstandard.ZstdDecompressor(**kwargs)
        recorder = self

        class Recording:
            def stream_reader(self, source: Any, **kw: Any) -> Any:
                fed = bytearray()
                recorder.fed.append(fed)

                class Tap:
                    def read(self, n: int = -1) -> Any:
                        data = source.read(n)
                        fed.extend(data)
                        return data

                return real.stream_reader(Tap(), **kw)

        return Recording()


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> FeedRecorder:
    rec = FeedRecorder()
    monkeypatch.setattr(reader, "zstandard", rec)
    return rec


@pytest.fixture
def big(tmp_path: Path, keys: Keyring) -> BuiltBundle:
    """A bundle whose model member spans four 1 MiB chunks (random bytes barely compress)."""
    payloads = {
        "model.onnx": os.urandom(3 * MiB + 1000),
        "smoke/inputs.npz": b"inputs " * 40,
        "smoke/reference.npz": b"reference " * 30,
    }
    return build_test_bundle(tmp_path / "big.satchel", keys=keys, payloads=payloads)


def _member(bundle: BuiltBundle, name: str = MODEL_MEMBER) -> bytes:
    span = span_of(bundle.data, name, "data")
    return bundle.data[span.start : span.stop]


def _strip_index(doc: dict[str, Any]) -> None:
    for entry in doc["files"]:
        entry.pop("chunk_size")
        entry.pop("chunk_sha256")


class CountingFile(io.BytesIO):
    """A bundle file that counts the bytes read from it."""

    bytes_read = 0

    def read(self, n: int | None = -1) -> bytes:
        data = super().read(n)
        self.bytes_read += len(data)
        return data

    def readinto(self, b: Any) -> int:
        n = super().readinto(b)
        self.bytes_read += n
        return n


# --- the index an honest build writes ------------------------------------------------------


def test_every_member_carries_a_chunk_index_that_covers_it(big: BuiltBundle) -> None:
    for entry in big.manifest.files:
        assert entry.chunk_size == MiB
        assert list(entry.chunk_sha256) == chunk_hashes(
            _member(big, member_name(entry.path)), MiB
        )
    assert len(big.manifest.file("model.onnx").chunk_sha256) == 4


def test_chunks_grow_so_the_index_of_a_huge_bundle_stays_small() -> None:
    options = PackOptions(index_chunk_bytes=MiB, index_max_chunks=8192)
    assert index_chunk_size([Payload("m", b"x" * 1000)], options) == MiB
    assert chunk_size_for(8 * 1024**3, options) == MiB
    assert chunk_size_for(64 * 1024**3, options) == 8 * MiB
    assert chunk_size_for(2**50, options) == DEFAULT_LIMITS.max_index_chunk_bytes
    assert chunk_size_for(64 * 1024**3, PackOptions(index_chunk_bytes=0)) is None


# --- one read ------------------------------------------------------------------------------


def test_verify_and_unpack_read_an_indexed_bundle_once(
    big: BuiltBundle, keys: Keyring, tmp_path: Path
) -> None:
    f = CountingFile(big.data)
    verified = verify_bundle(f, keys.root, NOW, defer_payloads=True)
    assert not any(m.hashed for m in verified.members)
    assert f.bytes_read < 64 * 1024  # the manifest, headers and padding only
    staging = tmp_path / "staging"
    staging.mkdir()
    unpack_bundle(f, verified, staging, fsync=False)
    assert f.bytes_read <= len(big.data)
    assert read_tree(staging) == big.payloads


def test_one_read_and_two_reads_leave_the_same_files(
    big: BuiltBundle, keys: Keyring, tmp_path: Path
) -> None:
    trees = []
    for defer in (True, False):
        staging = tmp_path / f"staging-{defer}"
        staging.mkdir()
        f = io.BytesIO(big.data)
        verified = verify_bundle(f, keys.root, NOW, defer_payloads=defer)
        unpack_bundle(f, verified, staging, fsync=False)
        trees.append(read_tree(staging))
    assert trees[0] == trees[1] == big.payloads


def test_check_payloads_checks_deferred_chunks_too(big: BuiltBundle, keys: Keyring) -> None:
    bad = flip_byte(big.data, span_of(big.data, MODEL_MEMBER, "data").start + MiB + 7)
    f = io.BytesIO(bad)
    verified = verify_bundle(f, keys.root, NOW, defer_payloads=True)
    with pytest.raises(PayloadHashError, match="chunk 2 of 4"):
        check_payloads(f, verified)


# --- a member that differs from its index --------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 2])
def test_chunk_flipped_in_the_middle_of_a_member_is_refused_before_it_is_decompressed(
    big: BuiltBundle, device: Device, recorder: FeedRecorder, chunk: int
) -> None:
    start = span_of(big.data, MODEL_MEMBER, "data").start
    bad = flip_byte(big.data, start + chunk * MiB + MiB // 2)
    err = device.refuses(bad, PayloadHashError)
    assert f"chunk {chunk + 1} of 4" in str(err)
    assert len(recorder.fed) == 1  # the model is the first member
    assert bytes(recorder.fed[0]) == _member(big)[: chunk * MiB]  # the chunks before, exactly


def test_chunk_index_that_disagrees_with_the_member_is_refused_before_it_is_decompressed(
    tmp_path: Path, keys: Keyring, device: Device, recorder: FeedRecorder
) -> None:
    def lie_about_chunk_3(doc: dict[str, Any]) -> None:
        doc["files"][0]["chunk_sha256"][2] = hashlib.sha256(b"other").hexdigest()

    payloads = {"model.onnx": os.urandom(3 * MiB), "smoke/inputs.npz": b"i",
                "smoke/reference.npz": b"r"}
    lying = build_test_bundle(
        tmp_path / "b.satchel", keys=keys, payloads=payloads, mutate_manifest=lie_about_chunk_3
    )
    err = device.refuses(lying.data, PayloadHashError)
    assert "model.onnx chunk 3 of 4" in str(err)
    assert bytes(recorder.fed[0]) == _member(lying)[: 2 * MiB]


def test_chunk_index_that_disagrees_is_refused_by_the_two_read_verify_too(
    tmp_path: Path, keys: Keyring, recorder: FeedRecorder
) -> None:
    def lie(doc: dict[str, Any]) -> None:
        doc["files"][1]["chunk_sha256"][0] = "0" * 64

    lying = build_test_bundle(tmp_path / "b.satchel", keys=keys, mutate_manifest=lie)
    with pytest.raises(PayloadHashError, match="smoke/inputs.npz chunk 1 of 1"):
        verify_bundle(io.BytesIO(lying.data), keys.root, NOW)
    assert recorder.fed == []


def test_index_that_agrees_with_the_member_but_not_its_whole_hash_is_refused_on_the_manager(
    tmp_path: Path, keys: Keyring, big: BuiltBundle, recorder: FeedRecorder
) -> None:
    """`verify_bundle` without deferral (the manager's `bundle add` and `bundle verify`)
    checks the whole-member hash and the index, so a bundle the manager stores is one whose
    index agrees with what `sha256sum` checks; the device relies on that and on the index."""

    def wrong_whole_hash(doc: dict[str, Any]) -> None:
        doc["files"][0]["compressed_sha256"] = "0" * 64

    lying = build_test_bundle(
        tmp_path / "b.satchel", keys=keys, payloads=big.payloads, mutate_manifest=wrong_whole_hash
    )
    with pytest.raises(PayloadHashError, match="model.onnx does not match its signed hash"):
        verify_bundle(io.BytesIO(lying.data), keys.root, NOW)
    assert recorder.fed == []


@pytest.mark.parametrize(
    ("mutation", "error", "message"),
    [
        (lambda e: e["chunk_sha256"].pop(), WrongTypeError, "lists 3 chunks"),
        (lambda e: e["chunk_sha256"].append("0" * 64), WrongTypeError, "lists 5 chunks"),
        (lambda e: e.update(chunk_sha256=[]), WrongTypeError, "lists 0 chunks"),
        (lambda e: e.update(chunk_size=0), WrongTypeError, "'chunk_size' must be between"),
        (lambda e: e.update(chunk_size=-MiB), WrongTypeError, "'chunk_size' must be between"),
        (lambda e: e.update(chunk_size=2**40), WrongTypeError, "'chunk_size' must be between"),
        (lambda e: e.update(chunk_size=17 * MiB), WrongTypeError, "'chunk_size' must be"),
        (lambda e: e.update(chunk_size=2 * MiB), WrongTypeError, "its compressed size needs 2"),
        (lambda e: e.update(chunk_size="1048576"), WrongTypeError, "must be an integer"),
        (lambda e: e.pop("chunk_sha256"), MissingFieldError, "without 'chunk_sha256'"),
        (lambda e: e.pop("chunk_size"), MissingFieldError, "without 'chunk_size'"),
        (lambda e: e["chunk_sha256"].__setitem__(1, "ABC"), WrongTypeError, "invalid entry"),
        (lambda e: e["chunk_sha256"].__setitem__(1, 7), WrongTypeError, "invalid entry"),
        (lambda e: e.update(chunk_sha256="0" * 256), WrongTypeError, "must be a list"),
    ],
    ids=[
        "one-chunk-missing", "one-chunk-extra", "empty-index", "chunk-size-zero",
        "chunk-size-negative", "chunk-size-huge", "chunk-size-over-the-limit",
        "chunk-size-changed", "chunk-size-a-string", "no-hashes", "no-chunk-size",
        "hash-not-hex", "hash-not-a-string", "hashes-not-a-list",
    ],
)
def test_malformed_chunk_index_is_refused_before_any_payload_is_read(
    tmp_path: Path,
    keys: Keyring,
    device: Device,
    recorder: FeedRecorder,
    big: BuiltBundle,
    mutation: Any,
    error: type,
    message: str,
) -> None:
    def mutate(doc: dict[str, Any]) -> None:
        mutation(doc["files"][0])

    lying = build_test_bundle(
        tmp_path / "b.satchel", keys=keys, payloads=big.payloads, mutate_manifest=mutate
    )
    err = device.refuses(lying.data, error)
    assert message in str(err)
    assert recorder.fed == []


# --- a member whose size differs ---------------------------------------------------------


@pytest.mark.parametrize("cut", [1, MiB, 2 * MiB + 100])
def test_truncated_member_is_refused_before_anything_is_decompressed(
    big: BuiltBundle, device: Device, recorder: FeedRecorder, cut: int
) -> None:
    span = span_of(big.data, MODEL_MEMBER, "data")
    err = device.refuses(truncate(big.data, span.stop - cut), TruncatedBundleError)
    assert "model.onnx" in str(err)
    assert recorder.fed == []


@pytest.mark.parametrize("extra", [1, 512, MiB])
def test_member_longer_than_declared_is_refused_before_anything_is_decompressed(
    big: BuiltBundle, device: Device, recorder: FeedRecorder, extra: int
) -> None:
    longer = rewrite_member(big.data, MODEL_MEMBER, _member(big) + os.urandom(extra))
    err = device.refuses(longer, PayloadSizeError)
    assert "the manifest says" in str(err)
    assert recorder.fed == []


def test_member_swapped_for_one_of_the_same_size_is_refused_at_its_first_chunk(
    big: BuiltBundle, device: Device, recorder: FeedRecorder
) -> None:
    swapped = rewrite_member(big.data, MODEL_MEMBER, os.urandom(len(_member(big))))
    err = device.refuses(swapped, PayloadHashError)
    assert "chunk 1 of 4" in str(err)
    assert recorder.fed == [bytearray()]


def test_later_member_tampered_leaves_staging_empty_after_earlier_ones_were_written(
    big: BuiltBundle, device: Device, recorder: FeedRecorder
) -> None:
    name = member_name("smoke/reference.npz")
    start = span_of(big.data, name, "data").start
    err = device.refuses(flip_byte(big.data, start + 5), PayloadHashError)
    assert "smoke/reference.npz chunk 1 of 1" in str(err)
    assert bytes(recorder.fed[0]) == _member(big)  # the model was fed, checked, then removed
    assert recorder.fed[2] == bytearray()


# --- bundles made without an index -------------------------------------------------------


def test_bundle_without_index_still_verifies_in_two_reads(
    tmp_path: Path, keys: Keyring, device: Device, big: BuiltBundle
) -> None:
    old = build_test_bundle(
        tmp_path / "old.satchel", keys=keys, payloads=big.payloads, mutate_manifest=_strip_index
    )
    assert b"chunk_sha256" not in old.data
    f = io.BytesIO(old.data)
    verified = verify_bundle(f, keys.root, NOW, defer_payloads=True)
    assert all(m.hashed and not m.entry.indexed for m in verified.members)
    assert device.install(old.data) == big.payloads


def test_bundle_without_index_with_a_flipped_byte_is_refused_before_decompressing(
    tmp_path: Path, keys: Keyring, device: Device, recorder: FeedRecorder, big: BuiltBundle
) -> None:
    old = build_test_bundle(
        tmp_path / "old.satchel", keys=keys, payloads=big.payloads, mutate_manifest=_strip_index
    )
    start = span_of(old.data, MODEL_MEMBER, "data").start
    err = device.refuses(flip_byte(old.data, start + 2 * MiB), PayloadHashError)
    assert "does not match its signed hash" in str(err)
    assert recorder.fed == []


def test_pack_without_index_writes_what_older_agents_read(
    tmp_path: Path, keys: Keyring, device: Device
) -> None:
    payloads = {"model.onnx": b"m" * 5000, "smoke/inputs.npz": b"i", "smoke/reference.npz": b"r"}
    path = tmp_path / "plain.satchel"
    with open(path, "wb") as f:
        final = write_bundle(
            f,
            default_manifest("vision", "1.0.0", 1, list(payloads)),
            [Payload(p, b) for p, b in payloads.items()],
            keys.signing_keys,
            PackOptions(zstd_threads=0, index_chunk_bytes=0),
        )
    assert not any(e.indexed for e in final.files)
    assert b"chunk_s" not in path.read_bytes()  # no field an older agent would refuse
    assert device.install(path.read_bytes()) == payloads


# --- durability ----------------------------------------------------------------------------


def test_fsynced_unpack_syncs_every_file_and_every_directory_once(
    tmp_path: Path, keys: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    payloads = {
        "model.onnx": os.urandom(5000),
        "smoke/inputs.npz": b"i",
        "smoke/reference.npz": b"r",
        "extra/deep/labels.txt": b"cat\n",
    }
    nested = build_test_bundle(tmp_path / "n.satchel", keys=keys, payloads=payloads)
    staging = tmp_path / "staging"
    staging.mkdir()
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.path.relpath(os.readlink(f"/proc/self/fd/{fd}"), staging))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    f = io.BytesIO(nested.data)
    unpack_bundle(f, verify_bundle(f, keys.root, NOW, defer_payloads=True), staging, fsync=True)
    assert sorted(synced) == sorted([*payloads, "smoke", "extra/deep", "extra", "."])
    assert synced[-1] == "."  # the staging directory last, its children before it
    assert synced.index("extra/deep") < synced.index("extra")
    assert read_tree(staging) == payloads
