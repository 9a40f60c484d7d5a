"""Tar members by hand: a small ustar encoder and parser of our own, so that tests can write
what the Satchel reader must refuse (links, devices, lying sizes, unsafe names) without going
through the code under test, and edit an honest archive member by member."""

from __future__ import annotations

from dataclasses import dataclass, replace

BLOCK = 512  # bytes of a tar block

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
