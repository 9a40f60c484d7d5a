"""Writing bundles: compress every payload as one zstd frame, sign the manifest, lay out the tar.

Payloads are compressed once while their content sha256, their compressed sha256 and the
sha256 of every chunk of the compressed member (the chunk index a device checks in one read)
are computed in the same pass, on a worker beside zstd (`_MemberHasher`). The manifest must come
first but is known last, so the body goes either into a temporary file, copied in-kernel
behind the manifest at the end, or (`BundleBody(into=...)`) straight into the bundle file
behind room left for its head (`head_room`): the head then fills that room exactly, the
manifest.sig member padded with JSON whitespace, and nothing is copied. When the head does not
fit the room (or would need more padding than `MAX_SIG_PADDING`), the body is moved once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import zstandard

from satchel.bundles.canonical import encode_canonical
from satchel.bundles.chunkindex import ChunkHasher, chunk_size_for
from satchel.bundles.config import DEFAULT_LIMITS, DEFAULT_PACK, PackOptions
from satchel.bundles.cryptinfo import KEYS_MEMBER
from satchel.bundles.delta_manifest import FileDelta
from satchel.bundles.keys import SigningKey, sign_all
from satchel.bundles.manifest import FileEntry, Manifest, check_payload_path, member_name
from satchel.bundles.tarformat import BLOCK, END_OF_ARCHIVE, encode_header, padding

if TYPE_CHECKING:  # cryptography loads only for encrypted bundles
    from satchel.bundles.crypt import BundleEncryption

Progress = Callable[[int], None]
# manifest.sig padding (JSON whitespace) at most: half of what a reader accepts for the member
MAX_SIG_PADDING = DEFAULT_LIMITS.max_signatures_bytes // 2
IN_PLACE_MIN_BYTES = 4 * 1024 * 1024  # payload bytes from which `write_bundle` packs in place
# (below it, copying the body costs less than the room's padding weighs in a small bundle)
_HEAD_SLACK = 16 * 1024  # head room for what a manifest names besides its files' entries
_FILE_ENTRY_BYTES = 640  # a file entry's bytes in the manifest, besides its chunk index
_CHUNK_ENTRY_BYTES = 67  # one chunk's sha256 in the index: '"<64 hex digits>",'
_HASH_QUEUE_CHUNKS = 4  # source chunks (`PackOptions.chunk_bytes`) waiting to be hashed, at most


@dataclass(frozen=True)
class Pieces:
    """A payload's content made of byte ranges of a file, each at an offset of its own in the
    content, zeros in between and up to `size`: a file packed without ever being written (an
    ONNX external data file cut out of a single-file model, manager/external_data.py)."""

    file: Path
    pieces: tuple[tuple[int, int, int], ...]  # (start, end) in `file`, offset in the content
    size: int

    def chunks(self, step: int) -> Iterator[bytes]:
        """The content, at most `step` bytes at a time. Raises OSError, also when the file
        ends before a range does."""
        pos = 0
        with open(self.file, "rb") as f:
            for start, end, at in self.pieces:
                yield from _zeros(at - pos, step)
                pos = at
                f.seek(start)
                while start < end:
                    data = f.read(min(step, end - start))
                    if not data:
                        raise OSError(f"{self.file.name} ended at byte {start}, before {end}")
                    yield data
                    start += len(data)
                    pos += len(data)
        yield from _zeros(self.size - pos, step)


def _zeros(count: int, step: int) -> Iterator[bytes]:
    while count > 0:
        yield bytes(min(step, count))
        count -= step


@dataclass(frozen=True)
class Payload:
    """One file to put in a bundle: its path inside the bundle, and where its bytes are."""

    path: str
    source: Path | bytes | Pieces

    def size(self) -> int:
        if isinstance(self.source, bytes):
            return len(self.source)
        if isinstance(self.source, Pieces):
            return self.source.size
        return self.source.stat().st_size

    def chunks(self, step: int) -> Iterator[bytes]:
        """The content, at most `step` bytes at a time (bytes: in one). Raises OSError."""
        if isinstance(self.source, bytes):
            yield self.source
        elif isinstance(self.source, Pieces):
            yield from self.source.chunks(step)
        else:
            with open(self.source, "rb") as src:
                while chunk := src.read(step):
                    yield chunk


class _HashingSink:
    """A write-only file that hashes and counts what passes through it to `out`, and, given a
    `chunks` hasher, feeds it too (the member's chunk index)."""

    def __init__(self, out: BinaryIO, chunks: ChunkHasher | None) -> None:
        self.out = out
        self.sha = hashlib.sha256()
        self.count = 0
        self.chunks = chunks

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.count += len(data)
        if self.chunks is not None:
            self.chunks.update(data)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()


class _MemberHasher:
    """The hashes of one member and the writing of its compressed bytes, on a worker thread
    of their own, so that compressing (the caller's thread) overlaps them: zstd, hashlib and
    file writes all release the GIL. Takes the content (`content`) and the compressed bytes
    (`write`, a file for zstd to write to) in order; at most `max_bytes` wait for the worker
    at once (one item more when it is larger). `finish` waits for the worker, `close` stops it.

    Hashes and bytes are exactly those of the one-thread path: each stream is consumed in
    order by the one worker."""

    def __init__(self, out: BinaryIO, chunks: ChunkHasher | None, max_bytes: int) -> None:
        self.out = out
        self.sha = hashlib.sha256()  # of the compressed member
        self.content_sha = hashlib.sha256()
        self.count = 0  # compressed bytes
        self.chunks = chunks
        self._max_bytes = max_bytes
        self._items: deque[tuple[bool, bytes]] = deque()
        self._queued = 0
        self._done = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="satchel-pack-hash", daemon=True)
        self._thread.start()

    def write(self, data: bytes) -> int:
        data = bytes(data)  # a view of a buffer its writer reuses is copied
        self.count += len(data)
        self._put(True, data)
        return len(data)

    def flush(self) -> None:
        """Nothing to do: `finish` makes everything written reach the file."""

    def content(self, data: bytes) -> None:
        self._put(False, data)

    def _put(self, compressed: bool, data: bytes) -> None:
        with self._cond:
            while self._queued and self._queued + len(data) > self._max_bytes and (
                self._error is None
            ):
                self._cond.wait()
            if self._error is not None:
                raise self._error
            self._items.append((compressed, data))
            self._queued += len(data)
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._done:
                    self._cond.wait()
                if not self._items:
                    return
                compressed, data = self._items.popleft()
            try:
                if self._error is None and compressed:
                    self.sha.update(data)
                    if self.chunks is not None:
                        self.chunks.update(data)
                    self.out.write(data)
                elif self._error is None:
                    self.content_sha.update(data)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                self._error = e
            with self._cond:
                self._queued -= len(data)
                self._cond.notify_all()

    def finish(self) -> None:
        """Wait for everything given to be hashed and written. Re-raises a worker error."""
        self.close()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        with self._cond:
            self._done = True
            self._cond.notify_all()
        self._thread.join()


