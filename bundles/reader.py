"""Reading bundles: nothing reaches the decompressor before its signed hash has checked out.

`verify_bundle` checks the manifest signatures against the trust root, expiry and the member
layout. Payloads are then authenticated one of two ways:
- one read (`defer_payloads=True`, what a device does): a member that carries a chunk index
  in the signed manifest is not read by `verify_bundle`; `unpack_bundle` reads it once, chunk
  by chunk, and hands each chunk to the decompressor only after its sha256 matched the index;
- two reads (bundles without an index, and the default): `verify_bundle` hashes every
  compressed member (and checks its chunk index, if any), then `unpack_bundle` reads it again.
Either way `unpack_bundle` decompresses in bounded steps while hashing the content, refuses
the moment output passes the declared size, and writes only inside an empty target directory,
which it empties again on any refusal.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import zstandard

from satchel.bundles.canonical import decode_json
from satchel.bundles.chunkindex import IndexedChunks, chunk_count, chunk_mismatch
from satchel.bundles.config import DEFAULT_LIMITS, Limits
from satchel.bundles.envelope import check_threshold
from satchel.bundles.errors import (
    ExpiredError,
    MemberLayoutError,
    PayloadHashError,
    PayloadSizeError,
    StagingError,
    TooLargeError,
    TruncatedBundleError,
)
from satchel.bundles.keys import Signature, parse_signatures
from satchel.bundles.manifest import FileEntry, Manifest, member_name, parse_manifest
from satchel.bundles.tarformat import BLOCK, MemberHeader, decode_header, padding
from satchel.bundles.timeutil import format_time
from satchel.bundles.trust import Root

if TYPE_CHECKING:
    from satchel.bundles.crypt import KeyFile, OpenPayload
    from satchel.bundles.recipients import Identity

Progress = Callable[[int], None]
_MAX_TRAILING_ZEROS = 1024 * 1024  # bytes of zero record padding tolerated after the end


@dataclass(frozen=True)
class Member:
    entry: FileEntry
    offset: int  # byte offset of the compressed data in the bundle file
    # True: the whole compressed member was hashed by verify_bundle. False: it was not read
    # yet, and each chunk is checked against the signed chunk index as it is unpacked.
    hashed: bool = True
    # A delta payload (entry.delta): the base file its patch applies to, set by the device
    # (bundles/delta.with_bases); None: not a patch, or no base given.
    base: Path | None = None


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose manifest is signed by a threshold of trusted keys and whose compressed
    members all match the manifest, or (members not `hashed`) are checked chunk by chunk
    against its signed chunk index as they are unpacked. Its payloads are not yet
    decompressed."""

    manifest: Manifest
    manifest_bytes: bytes
    signatures: tuple[Signature, ...]
    signers: frozenset[str]
    members: tuple[Member, ...]
    # An encrypted bundle (manifest.encryption): its keys.json, and the data key once a
    # recipient has unlocked it (agent/install/decrypt.py, bundles/crypt.unlock).
    keys: KeyFile | None = None
    data_key: bytes | None = field(default=None, repr=False)


