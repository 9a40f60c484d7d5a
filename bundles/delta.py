"""Delta bundles: each payload that the base release also has ships as a patch against it
(docs/DELTAS.md).

A patch is one standard zstd frame compressed with the base file as its prefix (long-distance
matching, a window that covers the base): exactly what `zstd --patch-from=BASE` makes, and
what `zstd -d --patch-from=BASE` reads, so the admin's stock tools still reproduce and check
every file. python-zstandard's public API has no prefix (its raw-content dictionaries skip
long-distance matching and find almost nothing in a large base), so the frame is made and
read through the libzstd it bundles (`zstandard._cffi`, the same library as its C backend).

`make_patch` writes a patch, `PatchReader` streams one back (the base memory-mapped, never
read into the heap), `make_delta_bundle` turns a full bundle and the bundle it follows into
the delta bundle.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import zstandard
from zstandard import _cffi  # type: ignore[attr-defined]

from satchel.bundles.chunkindex import chunk_size_for
from satchel.bundles.config import DEFAULT_LIMITS, DEFAULT_PACK, Limits, PackOptions
from satchel.bundles.delta_manifest import METHOD_ZSTD_PATCH, DeltaBase, FileDelta
from satchel.bundles.errors import (
    DeltaBaseError,
    MemberLayoutError,
    PayloadHashError,
    PayloadSizeError,
    TruncatedBundleError,
)
from satchel.bundles.keys import SigningKey
from satchel.bundles.manifest import FileEntry, Manifest, member_name
from satchel.bundles.tarformat import BLOCK, decode_header, padding

if TYPE_CHECKING:
    from satchel.bundles.reader import VerifiedBundle

_ffi: Any = _cffi.ffi
_lib: Any = _cffi.lib

PATCH_LEVEL = 3  # zstd level of patches: long-distance matching finds the copies at any level
MIN_WINDOW_LOG = 10
MAX_WINDOW_LOG = 31  # zstd's largest window on 64-bit (2 GiB)


def patch_window_log(base_size: int, size: int) -> int:
    """The window of a patch of a `size`-byte file against a `base_size`-byte base: as
    `zstd --patch-from` chooses it (twice the larger of the two), so that `zstd -d
    --patch-from` accepts it without a memory flag. Raises ValueError past 2 GiB."""
    log = max(MIN_WINDOW_LOG, max(base_size, size, 1).bit_length())
    if log > MAX_WINDOW_LOG:
        raise ValueError(f"a {max(base_size, size)}-byte file is too large to patch (2 GiB)")
    return log


def _check(code: int, what: str) -> int:
    if _lib.ZSTD_isError(code):
        name = _ffi.string(_lib.ZSTD_getErrorName(code)).decode("ascii", "replace")
        raise zstandard.ZstdError(f"{what}: {name}")
    return int(code)


@contextlib.contextmanager
def _mapped(path: Path | None) -> Iterator[Any]:
    """The content of `path` memory-mapped read-only as a cffi buffer (None when empty or no
    path): the page cache holds it, not the heap."""
    if path is None or path.stat().st_size == 0:
        yield None
        return
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        buf = _ffi.from_buffer(mm)
        try:
            yield buf
        finally:
            _ffi.release(buf)


def make_patch(base: Path, new: Path, out: BinaryIO, level: int = PATCH_LEVEL,
               chunk_bytes: int = DEFAULT_PACK.chunk_bytes) -> int:
    """Write to `out` one zstd frame of `new` with `base` as its prefix; return its bytes.
    Raises OSError, ValueError (a file over 2 GiB), zstandard.ZstdError."""
    size = new.stat().st_size
    log = patch_window_log(base.stat().st_size, size)
    cctx = _ffi.gc(_lib.ZSTD_createCCtx(), _lib.ZSTD_freeCCtx)
    for param, value in ((_lib.ZSTD_c_compressionLevel, level), (_lib.ZSTD_c_windowLog, log),
                         (_lib.ZSTD_c_enableLongDistanceMatching, 1),
                         (_lib.ZSTD_c_checksumFlag, 1), (_lib.ZSTD_c_contentSizeFlag, 1)):
        _check(_lib.ZSTD_CCtx_setParameter(cctx, param, value), "zstd parameter")
    _check(_lib.ZSTD_CCtx_setPledgedSrcSize(cctx, size), "zstd size")
    out_size = _lib.ZSTD_CStreamOutSize()
    out_buf = _ffi.new("char[]", out_size)
    outb = _ffi.new("ZSTD_outBuffer *")
    inb = _ffi.new("ZSTD_inBuffer *")
    written = 0
    with _mapped(base) as prefix, open(new, "rb") as src:
        if prefix is not None:
            _check(_lib.ZSTD_CCtx_refPrefix(cctx, prefix, len(prefix)), "zstd prefix")
        while True:
            data = src.read(chunk_bytes)
            mode = _lib.ZSTD_e_continue if data else _lib.ZSTD_e_end
            keep = _ffi.from_buffer(data)
            inb.src, inb.size, inb.pos = keep, len(data), 0
            while True:
                outb.dst, outb.size, outb.pos = out_buf, out_size, 0
                left = _check(_lib.ZSTD_compressStream2(cctx, outb, inb, mode), "zstd patch")
                if outb.pos:
                    out.write(_ffi.buffer(out_buf, outb.pos))
                    written += outb.pos
                if (mode == _lib.ZSTD_e_end and left == 0) or (
                    mode == _lib.ZSTD_e_continue and inb.pos == inb.size
                ):
                    break
            if not data:
                return written


class PatchReader:
    """Reads the content a patch rebuilds, in steps, from `source` (anything with `read`,
    such as the reader's chunk-checked member view) and the base file (memory-mapped).
    Errors raise zstandard.ZstdError, as zstandard's own stream readers do; `close` unmaps
    the base."""

    def __init__(self, source: Any, base: Path | None, window_log: int,
                 read_size: int = DEFAULT_LIMITS.chunk_bytes) -> None:
        self._source = source
        self._read_size = read_size
        self._stack = contextlib.ExitStack()
        self._dctx = _ffi.gc(_lib.ZSTD_createDCtx(), _lib.ZSTD_freeDCtx)
        _check(_lib.ZSTD_DCtx_setParameter(self._dctx, _lib.ZSTD_d_windowLogMax, window_log),
               "zstd window")
        self._prefix = self._stack.enter_context(_mapped(base))
        self._inb = _ffi.new("ZSTD_inBuffer *")
        self._outb = _ffi.new("ZSTD_outBuffer *")
        self._in_data: Any = None
        self._in_done = False
        self._frame_done = False
        self._out_buf: Any = None
        self._out_size = 0
        self._started = False

    def _refill(self) -> None:
        data = self._source.read(self._read_size)
        if not data:
            self._in_done = True
            return
        self._in_data = _ffi.from_buffer(data)
        self._inb.src, self._inb.size, self._inb.pos = self._in_data, len(data), 0

    def read(self, n: int = DEFAULT_LIMITS.chunk_bytes) -> bytes:
        if not self._started:  # a prefix is referenced for one frame: set it once
            if self._prefix is not None:
                _check(_lib.ZSTD_DCtx_refPrefix(self._dctx, self._prefix, len(self._prefix)),
                       "zstd prefix")
            self._started = True
        if self._frame_done:
            return b""
        if n > self._out_size:
            self._out_buf, self._out_size = _ffi.new("char[]", n), n
        outb = self._outb
        outb.dst, outb.size, outb.pos = self._out_buf, n, 0
        while not outb.pos:
            if self._inb.pos == self._inb.size and not self._in_done:
                self._refill()
            if self._in_done and self._inb.pos == self._inb.size:
                raise zstandard.ZstdError("the patch ends before its frame does")
            left = _check(_lib.ZSTD_decompressStream(self._dctx, outb, self._inb), "patch")
            if left == 0:
                self._frame_done = True
                if self._inb.pos != self._inb.size or self._source.read(1):
                    raise zstandard.ZstdError("data after the patch's frame")
                break
        return bytes(_ffi.buffer(self._out_buf, outb.pos))

    def close(self) -> None:
        self._in_data = None
        self._stack.close()


def open_patch(source: Any, entry: FileEntry, base: Path | None,
               read_size: int = DEFAULT_LIMITS.chunk_bytes) -> PatchReader:
    """A reader of the content of the delta payload `entry` from its member `source` and its
    base file. Raises DeltaBaseError without a base."""
    if entry.delta is None:
        raise ValueError(f"payload {entry.path} is not a patch")
    if base is None:
        raise DeltaBaseError(f"payload {entry.path} is a patch and no base file was given")
    return PatchReader(source, base, patch_window_log(entry.delta.base_size, entry.size),
                       read_size)


# --- checking a base file ----------------------------------------------------------------


def file_sha256(path: Path, chunk_bytes: int = DEFAULT_LIMITS.chunk_bytes) -> str:
    """The sha256 of a file's content. Raises OSError."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            sha.update(chunk)
    return sha.hexdigest()


def check_base_file(entry: FileEntry, path: Path) -> None:
    """Check that `path` holds the content `entry`'s patch was made against. Raises
    DeltaBaseError."""
    assert entry.delta is not None
    try:
        size = path.stat().st_size
        ok = size == entry.delta.base_size and file_sha256(path) == entry.delta.base_sha256
    except OSError:
        ok = False
    if not ok:
        raise DeltaBaseError(
            f"base file {entry.path} differs from the one the patch was made against"
        )


# --- making a delta bundle -----------------------------------------------------------------


@dataclass(frozen=True)
class DeltaSummary:
    """What `make_delta_bundle` wrote."""

    manifest: Manifest
    patched: tuple[str, ...]  # payload paths shipped as patches
    whole: tuple[str, ...]  # payload paths shipped whole (not in the base release)
    bytes: int  # of the delta bundle file


def _read_members(f: BinaryIO, manifest: Manifest) -> dict[str, int]:
    """The data offset of each payload member of a bundle (whose head was read), in order.
    Raises MemberLayoutError, TruncatedBundleError."""
    offsets: dict[str, int] = {}
    if getattr(manifest, "encryption", None) is not None:  # step over keys.json
        block = f.read(BLOCK)
        if len(block) < BLOCK:
            raise TruncatedBundleError("bundle file is truncated")
        size = decode_header(block).size
        f.seek(size + padding(size), os.SEEK_CUR)
    for entry in manifest.files:
        block = f.read(BLOCK)
        if len(block) < BLOCK:
            raise TruncatedBundleError("bundle file is truncated")
        header = decode_header(block)
        if header.name != member_name(entry.path) or header.size != entry.compressed_size:
            raise MemberLayoutError(f"bundle member {header.name[:80]!r} is not as listed")
        offsets[entry.path] = f.tell()
        f.seek(entry.compressed_size + padding(entry.compressed_size), os.SEEK_CUR)
    return offsets


def _extract(f: BinaryIO, offset: int, entry: FileEntry, out: Path, limits: Limits,
             open_payload: Any = None) -> None:
    """Decompress one whole payload member to `out` (decrypting it first through
    `open_payload`, bundles/crypt.opener), checked against its entry. Raises PayloadError,
    OSError."""
    f.seek(offset)
    source: Any = _Bounded(f, entry.compressed_size)
    if open_payload is not None:
        source = open_payload(entry.path, entry.compressed_size, source)
    sha = hashlib.sha256()
    written = 0
    dctx = zstandard.ZstdDecompressor(max_window_size=limits.max_window_bytes)
    with open(out, "wb") as dst:
        reader = dctx.stream_reader(source, read_across_frames=True)
        try:
            while chunk := reader.read(limits.chunk_bytes):
                written += len(chunk)
                if written > entry.size:
                    raise PayloadSizeError(f"payload {entry.path} is larger than declared")
                sha.update(chunk)
                dst.write(chunk)
        except zstandard.ZstdError as e:
            raise PayloadHashError(f"payload {entry.path} is not a valid zstd stream: {e}") from e
    if written != entry.size or sha.hexdigest() != entry.sha256:
        raise PayloadHashError(f"payload {entry.path} does not match its manifest")


class _Bounded:
    def __init__(self, f: BinaryIO, length: int) -> None:
        self.f, self.remaining = f, length

    def read(self, n: int = -1) -> bytes:
        n = self.remaining if n < 0 else min(n, self.remaining)
        data = self.f.read(n) if n > 0 else b""
        self.remaining -= len(data)
        return data


def _head(f: BinaryIO) -> Manifest:
    from satchel.bundles.reader import read_unverified

    manifest, _ = read_unverified(f)
    return manifest


def delta_path_for(full: Path) -> Path:
    """Where `satchel bundle build --delta-from` writes the delta of the full bundle `full`:
    beside it, NAME.delta.satchel."""
    stem = full.name[: -len(".satchel")] if full.name.endswith(".satchel") else full.name
    return full.with_name(f"{stem}.delta.satchel")


def make_delta_bundle(
    full: Path,
    base: Path,
    out: Path,
    keys: list[SigningKey],
    *,
    options: PackOptions = DEFAULT_PACK,
    limits: Limits = DEFAULT_LIMITS,
    level: int = PATCH_LEVEL,
    encryption: Any = None,
) -> DeltaSummary:
    """Write to `out` the delta bundle of the full bundle `full` against the earlier release
    `base` (a bundle of the same channel, lower sequence): its manifest is `full`'s plus the
    delta fields, signed by `keys`; every payload that `base` also has is a patch against
    it, the others whole. Both bundles are read as the manager built them (not verified
    against a trust root: the manager and devices verify the result). With `encryption`
    (bundles.crypt.BundleEncryption) the delta's payloads are encrypted; an encrypted `full`
    needs the encryption it was built with (the same data key and recipients). Raises DeltaBaseError
    (a base of another channel or not older, or encrypted; a delta bundle given),
    BundleError subclasses, ValueError, OSError."""
    from satchel.bundles.pack import BundleBody, Payload

    with open(full, "rb") as ff, open(base, "rb") as bf:
        new_m, old_m = _head(ff), _head(bf)
        _check_pair(new_m, old_m, encryption)
        open_new = None
        if new_m.encryption is not None:
            from satchel.bundles.crypt import opener

            open_new = opener(new_m.encryption, encryption.data_key)
        new_at, old_at = _read_members(ff, new_m), _read_members(bf, old_m)
        old_files = {e.path: e for e in old_m.files}
        mtime = int(new_m.created.timestamp())
        chunk = chunk_size_for(sum(e.size for e in new_m.files), options)
        patched: list[str] = []
        whole: list[str] = []
        with tempfile.TemporaryDirectory(prefix=".satchel-delta-", dir=out.parent) as tmp, \
                BundleBody(mtime, chunk, options, Path(tmp), encryption) as body:
            work = Path(tmp)
            for entry in new_m.files:
                content = work / "new"
                _extract(ff, new_at[entry.path], entry, content, limits, open_new)
                old = old_files.get(entry.path)
                if old is None:
                    body.add(Payload(entry.path, content))
                    whole.append(entry.path)
                else:
                    base_file, patch = work / "old", work / "patch"
                    _extract(bf, old_at[old.path], old, base_file, limits)
                    with open(patch, "wb") as p:
                        make_patch(base_file, content, p, level, options.chunk_bytes)
                    body.add_frame(entry.path, patch, entry.size, entry.sha256,
                                   FileDelta(old.sha256, old.size, METHOD_ZSTD_PATCH))
                    patched.append(entry.path)
                    base_file.unlink()
                    patch.unlink()
                content.unlink()
            delta_m = replace(new_m, delta_base=DeltaBase(old_m.name, old_m.version,
                                                          old_m.sequence))
            tmp_out = out.with_name(f".{out.name}.tmp")
            with open(tmp_out, "wb") as o:
                final = body.write(o, delta_m, keys)
                o.flush()
                os.fsync(o.fileno())
            os.replace(tmp_out, out)
    return DeltaSummary(final, tuple(patched), tuple(whole), out.stat().st_size)


def check_base_bundle(base: Path, channel: str) -> Manifest:
    """The manifest of `base`, checked to be a full, unencrypted bundle of `channel` that a
    delta can be made against (before a build spends its time). Raises DeltaBaseError,
    BundleError subclasses, OSError."""
    with open(base, "rb") as f:
        m = _head(f)
    if m.name != channel:
        raise DeltaBaseError(f"--delta-from is a bundle of channel {m.name}, not {channel}")
    if m.delta_base is not None:
        raise DeltaBaseError("delta bundles are made from full bundles, not from deltas")
    if m.encryption is not None:
        raise DeltaBaseError(
            f"--delta-from {m.name} {m.version} is encrypted: give its unencrypted build"
        )
    return m


def _check_pair(new: Manifest, old: Manifest, encryption: Any) -> None:
    if old.encryption is not None:
        raise DeltaBaseError(
            f"--delta-from {old.name} {old.version} is encrypted: give its unencrypted build"
        )
    if new.encryption is not None and (encryption is None
                                       or encryption.info() != new.encryption):
        raise DeltaBaseError("the delta of an encrypted bundle needs the build's own encryption")
    if new.delta_base is not None or old.delta_base is not None:
        raise DeltaBaseError("delta bundles are made from full bundles, not from deltas")
    if old.name != new.name:
        raise DeltaBaseError(
            f"--delta-from is a bundle of channel {old.name}, not {new.name}"
        )
    if old.sequence >= new.sequence:
        raise DeltaBaseError(
            f"--delta-from is {old.name} {old.version} (sequence {old.sequence}), not older "
            f"than {new.version} (sequence {new.sequence})"
        )


def with_bases(verified: VerifiedBundle, bases: Mapping[str, Path]) -> VerifiedBundle:
    """`verified` with the base file of each of its delta payloads (path -> file), for
    `unpack_bundle`. Raises DeltaBaseError when a patched payload has no base in `bases`."""
    members = []
    for m in verified.members:
        if m.entry.delta is not None:
            if m.entry.path not in bases:
                raise DeltaBaseError(f"payload {m.entry.path} is a patch and has no base file")
            m = replace(m, base=bases[m.entry.path])
        members.append(m)
    return replace(verified, members=tuple(members))
