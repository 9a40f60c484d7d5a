"""A strict POSIX ustar subset: regular-file members only, exactly what `tar -xf` reads.

We write and read our own headers rather than using `tarfile`, so that the reader accepts
only what the writer produces and refuses links, devices, directories and extensions.
"""

from __future__ import annotations

from dataclasses import dataclass

from satchel.bundles.errors import MemberLayoutError, TruncatedBundleError, UnsafeMemberError

BLOCK = 512
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)
_MAGIC = b"ustar\x0000"
_OCTAL_SIZE_MAX = 8**11 - 1
_TYPE_NAMES = {
    b"1": "hard link",
    b"2": "symbolic link",
    b"3": "character device",
    b"4": "block device",
    b"5": "directory",
    b"6": "FIFO",
    b"7": "contiguous file",
    b"x": "pax extended header",
    b"g": "pax global header",
    b"L": "GNU long name",
    b"K": "GNU long link",
}


@dataclass(frozen=True)
class MemberHeader:
    name: str
    size: int


def padding(size: int) -> int:
    """Bytes of zero padding after `size` bytes of member data."""
    return -size % BLOCK


def _octal(value: int, width: int) -> bytes:
    return f"{value:0{width - 1}o}".encode("ascii") + b"\0"


def _size_field(size: int) -> bytes:
    if size <= _OCTAL_SIZE_MAX:
        return _octal(size, 12)
    # GNU base-256 for members of 8 GiB and more, read by GNU tar and bsdtar.
    return bytes([0x80]) + size.to_bytes(11, "big")


def _split_name(name: str) -> tuple[bytes, bytes]:
    raw = name.encode("utf-8")
    if len(raw) <= 100:
        return raw, b""
    cut = raw.rfind(b"/", 0, 156)
    while cut > 0 and len(raw) - cut - 1 > 100:
        cut = raw.rfind(b"/", 0, cut)
    if cut <= 0:
        raise ValueError(f"member name too long for ustar: {name!r}")
    return raw[cut + 1 :], raw[:cut]


def encode_header(name: str, size: int, mtime: int) -> bytes:
    """A ustar header block for a regular file member."""
    short, prefix = _split_name(name)
    block = bytearray(BLOCK)
    block[0 : len(short)] = short
    block[100:108] = _octal(0o644, 8)
    block[108:116] = _octal(0, 8)
    block[116:124] = _octal(0, 8)
    block[124:136] = _size_field(size)
    block[136:148] = _octal(max(0, mtime), 12)
    block[148:156] = b" " * 8
    block[156:157] = b"0"
    block[257:265] = _MAGIC
    block[345 : 345 + len(prefix)] = prefix
    block[148:156] = f"{sum(block):06o}".encode("ascii") + b"\0 "
    return bytes(block)


def _parse_number(field: bytes, what: str) -> int:
    if field and field[0] & 0x80:
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" ")
    # int() alone would also read "-1", "+7" and "0_7", which no tar writer produces.
    if text.strip(b"01234567"):
        raise MemberLayoutError(f"bundle has a corrupt tar header ({what})")
    return int(text or b"0", 8)


def _cstring(field: bytes) -> str:
    raw = field.split(b"\0", 1)[0]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UnsafeMemberError("bundle member name is not valid UTF-8") from e


def check_member_name(name: str) -> None:
    """Refuse names that could escape a directory. Raises UnsafeMemberError."""
    parts = name.split("/")
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or any(p in ("", ".", "..") for p in parts)
        or any(ord(c) < 32 for c in name)
    ):
        raise UnsafeMemberError(f"bundle member {name[:80]!r} has an unsafe path")


def decode_header(block: bytes) -> MemberHeader:
    """Parse one header block of a regular-file member.

    Raises TruncatedBundleError (short block), MemberLayoutError (corrupt header) and
    UnsafeMemberError (links, devices, directories, unsafe names).
    """
    if len(block) < BLOCK:
        raise TruncatedBundleError("bundle file is truncated (ends inside a tar header)")
    stored = _parse_number(block[148:156], "checksum")
    computed = sum(block[:148]) + 8 * 32 + sum(block[156:BLOCK])
    if stored != computed:
        raise MemberLayoutError("bundle has a corrupt tar header (checksum mismatch)")
    if block[257:265] != _MAGIC:
        raise MemberLayoutError("bundle is not a POSIX ustar archive")
    prefix = _cstring(block[345:500])
    short = _cstring(block[0:100])
    name = f"{prefix}/{short}" if prefix else short
    typeflag = block[156:157]
    if typeflag not in (b"0", b"\0"):
        kind = _TYPE_NAMES.get(typeflag, f"type {typeflag!r}")
        raise UnsafeMemberError(f"bundle member {name[:80]!r} is a {kind}, not a regular file")
    check_member_name(name)
    return MemberHeader(name=name, size=_parse_number(block[124:136], "size"))