def _read_exact(f: BinaryIO, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise TruncatedBundleError(f"bundle file is truncated (ends inside {what})")
    return data


def _skip_padding(f: BinaryIO, size: int, what: str) -> None:
    """Read the zero padding after `size` bytes of member data. Raises FormatError."""
    if _read_exact(f, padding(size), what).strip(b"\0"):
        raise MemberLayoutError(f"bundle has non-zero tar padding after {what}")


def _next_header(f: BinaryIO) -> MemberHeader | None:
    """The next member header, or None at the end-of-archive marker."""
    block = f.read(BLOCK)
    if len(block) < BLOCK:
        raise TruncatedBundleError("bundle file is truncated (no end-of-archive marker)")
    if block == b"\0" * BLOCK:
        return None
    return decode_header(block)


def _read_small_member(f: BinaryIO, name: str, limit: int) -> bytes:
    header = _next_header(f)
    if header is None:
        raise MemberLayoutError(f"bundle has no {name} member")
    if header.name != name:
        raise MemberLayoutError(f"bundle member {header.name[:80]!r} found where {name} must be")
    if header.size > limit:
        raise TooLargeError(f"{name} is too large ({header.size} bytes > {limit})")
    data = _read_exact(f, header.size, name)
    _skip_padding(f, header.size, name)
    return data


def read_head(f: BinaryIO, limits: Limits = DEFAULT_LIMITS) -> tuple[bytes, list[Signature]]:
    """Read manifest.json and manifest.sig from the start of `f`, without trusting them.

    Raises FormatError subclasses and SignatureError (malformed signature list).
    """
    manifest_bytes = _read_small_member(f, "manifest.json", limits.max_manifest_bytes)
    sig_bytes = _read_small_member(f, "manifest.sig", limits.max_signatures_bytes)
    sigs = parse_signatures(decode_json(sig_bytes, "manifest.sig"), limits.max_signatures)
    return manifest_bytes, sigs


def read_unverified(
    f: BinaryIO, limits: Limits = DEFAULT_LIMITS
) -> tuple[Manifest, list[Signature]]:
    """Parse the manifest and signatures with no trust check, for `bundle inspect`."""
    manifest_bytes, sigs = read_head(f, limits)
    return parse_manifest(manifest_bytes, limits), sigs


def check_expiry(manifest: Manifest, now: datetime, not_before: datetime | None = None) -> None:
    """Refuse an expired manifest. `not_before` is the newest signed time this device has
    seen, used when its clock cannot be trusted. Raises ExpiredError."""
    if manifest.expires is None:
        return
    if now >= manifest.expires:
        raise ExpiredError(
            f"bundle {manifest.name} {manifest.version} expired at {format_time(manifest.expires)}"
        )
    if not_before is not None and manifest.expires <= not_before:
        raise ExpiredError(
            f"bundle {manifest.name} {manifest.version} expired at "
            f"{format_time(manifest.expires)}, before {format_time(not_before)}, "
            "the newest signed time this device has seen"
        )


def _hash_member(f: BinaryIO, entry: FileEntry, limits: Limits, progress: Progress | None) -> None:
    """Hash the compressed member at the position of `f` (and each chunk of its index, if it
    has one) against the manifest. Raises PayloadHashError, TruncatedBundleError."""
    sha = hashlib.sha256()
    step = entry.chunk_size or limits.chunk_bytes
    remaining = entry.compressed_size
    buf = bytearray(min(step, remaining))
    view = memoryview(buf)
    for index in range(chunk_count(entry.compressed_size, step)):
        want = min(step, remaining)
        n = f.readinto(view[:want])  # type: ignore[attr-defined]
        if n != want:
            raise TruncatedBundleError(f"bundle file is truncated (ends inside {entry.path})")
        sha.update(view[:n])
        if entry.indexed and hashlib.sha256(view[:n]).hexdigest() != entry.chunk_sha256[index]:
            raise chunk_mismatch(entry, index)
        remaining -= n
        if progress:
            progress(n)
    if sha.hexdigest() != entry.compressed_sha256:
        raise PayloadHashError(
            f"payload {entry.path} does not match its signed hash (altered or corrupted)"
        )
    _skip_padding(f, entry.compressed_size, entry.path)


def _skip_member(f: BinaryIO, entry: FileEntry, file_size: int) -> None:
    """Step over a member whose chunks are checked as it is unpacked; check its padding."""
    end = f.tell() + entry.compressed_size
    if end > file_size:
        raise TruncatedBundleError(f"bundle file is truncated (ends inside {entry.path})")
    f.seek(end)
    _skip_padding(f, entry.compressed_size, entry.path)


def _check_end(f: BinaryIO) -> None:
    header = _next_header(f)
    if header is not None:
        raise MemberLayoutError(f"bundle has an unexpected extra member {header.name[:80]!r}")
    if _read_exact(f, BLOCK, "the end-of-archive marker") != b"\0" * BLOCK:
        raise MemberLayoutError("bundle has data after the end-of-archive marker")
    tail = f.read(_MAX_TRAILING_ZEROS + 1)
    if len(tail) > _MAX_TRAILING_ZEROS or tail.strip(b"\0"):
        raise MemberLayoutError("bundle has data after the end-of-archive marker")


def verify_bundle(
    f: BinaryIO,
    root: Root,
    now: datetime,
    *,
    not_before: datetime | None = None,
    limits: Limits = DEFAULT_LIMITS,
    progress: Progress | None = None,
    defer_payloads: bool = False,
) -> VerifiedBundle:
    """Verify a bundle read from the seekable binary file `f` without decompressing it.

    Checks, in order: the first two members; a threshold of the trust root's signing keys
    over manifest.json; the manifest's validity and expiry; each payload member's name,
    order, size and compressed sha256 (and chunk index); nothing after the last member.
    With `defer_payloads`, members that have a chunk index are not read here (only their
    headers and padding): `unpack_bundle` or `check_payloads` checks each chunk as it reads
    it, so the bundle is read once. Members without an index are hashed here either way.
    Raises a FormatError, TrustError or PayloadError subclass (all BundleError).
    """
    file_size = f.seek(0, os.SEEK_END)
    f.seek(0)
    manifest_bytes, sigs = read_head(f, limits)
    signers = check_threshold(
        manifest_bytes, sigs, root.signing_keys(), root.signing_role, "bundle manifest"
    )
    manifest = parse_manifest(manifest_bytes, limits)
    check_expiry(manifest, now, not_before)
    keys = read_keys(f, limits) if manifest.encryption is not None else None
    expected = {member_name(e.path) for e in manifest.files}
    members: list[Member] = []
    for entry in manifest.files:
        header = _next_header(f)
        want = member_name(entry.path)
        if header is None:
            raise MemberLayoutError(f"bundle is missing member {want!r}")
        if header.name != want:
            why = "is out of order" if header.name in expected else "is not in the manifest"
            raise MemberLayoutError(f"bundle member {header.name[:80]!r} {why}")
        if header.size != entry.compressed_size:
            raise PayloadSizeError(
                f"payload {entry.path} is {header.size} bytes compressed, "
                f"the manifest says {entry.compressed_size}"
            )
        deferred = defer_payloads and entry.indexed
        members.append(Member(entry, f.tell(), hashed=not deferred))
        if deferred:
            _skip_member(f, entry, file_size)
        else:
            _hash_member(f, entry, limits, progress)
    _check_end(f)
    return VerifiedBundle(
        manifest, manifest_bytes, tuple(sigs), frozenset(signers), tuple(members), keys
    )


def read_keys(f: BinaryIO, limits: Limits = DEFAULT_LIMITS) -> KeyFile:
    """keys.json, the member after manifest.sig in an encrypted bundle. Raises FormatError,
    WrappedKeyError."""
    from satchel.bundles.crypt import KeyFile
    from satchel.bundles.cryptinfo import KEYS_MEMBER, MAX_KEYS_BYTES

    return KeyFile.from_bytes(_read_small_member(f, KEYS_MEMBER, MAX_KEYS_BYTES))


def _opener(verified: VerifiedBundle) -> OpenPayload | None:
    """How to read the plaintext of the payloads of `verified` (None: not encrypted).
    Raises DecryptionError when it is encrypted and no recipient unlocked it."""
    info = verified.manifest.encryption
    if info is None:
        return None
    from satchel.bundles.crypt import no_key, opener

    if verified.data_key is None:
        raise no_key(f"bundle {verified.manifest.name} {verified.manifest.version}")
    return opener(info, verified.data_key)


class _Bounded:
    """A read-only view of `length` bytes of `f` from its current position."""

    def __init__(self, f: BinaryIO, length: int) -> None:
        self.f = f
        self.remaining = length

    def read(self, n: int = -1) -> bytes:
        if self.remaining <= 0:
            return b""
        n = self.remaining if n < 0 else min(n, self.remaining)
        data = self.f.read(n)
        self.remaining -= len(data)
        return data


def _open_dir_in(dir_fd: int, parts: list[str], create: bool) -> int:
    """Open the directory `parts` under `dir_fd` (creating what is missing if `create`),
    following no link."""
    parent = os.dup(dir_fd)
    try:
        for part in parts:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=parent)
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
            os.close(parent)
            parent = child
        return parent
    except BaseException:
        os.close(parent)
        raise


