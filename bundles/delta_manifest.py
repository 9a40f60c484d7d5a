"""The signed fields of a delta bundle (docs/DELTAS.md): the release it patches, and per
patched payload the base file and the patch method.

A delta bundle's manifest is its full counterpart's, plus `delta_base` (the channel, version
and sequence of the release its patches apply to) and, on each patched file entry, `delta`
(the base file's content sha256 and size, and the method). A file entry's `size` and
`sha256` stay those of the file's content, so a device checks a patched file exactly as an
unpacked one; its member (`compressed_size`, `compressed_sha256`, chunk index) is the patch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from satchel.bundles.errors import WrongTypeError
from satchel.bundles.identifiers import CHANNEL_RE, SHA256_RE, VERSION_RE
from satchel.bundles.schema import check_keys, get_int, get_str

# One zstd frame decompressed with the base file as its prefix: what `zstd -d
# --patch-from=BASE` reads, so stock tools reproduce the content.
METHOD_ZSTD_PATCH = "zstd-patch-from"
DELTA_METHODS = (METHOD_ZSTD_PATCH,)
# The first agent release that installs delta bundles and reads plans that list them; the
# manager leaves deltas off a USB plan when a device on it last reported an older agent.
DELTA_MIN_AGENT = "0.3.0"


@dataclass(frozen=True)
class DeltaBase:
    """The release a delta bundle's patches apply to."""

    channel: str
    version: str
    sequence: int

    @classmethod
    def from_dict(cls, d: Any) -> DeltaBase:
        w = "manifest delta_base"
        check_keys(d, w, {"channel", "version", "sequence"})
        return cls(
            channel=get_str(d, "channel", w, CHANNEL_RE),
            version=get_str(d, "version", w, VERSION_RE),
            sequence=get_int(d, "sequence", w),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"channel": self.channel, "version": self.version, "sequence": self.sequence}

    def describe(self) -> str:
        return f"{self.version} (sequence {self.sequence})"


@dataclass(frozen=True)
class FileDelta:
    """How one payload is rebuilt: its patch applied to the base release's file of the same
    path, whose content is `base_size` bytes with sha256 `base_sha256`."""

    base_sha256: str
    base_size: int
    method: str = METHOD_ZSTD_PATCH

    @classmethod
    def from_dict(cls, d: Any, where: str, max_bytes: int) -> FileDelta:
        w = f"{where} delta"
        check_keys(d, w, {"base_sha256", "base_size", "method"})
        method = get_str(d, "method", w)
        if method not in DELTA_METHODS:
            raise WrongTypeError(f"{w}: unknown patch method {method[:30]!r}")
        return cls(
            base_sha256=get_str(d, "base_sha256", w, SHA256_RE),
            base_size=get_int(d, "base_size", w, 0, max_bytes),
            method=method,
        )

    def to_dict(self) -> dict[str, Any]:
        return {"base_sha256": self.base_sha256, "base_size": self.base_size,
                "method": self.method}


def check_delta_fields(name: str, sequence: int, base: DeltaBase | None,
                       patched: bool) -> None:
    """A manifest's delta fields agree: patched files need a base release of the same channel
    and a lower sequence. Raises WrongTypeError."""
    if patched and base is None:
        raise WrongTypeError("manifest has patched files but no 'delta_base'")
    if base is None:
        return
    if base.channel != name:
        raise WrongTypeError(f"manifest delta_base is channel {base.channel!r}, not {name!r}")
    if base.sequence >= sequence:
        raise WrongTypeError(
            f"manifest delta_base sequence {base.sequence} is not below the bundle's {sequence}"
        )


@dataclass(frozen=True)
class PlanDelta:
    """A USB plan assignment's delta bundle (bundles/plan.py): the file on the stick to use
    instead of the full one by a device that keeps the base release; the full one stays the
    fallback."""

    base_version: str
    base_sequence: int
    bundle_sha256: str
    size: int  # bytes of the delta bundle file

    @classmethod
    def from_dict(cls, d: Any) -> PlanDelta:
        w = "plan assignment delta"
        check_keys(d, w, {"base_version", "base_sequence", "bundle_sha256", "size"})
        return cls(
            base_version=get_str(d, "base_version", w, VERSION_RE),
            base_sequence=get_int(d, "base_sequence", w),
            bundle_sha256=get_str(d, "bundle_sha256", w, SHA256_RE),
            size=get_int(d, "size", w, 0, 2**62),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"base_version": self.base_version, "base_sequence": self.base_sequence,
                "bundle_sha256": self.bundle_sha256, "size": self.size}
