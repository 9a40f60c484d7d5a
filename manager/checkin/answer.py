"""The answer to a check-in: what the device should install, the trust root, when to call again.

`offers` decides from the device's released targets and what its channels run; it is the same
for the fast and the full path, and reads nothing from the database.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from satchel.bundles.offer import Offer
from satchel.manager.services.bundles import download_url
from satchel.manager.services.deltas import DeltaLookup, choose
from satchel.manager.services.deployments import ACTIVE, OFFERED, ChannelReport, DeviceTarget


@dataclass(frozen=True)
class CheckinResult:
    """A recorded check-in: what to tell the device, and how it was recorded."""

    device_id: str
    offers: tuple[Offer, ...]
    trust_root_version: int | None
    events_recorded: int
    events_duplicate: int
    state_applied: bool  # False when a newer state had already been recorded
    fast: bool = False  # recorded by the fast path (see fast.py)

    def to_dict(self, poll_interval_s: float, now: datetime) -> dict[str, Any]:
        version = self.trust_root_version
        return {
            "device_id": self.device_id,
            "install": [o.to_dict() for o in self.offers],
            "trust": {
                "version": version,
                "root_url": "/api/v1/trust/root.json",
                "version_url": "/api/v1/trust/roots/{version}.json",
            },
            "poll_interval_s": round(poll_interval_s, 3),
            "events": {"recorded": self.events_recorded, "duplicate": self.events_duplicate},
            "server_time": now.isoformat(),
        }


def jittered(interval_s: float, jitter: float, rng: random.Random | None = None) -> float:
    """`interval_s` spread by +/- `jitter` (a fraction) so a fleet does not poll in step."""
    r = (rng or random).uniform(-jitter, jitter)
    return interval_s * (1 + r)


def offers(
    targets: list[DeviceTarget], channels: dict[str, ChannelReport],
    deltas: DeltaLookup | None = None,
) -> tuple[Offer, ...]:
    """What a device running `channels` should install: per channel, the newest bundle of an
    active deployment that released it to the device, if newer than what runs; its delta
    instead when `deltas` has one against a release the device keeps (services/deltas.py)."""
    best: dict[str, Offer] = {}
    ids: dict[str, int] = {}  # channel -> the offered bundle's id
    for dt in targets:
        if dt.deployment_state != ACTIVE or dt.state not in OFFERED:
            continue
        b = dt.bundle
        running = channels.get(b.name)
        if (
            running
            and running.active_sequence is not None
            and running.active_sequence >= b.sequence
        ):
            continue
        if running and (running.candidate_sequence or -1) >= b.sequence:
            continue  # in its shadow stage or ramp there: not offered again
        if b.name not in best or best[b.name].sequence < b.sequence:
            ids[b.name] = b.id
            best[b.name] = Offer(
                b.name, b.version, b.sequence, b.sha256, b.size, download_url(b.sha256),
                dt.deployment_id,
            )
    if deltas is not None:
        for name, offer in best.items():
            kept = channels[name].kept if name in channels else ()
            best[name] = choose(offer, ids[name], kept, deltas, download_url)
    return tuple(best[name] for name in sorted(best))
