"""The offer: what a device is told to install, and where it fetches the bundle from.

The manager's check-in answer lists offers (`install`), the agent's LAN client reads them
back with `Offer.from_dict`, and a USB plan's `Assignment` (`bundles/plan.py`) is an offer to
the devices it names, whose bundle is a file on the stick. The device checks the bundle it
gets against the offer (size, sha256, then the manifest's channel, version and sequence).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from satchel.bundles.errors import OfferError
from satchel.bundles.identifiers import SHA256_RE


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

    def to_dict(self) -> dict[str, Any]:
        """The offer as an entry of a check-in answer's `install` list."""
        return {
            "channel": self.channel,
            "version": self.version,
            "sequence": self.sequence,
            "bundle_sha256": self.bundle_sha256,
            "size": self.size,
            "url": self.url,
            "deployment_id": self.deployment_id,
        }

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
            )
        except (KeyError, TypeError, ValueError) as e:
            raise OfferError(f"a malformed install entry ({e})") from e
        if not SHA256_RE.fullmatch(offer.bundle_sha256) or offer.size < 0:
            raise OfferError("an install entry with a bad sha256 or size")
        return offer


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is not an integer")
    return value
