"""Attacks on the tar layout: flipped bytes, truncation, extra, missing and reordered members,
unsafe names, links, devices, and headers whose size lies."""

from __future__ import annotations

from pathlib import Path

import pytest

from satchel.bundles.errors import (
    MemberLayoutError,
    PayloadHashError,
    PayloadSizeError,
    TooLargeError,
    TruncatedBundleError,
    UnsafeMemberError,
)
from tests.factory.bundles import DEFAULT_PAYLOADS, BuiltBundle, build_test_bundle
from tests.factory.device import Device
from tests.factory.keys import Keyring
from tests.factory.spans import flip_byte, layout, span_of, truncate
from tests.factory.tar import (
    BLOCK,
    TarMember,
    drop_member,
    insert_member,
    lie_about_size,
    member_names,
    pack_members,
    read_members,
    rename_member,
    reorder_members,
    special_member,
    with_checksum,
)
from tests.factory.zstd_frames import zstd_frame

PAYLOAD_MEMBERS = [f"payload/{p}.zst" for p in DEFAULT_PAYLOADS]

# Where to flip one byte of a payload member, as (region, offset inside it or a named field).
FLIP_POINTS = [
    ("header", 0),  # first byte of the name
    ("header", 100),  # mode
    ("header", 124 + 10),  # last digit of the size field
    ("header", 136 + 5),  # mtime: not used, but covered by the checksum
    ("header", 148 + 2),  # a checksum digit
    ("header", 156),  # type flag
    ("header", 257),  # "ustar" magic
    ("header", 345),  # name prefix
    ("header", 511),  # last byte of the block
    ("data", 0),  # zstd magic number
    ("data", "middle"),
    ("data", -1),  # last byte: the frame's content checksum
    ("padding", 0),
    ("padding", -1),
]


def _offset(bundle: BuiltBundle, member: str, region: str, where: int | str) -> int:
    span = span_of(bundle.data, member, region)
    if where == "middle":
        return (span.start + span.stop) // 2
    assert isinstance(where, int)
    return span.start + where if where >= 0 else span.stop + where


@pytest.mark.parametrize("member", PAYLOAD_MEMBERS)
@pytest.mark.parametrize(("region", "where"), FLIP_POINTS)
def test_one_flipped_byte_in_a_payload_member_is_refused(
    bundle: BuiltBundle, device: Device, member: str, region: str, where: int | str
) -> None:
    expected = {"header": MemberLayoutError, "data": PayloadHashError, "padding": MemberLayoutError}
    offset = _offset(bundle, member, region, where)
    device.refuses(flip_byte(bundle.data, offset), expected[region])


@pytest.mark.parametrize("member", ["manifest.json", "manifest.sig"])
@pytest.mark.parametrize("region", ["header", "padding"])
def test_one_flipped_byte_around_the_signed_head_is_refused(
    bundle: BuiltBundle, device: Device, member: str, region: str
) -> None:
    span = span_of(bundle.data, member, region)
    for offset in (span.start, span.stop - 1):
        device.refuses(flip_byte(bundle.data, offset), MemberLayoutError)


@pytest.mark.parametrize("offset", [0, 1, BLOCK - 1, 2 * BLOCK - 1])
def test_one_flipped_byte_in_the_end_of_archive_marker_is_refused(
    bundle: BuiltBundle, device: Device, offset: int
) -> None:
    end = layout(bundle.data)[-1]
    device.refuses(flip_byte(bundle.data, end.start + offset), MemberLayoutError)


MEMBER_SPANS = [
    (member, region)
    for member in ["manifest.json", "manifest.sig", *PAYLOAD_MEMBERS]
    for region in ("header", "data", "padding")
]
CUT_POINTS = [
    pytest.param(member, region, where, id=f"{where}-of-{member}-{region}")
    for member, region in MEMBER_SPANS
    for where in ("start", "inside", "last")
] + [
    pytest.param("", "end", where, id=f"{where}-of-end-marker")
    for where in ("start", "inside", "second-block", "last")
]


def _cut_at(bundle: BuiltBundle, member: str, region: str, where: str) -> int:
    span = layout(bundle.data)[-1] if region == "end" else span_of(bundle.data, member, region)
    return {
        "start": span.start,
        "inside": (span.start + span.stop) // 2 - 1,
        "second-block": span.start + BLOCK,
        "last": span.stop - 1,
    }[where]


@pytest.mark.parametrize(("member", "region", "where"), CUT_POINTS)
def test_truncated_bundle_is_refused(
    bundle: BuiltBundle, device: Device, member: str, region: str, where: str
) -> None:
    err = device.refuses(truncate(bundle.data, _cut_at(bundle, member, region, where)),
                         TruncatedBundleError)
    assert "truncated" in str(err)


