"""The body is packed straight into the bundle file behind room left for its head, which the
signatures fill with JSON whitespace; a head that outgrows its room, or would leave too much
of it to fill, moves the body once instead. Every path writes a bundle a device installs."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest

from satchel.bundles.canonical import decode_json
from satchel.bundles.errors import MalformedJSONError
from satchel.bundles.pack import (
    IN_PLACE_MIN_BYTES,
    MAX_SIG_PADDING,
    BundleBody,
    Payload,
    head_room,
    write_bundle,
)
from satchel.bundles.tarformat import BLOCK, padding
from tests.factory.bundles import TEST_PACK, default_manifest
from tests.factory.device import Device
from tests.factory.keys import Keyring
from tests.factory.spans import flip_byte, layout
from tests.factory.tar import read_members

PAYLOADS = {
    "model.onnx": random.Random(7).randbytes(300_000),
    "smoke/inputs.npz": b"inputs " * 40,
    "smoke/reference.npz": b"reference " * 30,
}


def _write(path: Path, keys: Keyring, room: int) -> bytes:
    manifest = default_manifest("vision", "1.0.0", 1, list(PAYLOADS))
    with open(path, "w+b") as f, BundleBody(
        int(manifest.created.timestamp()), 64 * 1024, TEST_PACK, into=f, room=room
    ) as body:
        for name, data in PAYLOADS.items():
            body.add(Payload(name, data))
        body.write(f, manifest, keys.signing_keys)
    return path.read_bytes()


def _signatures(data: bytes) -> bytes:
    return next(m.data for m in read_members(data) if m.name == "manifest.sig")


def test_head_fills_its_room_and_the_bundle_installs(
    tmp_path: Path, keys: Keyring, device: Device
) -> None:
    room = head_room([len(d) for d in PAYLOADS.values()], 64 * 1024)
    data = _write(tmp_path / "b.satchel", keys, room)

    members = read_members(data)
    head = sum(BLOCK + len(m.data) + padding(len(m.data)) for m in members[:2])
    assert head == room  # the body stayed where it was packed
    sig = _signatures(data)
    assert sig.endswith(b" ") and len(decode_json(sig, "manifest.sig")) == 1
    assert device.install(data) == PAYLOADS


@pytest.mark.parametrize("room", [BLOCK * 2, BLOCK * 2 + MAX_SIG_PADDING + 64 * BLOCK],
                         ids=["head outgrows the room", "room too large to fill"])
def test_body_moves_once_behind_a_head_that_does_not_fit_its_room(
    tmp_path: Path, keys: Keyring, device: Device, room: int
) -> None:
    data = _write(tmp_path / "b.satchel", keys, room)

    assert not _signatures(data).endswith(b" ")  # the plain layout, no fill
    assert [m.name for m in read_members(data)][:2] == ["manifest.json", "manifest.sig"]
    assert device.install(data) == PAYLOADS


def test_one_flipped_byte_in_the_signatures_whitespace_fill_is_refused(
    tmp_path: Path, keys: Keyring, device: Device
) -> None:
    room = head_room([len(d) for d in PAYLOADS.values()], 64 * 1024)
    data = _write(tmp_path / "b.satchel", keys, room)
    sig = next(s for s in layout(data) if s.member == "manifest.sig" and s.region == "data")
    fill = sig.start + len(data[sig.start:sig.stop].rstrip(b" "))
    assert fill < sig.stop
    for offset in (fill, sig.stop - 1):
        device.refuses(flip_byte(data, offset), MalformedJSONError)


def test_write_bundle_packs_a_large_body_in_place_and_a_small_one_through_a_copy(
    tmp_path: Path, keys: Keyring, device: Device
) -> None:
    manifest = default_manifest("vision", "1.0.0", 1, ["model.onnx"])
    for size, padded in ((IN_PLACE_MIN_BYTES, True), (IN_PLACE_MIN_BYTES - 1, False)):
        payload = random.Random(size).randbytes(size)
        path = tmp_path / f"{size}.satchel"
        with open(path, "wb") as f:
            write_bundle(f, manifest, [Payload("model.onnx", payload)], keys.signing_keys,
                         TEST_PACK)
        data = path.read_bytes()
        assert _signatures(data).endswith(b" ") is padded
        assert device.install(data) == {"model.onnx": payload}


def test_room_that_is_not_whole_tar_blocks_is_refused(tmp_path: Path) -> None:
    with open(tmp_path / "b.satchel", "w+b") as f, pytest.raises(ValueError, match="tar blocks"):
        BundleBody(0, None, TEST_PACK, into=f, room=BLOCK + 1)


class _Pipe(io.RawIOBase):
    """A write-only stream that cannot seek, like a pipe or a socket."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.data += b
        return len(b)


def test_write_bundle_to_a_stream_that_cannot_seek_writes_the_plain_layout(
    keys: Keyring, device: Device
) -> None:
    pipe = _Pipe()
    manifest = default_manifest("vision", "1.0.0", 1, list(PAYLOADS))
    write_bundle(pipe, manifest, [Payload(p, d) for p, d in PAYLOADS.items()],  # type: ignore[arg-type]
                 keys.signing_keys, TEST_PACK)

    assert not _signatures(bytes(pipe.data)).endswith(b" ")
    assert device.install(bytes(pipe.data)) == PAYLOADS