def index_chunk_size(payloads: list[Payload], options: PackOptions = DEFAULT_PACK) -> int | None:
    """The chunk size of the chunk index of a bundle of `payloads` (None: no index, when
    `options.index_chunk_bytes` is 0): 1 MiB unless the bundle is very large."""
    return chunk_size_for(sum(p.size() for p in payloads), options)


def head_room(sizes: list[int], chunk_size: int | None, extra: int = 0) -> int:
    """Bytes to leave before a body of payloads of `sizes` content bytes for the bundle's head
    (manifest.json, manifest.sig, keys.json as tar members): enough for a manifest whose
    files' chunk indexes cover the payloads uncompressed (zstd's worst case, about), plus
    `extra` bytes the caller knows the manifest names besides, in whole tar blocks."""
    chunks = 0
    if chunk_size:
        chunks = sum(-(-(size + (size >> 8) + BLOCK) // chunk_size) for size in sizes)
    room = (_HEAD_SLACK + extra + len(sizes) * _FILE_ENTRY_BYTES
            + chunks * _CHUNK_ENTRY_BYTES)
    return room + padding(room)


def in_place_room(sizes: list[int], chunk_size: int | None, extra: int = 0) -> int:
    """The room to pack a body of payloads of `sizes` in place behind (`head_room`), or 0 to
    pack it through a temporary file: below `IN_PLACE_MIN_BYTES`, copying costs less than the
    room's padding weighs in a small bundle."""
    if sum(sizes) < IN_PLACE_MIN_BYTES:
        return 0
    return head_room(sizes, chunk_size, extra)


def _member(name: str, data: bytes, mtime: int) -> bytes:
    return encode_header(name, len(data), mtime) + data + b"\0" * padding(len(data))


def _compress_member(
    payload: Payload,
    body: BinaryIO,
    options: PackOptions,
    mtime: int,
    progress: Progress | None,
    chunk_size: int | None = None,
    encryption: BundleEncryption | None = None,
) -> FileEntry:
    header_at = body.tell()
    body.write(b"\0" * BLOCK)
    size = payload.size()
    chunks = ChunkHasher(chunk_size) if chunk_size else None
    # Hashing and writing run on a worker beside zstd (`_MemberHasher`).
    sink = _MemberHasher(body, chunks, _HASH_QUEUE_CHUNKS * options.chunk_bytes)
    try:
        # Encrypted: the zstd frame is sealed in segments on its way to the hashing sink, so
        # the member's size, sha256 and chunk index are the ciphertext's (bundles/crypt.py).
        sealer = encryption.sealer(payload.path, sink) if encryption is not None else None
        cctx = zstandard.ZstdCompressor(
            level=options.zstd_level, threads=options.zstd_threads, write_checksum=True
        )
        with cctx.stream_writer(sealer or sink, size=size, closefd=False) as writer:  # type: ignore[arg-type]
            for chunk in payload.chunks(options.chunk_bytes):
                sink.content(chunk)
                writer.write(chunk)
                if progress:
                    progress(len(chunk))
        if sealer is not None:
            sealer.finish()
        sink.finish()
    finally:
        sink.close()
    content_sha = sink.content_sha
    body.write(b"\0" * padding(sink.count))
    end = body.tell()
    body.seek(header_at)
    body.write(encode_header(member_name(payload.path), sink.count, mtime))
    body.seek(end)
    return FileEntry(
        path=payload.path,
        size=size,
        sha256=content_sha.hexdigest(),
        compressed_size=sink.count,
        compressed_sha256=sink.sha.hexdigest(),
        chunk_size=chunk_size if chunks is not None else None,
        chunk_sha256=chunks.finish() if chunks is not None else (),
    )


def _write_member(out: BinaryIO, name: str, data: bytes, mtime: int) -> None:
    out.write(_member(name, data, mtime))


def _copy(src: BinaryIO, dst: BinaryIO, start: int = 0) -> None:
    """`src` from `start` to its end, appended to `dst`: in the kernel where it can."""
    src.flush()
    dst.flush()
    try:
        remaining = os.fstat(src.fileno()).st_size - start
        at = start
        while remaining > 0:
            n = os.copy_file_range(src.fileno(), dst.fileno(), remaining, at)
            if n == 0:
                break
            remaining -= n
            at += n
        dst.seek(0, os.SEEK_END)
    except (AttributeError, OSError, ValueError):
        src.seek(start)
        shutil.copyfileobj(src, dst, 4 * 1024 * 1024)


class BundleBody:
    """A bundle's payloads compressed one at a time, then laid out behind their signed
    manifest by `write`. `write_bundle` does both at once; a caller that still computes the
    manifest and its small payloads (`satchel bundle build` runs the model meanwhile)
    compresses the big ones first, on another thread.

    The body goes into a temporary file, or with `into` (the bundle file itself, empty and
    seekable) and a `room` (`in_place_room`; 0: the temporary file) straight into it `room`
    bytes from its start, where `write` puts the head when `out` is that same file."""

    def __init__(
        self,
        mtime: int,
        chunk_size: int | None,
        options: PackOptions = DEFAULT_PACK,
        tmp_dir: Path | None = None,
        encryption: BundleEncryption | None = None,
        *,
        into: BinaryIO | None = None,
        room: int = 0,
    ) -> None:
        """`mtime` of every tar member (the manifest's creation time); `chunk_size` of the
        chunk index (`index_chunk_size`, None for none); `encryption` to encrypt every
        payload (bundles/crypt.py). Raises OSError, ValueError for a room that is not whole
        tar blocks."""
        self._encryption = encryption
        self._mtime = mtime
        self._chunk_size = chunk_size
        self._options = options
        if room < 0 or room % BLOCK:
            raise ValueError(f"head room of {room} bytes is not whole tar blocks")
        if into is None or room == 0:
            self._file: BinaryIO = tempfile.TemporaryFile(dir=tmp_dir)  # noqa: SIM115
            self._start = 0
            into = None
        else:
            self._file = into
            self._start = room
            into.seek(room)
        self._into = into
        self.entries: list[FileEntry] = []

    def add(self, payload: Payload, progress: Progress | None = None) -> FileEntry:
        """Compress `payload` behind those added before. Raises WrongTypeError for an unsafe
        path, ValueError for a name too long for ustar, OSError."""
        check_payload_path(payload.path, DEFAULT_LIMITS)
        entry = _compress_member(
            payload, self._file, self._options, self._mtime, progress, self._chunk_size,
            self._encryption,
        )
        self.entries.append(entry)
        return entry

    def add_frame(self, path: str, frame: Path, size: int, sha256: str,
                  delta: FileDelta | None = None) -> FileEntry:
        """Add a zstd frame made elsewhere (a delta's patch, bundles/delta.py) as the member
        of payload `path`, whose content is `size` bytes with `sha256`. Raises as `add`."""
        check_payload_path(path, DEFAULT_LIMITS)
        header_at = self._file.tell()
        self._file.write(b"\0" * BLOCK)
        chunks = ChunkHasher(self._chunk_size) if self._chunk_size else None
        sink = _HashingSink(self._file, chunks)
        sealer = self._encryption.sealer(path, sink) if self._encryption is not None else None
        with open(frame, "rb") as src:
            while data := src.read(self._options.chunk_bytes):
                (sealer or sink).write(data)
        if sealer is not None:
            sealer.finish()
        self._file.write(b"\0" * padding(sink.count))
        end = self._file.tell()
        self._file.seek(header_at)
        self._file.write(encode_header(member_name(path), sink.count, self._mtime))
        self._file.seek(end)
        entry = FileEntry(path, size, sha256, sink.count, sink.sha.hexdigest(),
                          chunk_size=self._chunk_size if chunks is not None else None,
                          chunk_sha256=chunks.finish() if chunks is not None else (),
                          delta=delta)
        self.entries.append(entry)
        return entry

    def write(self, out: BinaryIO, manifest: Manifest, keys: list[SigningKey]) -> Manifest:
        """Sign `manifest` with the entries added, in their order, and write the bundle to
        `out`; return the final manifest. Raises ManifestError, ValueError without keys,
        OSError."""
        if not keys:
            raise ValueError("at least one signing key is needed")
        final = manifest.with_files(self.entries)
        if self._encryption is not None:
            final = replace(final, encryption=self._encryption.info())
        final.check_references()
        Manifest.from_dict(final.to_dict())  # the same validation a device will run
        manifest_bytes = final.to_bytes()
        sigs = encode_canonical([s.to_dict() for s in sign_all(manifest_bytes, keys)])
        manifest_member = _member("manifest.json", manifest_bytes, self._mtime)
        keys_member = b""
        if self._encryption is not None:  # the wrapped data keys, outside what is signed
            key_file = self._encryption.key_file().to_bytes()
            keys_member = _member(KEYS_MEMBER, key_file, self._mtime)
        if self._into is not None and out is self._into:
            end = self._file.seek(0, os.SEEK_END)
            sig_room = self._start - len(manifest_member) - len(keys_member) - BLOCK
            if len(sigs) <= sig_room <= len(sigs) + MAX_SIG_PADDING:
                # the room filled exactly: the signatures padded with JSON whitespace
                sig_member = _member("manifest.sig", sigs.ljust(sig_room, b" "), self._mtime)
                out.write(END_OF_ARCHIVE)
                out.seek(0)
                out.write(manifest_member + sig_member + keys_member)
                out.seek(end + len(END_OF_ARCHIVE))
                out.flush()
                return final
            self._move_body_after(out, manifest_member + _member("manifest.sig", sigs,
                                  self._mtime) + keys_member)
        else:
            out.write(manifest_member)
            _write_member(out, "manifest.sig", sigs, self._mtime)
            out.write(keys_member)
            _copy(self._file, out, self._start)
        out.write(END_OF_ARCHIVE)
        out.flush()
        return final

    def _move_body_after(self, out: BinaryIO, head: bytes) -> None:
        """The body, written into `out` behind room its head does not fit, moved to right
        behind `head` (once, through a temporary file beside it)."""
        out.flush()
        with tempfile.TemporaryFile(dir=_folder_of(out)) as body:
            _copy(out, body, self._start)
            out.seek(0)
            out.truncate()
            out.write(head)
            _copy(body, out)

    def close(self) -> None:
        if self._into is None:  # the bundle file itself is its opener's to close
            self._file.close()

    def __enter__(self) -> BundleBody:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _folder_of(f: BinaryIO) -> str | None:
    name = getattr(f, "name", None)
    return os.path.dirname(os.path.abspath(name)) if isinstance(name, str) else None


def write_bundle(
    out: BinaryIO,
    manifest: Manifest,
    payloads: list[Payload],
    keys: list[SigningKey],
    options: PackOptions = DEFAULT_PACK,
    progress: Progress | None = None,
    tmp_dir: Path | None = None,
    encryption: BundleEncryption | None = None,
) -> Manifest:
    """Write a signed bundle to `out` (a real, writable file) and return its final manifest.

    `manifest.files` is replaced by the entries measured here, in the order of `payloads`,
    each with its chunk index unless `options.index_chunk_bytes` is 0.
    Raises ManifestError if the finished manifest is invalid (for example a model naming a
    file that is not among the payloads) or a payload path is unsafe (WrongTypeError),
    ValueError without keys or for a name too long for ustar, OSError.
    """
    if not keys:
        raise ValueError("at least one signing key is needed")
    for p in payloads:
        check_payload_path(p.path, DEFAULT_LIMITS)
    mtime = int(manifest.created.timestamp())
    chunk_size = index_chunk_size(payloads, options)
    into, room = None, 0
    if _seekable(out) and out.tell() == 0:  # the body straight into `out`, behind its head
        into = out
        room = in_place_room([p.size() for p in payloads], chunk_size,
                             len(manifest.to_bytes()))
    with BundleBody(mtime, chunk_size, options, tmp_dir, encryption, into=into,
                    room=room) as body:
        for p in payloads:
            body.add(p, progress)
        return body.write(out, manifest, keys)


def _seekable(f: BinaryIO) -> bool:
    try:
        return f.seekable()
    except (AttributeError, OSError, ValueError):
        return False
