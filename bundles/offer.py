"""The offer: what a device is told to install, and where it fetches the bundle from.

The manager's check-in answer lists offers (`install`), the agent's LAN client reads them
back with `Offer.from_dict`, and a USB plan's `Assignment` (`bundles/plan.py`) is an offer to
the devices it names, whose bundle is a file on the stick. The device checks the bundle it
gets against the offer (size, sha256, then the manifest's channel, version and sequence).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from satchel.bundles.errors import OfferError
from satchel.bundles.identifiers import SHA256_RE


@dataclass(frozen=True)
class Fallback:
    """The full bundle behind an offer of a delta bundle (docs/DELTAS.md): what the device
    installs instead when it cannot apply the delta."""

    bundle_sha256: str
    size: int
    url: str

    def to_dict(self) -> dict[str, Any]:
        return {"bundle_sha256": self.bundle_sha256, "size": self.size, "url": self.url}

    @classmethod
    def from_dict(cls, d: Any) -> Fallback:
        out = cls(str(d["bundle_sha256"]), _int(d["size"]), str(d["url"]))
        if not SHA256_RE.fullmatch(out.bundle_sha256) or out.size < 0:
            raise ValueError("a fallback with a bad sha256 or size")
        return out


@dataclass(frozen=True)
class Offer:
    """One release of one channel to install, named by its bundle file's sha256 and size."""

    channel: str
    version: str
    sequence: int
    bundle_sha256: str
    size: int  # bytes of the bundle file
    url: str  # where the bundle is: a path on the manager (LAN), a file on the stick (USB)
    deployment_id: int | None = None  # the deployment it is part of, if any
    # where the manager may redirect the download (scheme://host[:port]; its object store
    # when it hands out pre-signed URLs): the device follows a redirect to these alone
    origins: tuple[str, ...] = ()
    fallback: Fallback | None = None  # set when the bundle offered is a delta bundle

    def to_dict(self) -> dict[str, Any]:
        """The offer as an entry of a check-in answer's `install` list."""
        out = {
            "channel": self.channel,
            "version": self.version,
            "sequence": self.sequence,
            "bundle_sha256": self.bundle_sha256,
            "size": self.size,
            "url": self.url,
            "deployment_id": self.deployment_id,
        }
        if self.origins:
            out["origins"] = list(self.origins)
        if self.fallback is not None:
            out["fallback"] = self.fallback.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: Any) -> Offer:
        """An entry of a check-in answer's `install` list. Names are taken as strings (the
        manifest is checked against them before anything is installed); the sha256 and the
        size must be usable. Raises OfferError, whose message names the fault."""
        try:
            offer = cls(
                channel=str(d["channel"]),
                version=str(d["version"]),
                sequence=_int(d["sequence"]),
                bundle_sha256=str(d["bundle_sha256"]),
                size=_int(d["size"]),
                url=str(d["url"]),
                deployment_id=None if d.get("deployment_id") is None
                else _int(d["deployment_id"]),
                origins=_origins(d.get("origins")),
                fallback=None if d.get("fallback") is None
                else Fallback.from_dict(d["fallback"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise OfferError(f"a malformed install entry ({e})") from e
        if not SHA256_RE.fullmatch(offer.bundle_sha256) or offer.size < 0:
            raise OfferError("an install entry with a bad sha256 or size")
        return offer


def origin_of(url: str) -> str:
    """scheme://host[:port] of an http(s) URL, lowercase; "" when it has none."""
    split = urlsplit(url)
    if split.scheme.lower() not in ("http", "https") or not split.hostname:
        return ""
    return f"{split.scheme}://{split.netloc.rpartition('@')[2]}".lower()


def _origins(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("'origins' is not a list of strings")
    for v in value:
        if origin_of(v) != v.lower().rstrip("/"):
            raise ValueError(f"{v[:80]!r} is not an origin (scheme://host[:port])")
    return tuple(v.lower().rstrip("/") for v in value)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is not an integer")
    return value