def _open_in(dir_fd: int, rel: str, mode: int = 0o644) -> int:
    """Create the parents of `rel` under `dir_fd` and the file itself; return its fd."""
    parts = rel.split("/")
    parent = _open_dir_in(dir_fd, parts[:-1], create=True)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        return os.open(parts[-1], flags, mode, dir_fd=parent)
    finally:
        os.close(parent)


def _fsync_dirs(dir_fd: int, paths: list[str]) -> None:
    """Make the entries of every directory under `dir_fd` that holds one of `paths`
    durable, deepest first, each once, then `dir_fd` itself."""
    dirs = {tuple(p.split("/")[:depth]) for p in paths for depth in range(1, p.count("/") + 1)}
    for parts in sorted(dirs, key=len, reverse=True):
        fd = _open_dir_in(dir_fd, list(parts), create=False)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.fsync(dir_fd)


class _HashingSinkThread:
    """Hash and hand chunks to `sink` on a worker thread, so that decompression (this thread)
    overlaps hashing and writing (both release the GIL). At most `depth` chunks are queued."""

    def __init__(self, sink: Callable[[bytes], None], depth: int) -> None:
        self.sha = hashlib.sha256()
        self._sink = sink
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="satchel-unpack", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            if self._error is not None:
                continue
            try:
                self.sha.update(chunk)
                self._sink(chunk)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                self._error = e

    def put(self, chunk: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(chunk)

    def finish(self) -> str:
        """Wait for the queued chunks; return the hex digest. Re-raises a worker error."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.sha.hexdigest()


def _decompress_member(
    f: BinaryIO,
    member: Member,
    dctx: zstandard.ZstdDecompressor,
    limits: Limits,
    sink: Callable[[bytes], None],
    progress: Progress | None,
    open_payload: OpenPayload | None = None,
) -> None:
    """Stream one member through zstd into `sink`, bounded by and checked against the manifest
    (through `open_payload` first, when the member is ciphertext)."""
    entry = member.entry
    f.seek(member.offset)
    written = 0
    source: Any = _Bounded(f, entry.compressed_size) if member.hashed else IndexedChunks(f, entry)
    if open_payload is not None:  # authenticated ciphertext in, zstd frame out
        source = open_payload(entry.path, entry.compressed_size, source)
    reader: Any
    if entry.delta is not None:  # a patch: the base file is its prefix (bundles/delta.py)
        from satchel.bundles.delta import open_patch

        reader = open_patch(source, entry, member.base, entry.chunk_size or limits.chunk_bytes)
    else:
        reader = dctx.stream_reader(
            source,  # a read() is all it uses
            read_size=entry.chunk_size or limits.chunk_bytes,
            read_across_frames=True,
        )
    worker = _HashingSinkThread(sink, limits.pipeline_chunks)
    try:
        while True:
            try:
                chunk = reader.read(limits.chunk_bytes)
            except zstandard.ZstdError as e:
                raise PayloadHashError(
                    f"payload {entry.path} is not a valid zstd stream: {e}"
                ) from e
            if not chunk:
                break
            written += len(chunk)
            if written > entry.size:
                raise PayloadSizeError(
                    f"payload {entry.path} decompresses to more than its declared "
                    f"{entry.size} bytes (refused)"
                )
            worker.put(chunk)
            if progress:
                progress(len(chunk))
    finally:
        digest = worker.finish()
        if entry.delta is not None:
            reader.close()  # unmaps the base
    if written != entry.size:
        raise PayloadSizeError(
            f"payload {entry.path} decompresses to {written} bytes, declared {entry.size}"
        )
    if digest != entry.sha256:
        raise PayloadHashError(f"payload {entry.path} content does not match its signed hash")


def _write_all(fd: int, writeback_bytes: int) -> Callable[[bytes], None]:
    """A sink writing to `fd` that starts writeback of every `writeback_bytes` it has written,
    so the disk works while we decompress and the final fsync has little left to do."""
    state = {"written": 0, "flushed": 0}

    def write(chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]
        state["written"] += len(chunk)
        pending = state["written"] - state["flushed"]
        if writeback_bytes and pending >= writeback_bytes:
            with contextlib.suppress(OSError, AttributeError):
                os.posix_fadvise(fd, state["flushed"], pending, os.POSIX_FADV_DONTNEED)
            state["flushed"] = state["written"]

    return write


def _unpack_member(
    f: BinaryIO,
    member: Member,
    dir_fd: int,
    dctx: zstandard.ZstdDecompressor,
    limits: Limits,
    fsync: bool,
    progress: Progress | None,
    open_payload: OpenPayload | None = None,
) -> None:
    # The plaintext of an encrypted bundle is readable by the device's user only.
    fd = _open_in(dir_fd, member.entry.path, 0o644 if open_payload is None else 0o600)
    try:
        _decompress_member(
            f,
            member,
            dctx,
            limits,
            _write_all(fd, limits.writeback_bytes if fsync else 0),
            progress,
            open_payload,
        )
        if fsync:
            os.fsync(fd)  # its directory entry is made durable with the others, at the end
    finally:
        os.close(fd)


def check_payloads(
    f: BinaryIO,
    verified: VerifiedBundle,
    *,
    limits: Limits = DEFAULT_LIMITS,
    progress: Progress | None = None,
) -> None:
    """Decompress every payload and check its size and sha256 (and, for members that
    `verify_bundle` deferred, each chunk against the signed index first), writing nothing.

    Raises PayloadError subclasses, TruncatedBundleError.
    """
    dctx = zstandard.ZstdDecompressor(max_window_size=limits.max_window_bytes)
    open_payload = _opener(verified)
    for member in verified.members:
        if member.entry.delta is not None and member.base is None:  # a patch, no base here:
            if not member.hashed:  # its member's hashes are all that can be checked
                f.seek(member.offset)
                _hash_member(f, member.entry, limits, progress)
            continue
        _decompress_member(f, member, dctx, limits, lambda _chunk: None, progress, open_payload)


def _open_empty_dir(target: Path) -> int:
    """Open `target` if it is a real, empty directory. Raises StagingError."""
    try:
        dir_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as e:
        raise StagingError(f"cannot open staging directory {target}: {e.strerror}") from e
    try:
        entries = os.listdir(dir_fd)
    except OSError as e:
        os.close(dir_fd)
        raise StagingError(f"cannot list staging directory {target}: {e.strerror}") from e
    if entries:
        os.close(dir_fd)
        raise StagingError(f"staging directory {target} is not empty")
    return dir_fd


def _clear(target: Path) -> None:
    for child in target.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                child.unlink()


def unpack_bundle(
    f: BinaryIO,
    verified: VerifiedBundle,
    target: Path,
    *,
    fsync: bool = True,
    limits: Limits = DEFAULT_LIMITS,
    progress: Progress | None = None,
) -> None:
    """Decompress every payload of a verified bundle into the empty directory `target`.

    Members that `verify_bundle` deferred are read once, each chunk checked against the
    signed chunk index before it is decompressed. Output of each payload is bounded by its
    declared size and checked against its signed sha256. On any error everything written into
    `target` is removed again.
    Raises PayloadError subclasses, TruncatedBundleError, StagingError (target unusable or a
    write failed).
    """
    dir_fd = _open_empty_dir(target)  # before the clean-up below: what is there is not ours
    try:
        dctx = zstandard.ZstdDecompressor(max_window_size=limits.max_window_bytes)
        open_payload = _opener(verified)
        for member in verified.members:
            _unpack_member(f, member, dir_fd, dctx, limits, fsync, progress, open_payload)
        if fsync:
            _fsync_dirs(dir_fd, [m.entry.path for m in verified.members])
    except OSError as e:
        _clear(target)
        raise StagingError(f"cannot write to staging directory {target}: {e.strerror}") from e
    except BaseException:
        _clear(target)
        raise
    finally:
        os.close(dir_fd)


def verify_and_unpack(
    path: Path,
    root: Root,
    target: Path,
    now: datetime,
    *,
    not_before: datetime | None = None,
    limits: Limits = DEFAULT_LIMITS,
    fsync: bool = True,
    identities: Sequence[Identity] = (),
) -> VerifiedBundle:
    """Verify the bundle file at `path` against `root` and unpack it into `target`, reading
    it once when its members carry a chunk index (twice otherwise). An encrypted bundle is
    unlocked by one of `identities` (X25519 private keys) and decrypted as it streams.

    Raises as `verify_bundle` and `unpack_bundle`; TruncatedBundleError if `path` cannot be
    read.
    """
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as e:
        raise TruncatedBundleError(f"cannot read bundle {path}: {e.strerror}") from e
    with f:
        verified = verify_bundle(
            f, root, now, not_before=not_before, limits=limits, defer_payloads=True
        )
        if verified.manifest.encryption is not None:
            from satchel.bundles.crypt import unlock_bundle

            verified = unlock_bundle(verified, identities)
        unpack_bundle(f, verified, target, fsync=fsync, limits=limits)
    return verified
