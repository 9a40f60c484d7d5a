"""Test factory: keys, trust roots and signed bundles, and tar surgery to craft hostile ones.

Honest bundles are made by `bundles.pack.write_bundle`, exactly as `satchel bundle build`
makes them. Hostile ones are made by the surgery helpers below, which carry their own small
ustar encoder and parser so that they can write what the Satchel reader must refuse (links,
devices, lying sizes, unsafe names) without going through the code under test.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import zstandard

from satchel.bundles.canonical import encode_canonical
from satchel.bundles.config import PackOptions
from satchel.bundles.durable import atomic_write_bytes
from satchel.bundles.errors import BundleError
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
from satchel.bundles.reader import VerifiedBundle, verify_and_unpack
from satchel.bundles.timeutil import utcnow
from satchel.bundles.trust import Root, load_root, make_root, sign_root

CREATED = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)  # build time of test bundles
NOW = datetime(2026, 3, 2, 12, 0, 0, tzinfo=timezone.utc)  # the device clock in tests
BLOCK = 512  # bytes of a tar block
MiB = 1024 * 1024

# One thread: output identical to multi-threaded packing is not needed, speed on 2 cores is.
TEST_PACK = PackOptions(zstd_level=3, zstd_threads=0)

ManifestMutation = Callable[[dict[str, Any]], "dict[str, Any] | bytes | None"]


# --- keys and trust roots ------------------------------------------------------------------


@dataclass(frozen=True)
class Keyring:
    """Root and signing keys, the version-1 root they make, and where their files are."""

    directory: Path
    root_keys: list[SigningKey]
    signing_keys: list[SigningKey]
    root: Root
    root_json: bytes

    @property
    def signing(self) -> SigningKey:
        return self.signing_keys[0]


def _write_keypair(directory: Path, stem: str, key: SigningKey) -> None:
    atomic_write_bytes(directory / f"{stem}.key", key.to_pem(), mode=0o600)
    atomic_write_bytes(directory / f"{stem}.pub", key.public.to_pem())


def make_keys(
    tmp_path: Path,
    *,
    root_count: int = 1,
    signing_count: int = 1,
    root_threshold: int = 1,
    signing_threshold: int = 1,
    expires: datetime | None = None,
) -> Keyring:
    """Generate keys and a signed version-1 root, laid out as `satchel keys init` does.

    Files: `root.json`, `root.key`/`root.pub`, `signing.key`/`signing.pub`, and
    `root-N.*` / `signing-N.*` for the second and later keys of each role.
    """
    directory = tmp_path / "keys"
    directory.mkdir(parents=True, exist_ok=True)
    root_keys = [SigningKey.generate() for _ in range(root_count)]
    signing_keys = [SigningKey.generate() for _ in range(signing_count)]
    for role, keys in (("root", root_keys), ("signing", signing_keys)):
        for i, key in enumerate(keys):
            _write_keypair(directory, role if i == 0 else f"{role}-{i + 1}", key)
    root = make_root(
        1,
        [k.public for k in root_keys],
        [k.public for k in signing_keys],
        root_threshold=root_threshold,
        signing_threshold=signing_threshold,
        expires=expires,
    )
    root_json = sign_root(root, root_keys[:root_threshold])
    atomic_write_bytes(directory / "root.json", root_json)
    return Keyring(directory, root_keys, signing_keys, load_root(root_json), root_json)


def next_root(
    trusted: Root,
    *,
    root_keys: list[SigningKey],
    signing_keys: list[SigningKey],
    signed_by: list[SigningKey],
    version: int | None = None,
    root_threshold: int = 1,
    signing_threshold: int = 1,
) -> bytes:
    """root.json bytes of a successor of `trusted` (version + 1 unless given), signed by
    `signed_by` (which must include old root keys for a valid rotation)."""
    new = make_root(
        trusted.version + 1 if version is None else version,
        [k.public for k in root_keys],
        [k.public for k in signing_keys],
        root_threshold=root_threshold,
        signing_threshold=signing_threshold,
    )
    return sign_root(new, signed_by)


# --- honest bundles ------------------------------------------------------------------------


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


# --- tar surgery ---------------------------------------------------------------------------

TYPEFLAGS = {
    "file": b"0",
    "hardlink": b"1",
    "symlink": b"2",
    "chardev": b"3",
    "blockdev": b"4",
    "directory": b"5",
    "fifo": b"6",
    "contiguous": b"7",
    "pax": b"x",
    "gnu-longname": b"L",
}


@dataclass(frozen=True)
class TarMember:
    """One tar member as the surgery helpers see it; `size` set means the header lies."""

    name: str | bytes
    data: bytes = b""
    typeflag: bytes = b"0"
    linkname: str = ""
    mode: int = 0o644
    mtime: int = 0
    size: int | None = None  # size field of the header; None = len(data)
    devmajor: int = 0
    devminor: int = 0


def _octal_field(value: int, width: int) -> bytes:
    return f"{value:0{width - 1}o}".encode("ascii") + b"\0"


def _name_fields(name: str | bytes) -> tuple[bytes, bytes]:
    raw = name if isinstance(name, bytes) else name.encode("utf-8")
    if len(raw) <= 100:
        return raw, b""
    cut = raw.rfind(b"/", 0, 156)
    if cut <= 0 or len(raw) - cut - 1 > 100:
        raise ValueError(f"name too long for ustar: {raw!r}")
    return raw[cut + 1 :], raw[:cut]


def header_block(m: TarMember) -> bytes:
    """A ustar header for `m`, checksum included, whatever it describes."""
    short, prefix = _name_fields(m.name)
    block = bytearray(BLOCK)
    block[0 : len(short)] = short
    block[100:108] = _octal_field(m.mode, 8)
    block[108:116] = _octal_field(0, 8)
    block[116:124] = _octal_field(0, 8)
    block[124:136] = _octal_field(len(m.data) if m.size is None else m.size, 12)
    block[136:148] = _octal_field(m.mtime, 12)
    block[156:157] = m.typeflag
    link = m.linkname.encode("utf-8")
    block[157 : 157 + len(link)] = link
    block[257:265] = b"ustar\x0000"
    if m.devmajor or m.devminor:
        block[329:337] = _octal_field(m.devmajor, 8)
        block[337:345] = _octal_field(m.devminor, 8)
    block[345 : 345 + len(prefix)] = prefix
    return with_checksum(bytes(block))


def with_checksum(block: bytes) -> bytes:
    """`block` with its ustar checksum field recomputed."""
    b = bytearray(block)
    b[148:156] = b" " * 8
    b[148:156] = f"{sum(b):06o}".encode("ascii") + b"\0 "
    return bytes(b)


def encode_member(m: TarMember) -> bytes:
    return header_block(m) + m.data + b"\0" * (-len(m.data) % BLOCK)


def pack_members(members: list[TarMember], *, end: bool = True) -> bytes:
    """A tar archive of `members`, followed by the two zero blocks unless `end` is false."""
    return b"".join(encode_member(m) for m in members) + (b"\0" * 2 * BLOCK if end else b"")


def _field_int(field: bytes) -> int:
    return int(field.split(b"\0", 1)[0].strip(b" ") or b"0", 8)


def read_members(data: bytes) -> list[TarMember]:
    """The members of an honest archive (as written by `write_bundle` or `pack_members`)."""
    members: list[TarMember] = []
    pos = 0
    while pos + BLOCK <= len(data) and data[pos : pos + BLOCK] != b"\0" * BLOCK:
        block = data[pos : pos + BLOCK]
        short = block[0:100].split(b"\0", 1)[0].decode()
        prefix = block[345:500].split(b"\0", 1)[0].decode()
        size = _field_int(block[124:136])
        start = pos + BLOCK
        members.append(
            TarMember(
                name=f"{prefix}/{short}" if prefix else short,
                data=data[start : start + size],
                typeflag=block[156:157],
                mode=_field_int(block[100:108]),
                mtime=_field_int(block[136:148]),
            )
        )
        pos = start + size + (-size % BLOCK)
    return members


def member_names(data: bytes) -> list[str]:
    return [str(m.name) for m in read_members(data)]


def _index(members: list[TarMember], name: str) -> int:
    for i, m in enumerate(members):
        if m.name == name:
            return i
    raise KeyError(name)


def rewrite_member(data: bytes, name: str, content: bytes) -> bytes:
    """Replace the content of member `name` (header size follows, so the tar stays honest)."""
    members = read_members(data)
    i = _index(members, name)
    members[i] = replace(members[i], data=content)
    return pack_members(members)


def rename_member(data: bytes, name: str, new_name: str | bytes) -> bytes:
    members = read_members(data)
    i = _index(members, name)
    members[i] = replace(members[i], name=new_name)
    return pack_members(members)


def drop_member(data: bytes, name: str) -> bytes:
    members = read_members(data)
    del members[_index(members, name)]
    return pack_members(members)


def reorder_members(data: bytes, order: list[str]) -> bytes:
    """The archive with its members in `order` (every name exactly once)."""
    by_name = {m.name: m for m in read_members(data)}
    return pack_members([by_name[n] for n in order])


def insert_member(data: bytes, member: TarMember, index: int | None = None) -> bytes:
    """The archive with `member` added at `index` (default: after the last member)."""
    members = read_members(data)
    members.insert(len(members) if index is None else index, member)
    return pack_members(members)


def lie_about_size(data: bytes, name: str, size: int) -> bytes:
    """The archive with member `name`'s header claiming `size` bytes; its data is unchanged."""
    members = read_members(data)
    i = _index(members, name)
    members[i] = replace(members[i], size=size)
    return pack_members(members)