@pytest.mark.parametrize("at", [0, 1, BLOCK - 1], ids=["empty", "one-byte", "one-block-short"])
def test_bundle_truncated_near_its_start_is_refused(
    bundle: BuiltBundle, device: Device, at: int
) -> None:
    device.refuses(truncate(bundle.data, at), TruncatedBundleError)


def test_missing_payload_member_is_refused(bundle: BuiltBundle, device: Device) -> None:
    for member in PAYLOAD_MEMBERS:
        err = device.refuses(drop_member(bundle.data, member), MemberLayoutError)
        assert "payload/" in str(err)


@pytest.mark.parametrize("member", ["manifest.json", "manifest.sig"])
def test_missing_manifest_member_is_refused(
    bundle: BuiltBundle, device: Device, member: str
) -> None:
    device.refuses(drop_member(bundle.data, member), MemberLayoutError)


@pytest.mark.parametrize("index", [0, 1, 2, 3, None], ids=["0", "1", "2", "3", "end"])
def test_extra_member_is_refused(bundle: BuiltBundle, device: Device, index: int | None) -> None:
    extra = TarMember("payload/extra.bin.zst", zstd_frame(b"surprise"))
    device.refuses(insert_member(bundle.data, extra, index), MemberLayoutError)


def test_duplicated_payload_member_is_refused(bundle: BuiltBundle, device: Device) -> None:
    first = read_members(bundle.data)[2]
    device.refuses(insert_member(bundle.data, first, 3), MemberLayoutError)


@pytest.mark.parametrize(
    "order",
    [
        ["manifest.sig", "manifest.json", *PAYLOAD_MEMBERS],
        ["manifest.json", "manifest.sig", *reversed(PAYLOAD_MEMBERS)],
        ["manifest.json", "manifest.sig", PAYLOAD_MEMBERS[1], PAYLOAD_MEMBERS[0],
         PAYLOAD_MEMBERS[2]],
        [PAYLOAD_MEMBERS[0], "manifest.json", "manifest.sig", *PAYLOAD_MEMBERS[1:]],
    ],
    ids=["sig-first", "payloads-reversed", "two-payloads-swapped", "payload-first"],
)
def test_reordered_members_are_refused(
    bundle: BuiltBundle, device: Device, order: list[str]
) -> None:
    device.refuses(reorder_members(bundle.data, order), MemberLayoutError)


def test_payload_member_renamed_to_a_name_not_in_the_manifest_is_refused(
    bundle: BuiltBundle, device: Device
) -> None:
    renamed = rename_member(bundle.data, PAYLOAD_MEMBERS[0], "payload/model.bin.zst")
    device.refuses(renamed, MemberLayoutError)


TRAVERSAL_NAMES = [
    "../x",
    "/etc/x",
    "payload/../../x",
    "payload/../manifest.json",
    "./payload/model.onnx.zst",
    "payload//model.onnx.zst",
    "payload\\..\\..\\x",
    "payload/mod\nel.onnx.zst",
]


@pytest.mark.parametrize("name", TRAVERSAL_NAMES)
@pytest.mark.parametrize("placement", ["instead of a payload", "appended"])
def test_member_with_a_path_traversal_name_is_refused(
    bundle: BuiltBundle, device: Device, name: str, placement: str
) -> None:
    assert not Path("/etc/x").exists()
    if placement == "appended":
        hostile = insert_member(bundle.data, TarMember(name, zstd_frame(b"owned")))
    else:
        hostile = rename_member(bundle.data, PAYLOAD_MEMBERS[0], name)
    device.refuses(hostile, UnsafeMemberError)
    assert not Path("/etc/x").exists()
    assert not (device.tree.parent / "x").exists()


def test_member_name_that_is_not_utf8_is_refused(bundle: BuiltBundle, device: Device) -> None:
    hostile = rename_member(bundle.data, PAYLOAD_MEMBERS[0], b"payload/\xff.zst")
    device.refuses(hostile, UnsafeMemberError)


SPECIAL_KINDS = [
    ("symlink", "/etc/passwd"),
    ("symlink", "../../outside"),
    ("hardlink", "manifest.json"),
    ("hardlink", "/etc/shadow"),
    ("chardev", ""),
    ("blockdev", ""),
    ("fifo", ""),
    ("directory", ""),
    ("contiguous", ""),
    ("pax", ""),
    ("gnu-longname", ""),
]


@pytest.mark.parametrize(("kind", "target"), SPECIAL_KINDS)
@pytest.mark.parametrize("placement", ["instead of a payload", "appended"])
def test_link_device_fifo_and_directory_members_are_refused(
    bundle: BuiltBundle, device: Device, kind: str, target: str, placement: str
) -> None:
    if placement == "appended":
        hostile = insert_member(bundle.data, special_member("payload/extra.zst", kind, target))
    else:
        members = read_members(bundle.data)
        members[2] = special_member(PAYLOAD_MEMBERS[0], kind, target)
        hostile = pack_members(members)
    err = device.refuses(hostile, UnsafeMemberError)
    assert "not a regular file" in str(err)