def special_member(name: str, kind: str, target: str = "") -> TarMember:
    """A link, device, FIFO or directory member (`kind` is a key of TYPEFLAGS)."""
    mode = 0o755 if kind == "directory" else 0o644
    return TarMember(name=name, typeflag=TYPEFLAGS[kind], linkname=target, mode=mode,
                     devmajor=1 if kind.endswith("dev") else 0,
                     devminor=3 if kind.endswith("dev") else 0)


def truncate(data: bytes, at: int) -> bytes:
    return data[:at]


def flip_byte(data: bytes, offset: int, mask: int = 0xFF) -> bytes:
    """`data` with the byte at `offset` XORed with `mask` (non-zero, so it always changes)."""
    out = bytearray(data)
    out[offset] ^= mask
    return bytes(out)


@dataclass(frozen=True)
class Span:
    """A region of a bundle file: a member's header, data or padding, or the end marker."""

    member: str  # member name, or "" for the end-of-archive marker and what follows
    region: str  # "header" | "data" | "padding" | "end"
    start: int  # byte offset, inclusive
    stop: int  # byte offset, exclusive


def layout(data: bytes) -> list[Span]:
    """Every byte of an honest archive, attributed to the region it belongs to."""
    spans: list[Span] = []
    pos = 0
    for m in read_members(data):
        name = str(m.name)
        size = len(m.data)
        spans.append(Span(name, "header", pos, pos + BLOCK))
        spans.append(Span(name, "data", pos + BLOCK, pos + BLOCK + size))
        pos += BLOCK + size
        pad = -size % BLOCK
        spans.append(Span(name, "padding", pos, pos + pad))
        pos += pad
    spans.append(Span("", "end", pos, len(data)))
    return [s for s in spans if s.stop > s.start]


def span_of(data: bytes, member: str, region: str) -> Span:
    """The span of `region` ("header", "data", "padding") of `member` in `data`."""
    return next(s for s in layout(data) if s.member == member and s.region == region)


def span_at(spans: list[Span], offset: int) -> Span:
    return next(s for s in spans if s.start <= offset < s.stop)


# --- zstd payloads -------------------------------------------------------------------------


def zstd_frame(content: bytes, *, window_log: int | None = None) -> bytes:
    """One zstd frame of `content`; with `window_log`, a streamed frame demanding that window."""
    if window_log is None:
        return zstandard.ZstdCompressor(level=3).compress(content)
    params = zstandard.ZstdCompressionParameters(
        window_log=window_log, compression_level=3, write_content_size=False
    )
    out = io.BytesIO()
    with zstandard.ZstdCompressor(compression_params=params).stream_writer(
        out, closefd=False
    ) as writer:
        writer.write(content)
    return out.getvalue()


def zstd_bomb(expanded_bytes: int, *, chunk_bytes: int = MiB) -> bytes:
    """A small zstd frame of `expanded_bytes` zeros, streamed so it never holds them all and
    without a content size in the frame header (as a hostile builder would write it)."""
    cctx = zstandard.ZstdCompressor(level=1, write_content_size=False)
    out = io.BytesIO()
    zeros = bytes(chunk_bytes)
    with cctx.stream_writer(out, closefd=False) as writer:
        remaining = expanded_bytes
        while remaining > 0:
            n = min(remaining, chunk_bytes)
            writer.write(zeros[:n])
            remaining -= n
    return out.getvalue()