def test_payload_header_claiming_more_bytes_than_signed_is_refused(
    bundle: BuiltBundle, device: Device
) -> None:
    size = bundle.manifest.files[0].compressed_size
    for lie in (size + 1, size + BLOCK, 8**11 - 1):
        device.refuses(lie_about_size(bundle.data, PAYLOAD_MEMBERS[0], lie), PayloadSizeError)


def test_payload_header_claiming_fewer_bytes_than_signed_is_refused(
    bundle: BuiltBundle, device: Device
) -> None:
    size = bundle.manifest.files[0].compressed_size
    for lie in (0, 1, size - 1):
        device.refuses(lie_about_size(bundle.data, PAYLOAD_MEMBERS[0], lie), PayloadSizeError)


def test_manifest_header_claiming_a_huge_size_is_refused_before_reading(
    bundle: BuiltBundle, device: Device
) -> None:
    hostile = lie_about_size(bundle.data, "manifest.json", 5 * 1024 * 1024)
    device.refuses(hostile, TooLargeError)


def test_manifest_header_claiming_fewer_bytes_is_refused(
    bundle: BuiltBundle, device: Device
) -> None:
    size = len(bundle.manifest_bytes)
    device.refuses(lie_about_size(bundle.data, "manifest.json", size - 1), MemberLayoutError)


@pytest.mark.parametrize("field", ["size", "checksum"])
def test_numeric_header_field_that_is_not_plain_octal_is_refused(
    bundle: BuiltBundle, device: Device, field: str
) -> None:
    # Python's int() reads "-1", "+5" and "0_1"; a tar reader must not.
    start = span_of(bundle.data, PAYLOAD_MEMBERS[0], "header").start
    block = bytearray(bundle.data[start : start + BLOCK])
    if field == "size":
        digits = block[124:135].decode()
        block[124:135] = ("0_" + digits[2:]).encode()
        block = bytearray(with_checksum(bytes(block)))
    else:
        digits = block[148:154].decode()
        block[148:156] = ("0_" + digits[1:]).encode() + b"\0"
    hostile = bundle.data[:start] + bytes(block) + bundle.data[start + BLOCK :]
    device.refuses(hostile, MemberLayoutError)


def test_negative_size_in_a_header_is_refused(bundle: BuiltBundle, device: Device) -> None:
    block = bytearray(bundle.data[:BLOCK])
    block[124:136] = b"-0000000001\0"
    hostile = with_checksum(bytes(block)) + bundle.data[BLOCK:]
    device.refuses(hostile, MemberLayoutError)


def test_archive_that_is_not_ustar_is_refused(bundle: BuiltBundle, device: Device) -> None:
    block = bytearray(bundle.data[:BLOCK])
    block[257:265] = b"ustar  \0"  # old GNU format
    device.refuses(with_checksum(bytes(block)) + bundle.data[BLOCK:], MemberLayoutError)


def test_data_after_the_end_of_archive_is_refused(bundle: BuiltBundle, device: Device) -> None:
    device.refuses(bundle.data + b"\0" * 100 + b"tail", MemberLayoutError)
    extra = TarMember("payload/late.zst", zstd_frame(b"late"))
    device.refuses(bundle.data + insert_member(b"", extra), MemberLayoutError)


def test_zero_record_padding_after_the_end_of_archive_is_accepted(
    bundle: BuiltBundle, device: Device
) -> None:
    # `tar -b20` and block devices pad archives with zeros to a record size.
    padded = bundle.data + b"\0" * (-len(bundle.data) % 10240)
    assert device.install(padded) == bundle.payloads


@pytest.mark.parametrize(
    "content",
    [b"", b"\0" * 4096, b"PK\x03\x04 not a tar at all" * 40, zstd_frame(b"x" * 5000)],
    ids=["empty", "zeros", "zip", "bare-zstd"],
)
def test_file_that_is_not_a_bundle_is_refused(device: Device, content: bytes) -> None:
    error = TruncatedBundleError if len(content) < BLOCK else MemberLayoutError
    device.refuses(content, error)


def test_honest_layout_is_what_the_spec_says(bundle: BuiltBundle, keys: Keyring) -> None:
    assert member_names(bundle.data) == ["manifest.json", "manifest.sig", *PAYLOAD_MEMBERS]
    assert len(bundle.data) % BLOCK == 0
    assert bundle.data.endswith(b"\0" * 2 * BLOCK)
    assert build_test_bundle(bundle.path.with_suffix(".2"), keys=keys).data == bundle.data