# --- observing the file system -------------------------------------------------------------


def tree_snapshot(root: Path) -> dict[str, tuple[str, int, bytes]]:
    """Every path under `root` (not following links) with its kind, mode and content hash."""
    out: dict[str, tuple[str, int, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", st.st_mode, os.readlink(p).encode())
            elif p.is_dir():
                out[rel] = ("dir", st.st_mode, b"")
            else:
                out[rel] = ("file", st.st_mode, hashlib.sha256(p.read_bytes()).digest())
    return out


def read_tree(root: Path) -> dict[str, bytes]:
    """The regular files under `root`, relative path -> content."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


# --- a device that installs bundles -----------------------------------------------------


def assert_one_line(err: BaseException) -> None:
    """A refusal reads as one line a technician understands: no traceback, no blank message."""
    message = str(err)
    assert message.strip(), f"{type(err).__name__} has an empty message"
    assert "\n" not in message, f"{type(err).__name__} message is not one line: {message!r}"
    assert len(message) < 400, f"{type(err).__name__} message is too long: {message!r}"


class Device:
    """What a device does with a bundle file: verify it against its trust root and unpack it
    into an empty staging directory (`tmp_path/device/var/staging`). A refusal is checked to
    have changed nothing anywhere under `tmp_path` once the incoming file has landed."""

    def __init__(self, tmp_path: Path, root: Root) -> None:
        self.root = root
        self.watched = tmp_path
        self.tree = tmp_path / "device"
        self.staging = self.tree / "var" / "staging"
        self.staging.mkdir(parents=True)
        self.inbox = tmp_path / "inbox"
        self.inbox.mkdir()
        self._received = 0

    def receive(self, data: bytes) -> Path:
        self._received += 1
        path = self.inbox / f"incoming-{self._received}.satchel"
        path.write_bytes(data)
        return path

    def install(
        self,
        data: bytes,
        *,
        now: datetime = NOW,
        not_before: datetime | None = None,
        root: Root | None = None,
    ) -> dict[str, bytes]:
        """Verify and unpack `data`; return the unpacked files and empty the staging dir."""
        verified = self.unpack(data, now=now, not_before=not_before, root=root)
        files = read_tree(self.staging)
        assert set(files) == {e.path for e in verified.manifest.files}
        shutil.rmtree(self.staging)
        self.staging.mkdir()
        return files

    def unpack(
        self,
        data: bytes | Path,
        *,
        now: datetime = NOW,
        not_before: datetime | None = None,
        root: Root | None = None,
    ) -> VerifiedBundle:
        """Verify and unpack `data` (bytes, or a file already received) into staging."""
        path = data if isinstance(data, Path) else self.receive(data)
        return verify_and_unpack(
            path, root or self.root, self.staging, now, not_before=not_before, fsync=False
        )

    def refuses(
        self,
        data: bytes,
        error: type[BundleError],
        *,
        now: datetime = NOW,
        not_before: datetime | None = None,
        root: Root | None = None,
    ) -> BundleError:
        """Assert that installing `data` raises exactly `error`, in one line, and that the
        device tree (staging dir included, left empty) is unchanged."""
        path = self.receive(data)
        before = tree_snapshot(self.watched)
        with pytest.raises(BundleError) as info:
            self.unpack(path, now=now, not_before=not_before, root=root)
        err = info.value
        assert type(err) is error, f"expected {error.__name__}, got {type(err).__name__}: {err}"
        assert_one_line(err)
        assert list(self.staging.iterdir()) == []
        assert tree_snapshot(self.watched) == before
        return err


# --- bundles with a real model and a smoke test it passes ---------------------------------


def _npz(arrays: dict[str, Any]) -> bytes:
    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def smoke_tested_bundle(
    out: Path,
    signer: SigningKey,
    model_file: Path,
    inputs: Any,
    *,
    channel: str,
    version: str,
    sequence: int,
    policy: HealthPolicy,
    wrong_reference: bool = False,
) -> Path:
    """A signed bundle of the real model `model_file` whose smoke test runs `inputs` (an array
    for its first input) against the model's own outputs, so it passes on the device; with
    `wrong_reference` the references are off by 5, so the smoke test fails on accuracy."""
    from satchel.agent.runtimes import get_runtime, runtime_for_file

    runtime = runtime_for_file(model_file)
    model = get_runtime(runtime).load(model_file)
    reference = model.run({model.inputs[0].name: inputs})
    if wrong_reference:
        reference = {k: v + 5.0 for k, v in reference.items()}
    payload_name = f"model{model_file.suffix}"
    manifest = Manifest(
        name=channel,
        version=version,
        sequence=sequence,
        created=utcnow(),
        files=(),
        models=(ModelEntry(
            name="main",
            runtime=runtime,
            file=payload_name,
            inputs=tuple(TensorInfo(s.name, s.datatype, s.shape) for s in model.inputs),
            outputs=tuple(TensorInfo(s.name, s.datatype, s.shape) for s in model.outputs),
        ),),
        smoke_tests=(SmokeTest(
            "main", "smoke/inputs.npz", "smoke/reference.npz", max_abs_error=1e-3,
            warmup_runs=1, latency_runs=3,
        ),),
        health_policy=policy,
        compatibility=Compatibility(),
    )
    payloads = [
        Payload(payload_name, model_file),
        Payload("smoke/inputs.npz", _npz({model.inputs[0].name: inputs})),
        Payload("smoke/reference.npz", _npz(reference)),
    ]
    with open(out, "wb") as f:
        write_bundle(f, manifest, payloads, [signer], TEST_PACK)
    return out


# --- command outcomes: the CLI contract ----------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What a `satchel` or `satchel-agent` invocation did: exit code and both output streams."""

    exit_code: int
    stdout: str
    stderr: str

    def ok(self) -> Outcome:
        """Assert success: exit 0, no traceback. Returns self for chaining."""
        assert self.exit_code == 0, f"exit {self.exit_code}\n{self.stdout}\n{self.stderr}"
        assert "Traceback" not in self.stdout + self.stderr
        return self

    def refusal(self) -> str:
        """Assert a refusal: exit 1, one `error: ` line on stderr, no traceback. Returns it."""
        assert "Traceback" not in self.stdout + self.stderr, self.stderr
        assert self.exit_code == 1, f"exit {self.exit_code}\n{self.stdout}\n{self.stderr}"
        lines = self.stderr.splitlines()
        assert len(lines) == 1, f"stderr is not one line: {self.stderr!r}"
        assert lines[0].startswith("error: "), lines[0]
        return lines[0]

    def usage_error(self) -> str:
        """Assert a usage error: exit 2, click's message on stderr, no traceback."""
        assert "Traceback" not in self.stdout + self.stderr, self.stderr
        assert self.exit_code == 2, f"exit {self.exit_code}\n{self.stdout}\n{self.stderr}"
        return self.stderr

    def json(self) -> Any:
        """stdout parsed as JSON (the command must have succeeded)."""
        return json.loads(self.ok().stdout)
