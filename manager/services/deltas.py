"""Delta bundles in the manager (docs/DELTAS.md): stored beside their full counterpart, and
offered instead of it to a device that reports keeping the base release.

A delta is linked to the full bundle of the same channel, version and sequence, which must be
stored first and carry the same content (every file's size and sha256): both are signed, so
a device gets the same release either way. Deployments name the full bundle; a check-in
offer swaps in the delta for a device whose status lists the base among its kept releases,
and a USB export carries both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
import sqlalchemy.orm as so

from satchel.bundles.delta_manifest import PlanDelta
from satchel.bundles.manifest import Manifest
from satchel.bundles.offer import Fallback, Offer
from satchel.manager.errors import ConflictError
from satchel.manager.models import Bundle, BundleDelta

MAX_KEPT = 16  # kept releases a channel's status may list (a device keeps 3)


@dataclass(frozen=True)
class DeltaRef:
    """What an offer needs of a delta."""

    sha256: str
    size: int
    base_version: str
    base_sequence: int


DeltaLookup = Callable[[int], Sequence[DeltaRef]]  # full bundle id -> its deltas


def link(session: so.Session, m: Manifest, sha256: str, size: int,
         now: datetime) -> tuple[Bundle, BundleDelta]:
    """Record the verified delta bundle `m` (file `sha256`, `size` bytes) against its full
    counterpart. Raises ConflictError (no full bundle of that release, other content, or a
    delta of that base already stored)."""
    assert m.delta_base is not None
    what = f"delta bundle {m.name} {m.version}"
    full = session.scalar(sa.select(Bundle).where(Bundle.name == m.name,
                                                  Bundle.version == m.version))
    if full is None or full.sequence != m.sequence:
        raise ConflictError(f"{what} has no full bundle of that release here: add the full "
                            "bundle first")
    files = {f["path"]: (f["size"], f["sha256"]) for f in full.manifest.get("files", [])}
    if files != {f.path: (f.size, f.sha256) for f in m.files}:
        raise ConflictError(f"{what} does not carry the same files as its full bundle "
                            f"{full.sha256[:12]}")
    base = m.delta_base
    clash = session.scalar(sa.select(BundleDelta).where(
        BundleDelta.bundle_id == full.id, BundleDelta.base_sequence == base.sequence))
    if clash is not None:
        raise ConflictError(f"{what} against {base.describe()} is already stored "
                            f"({clash.sha256[:12]})")
    delta = BundleDelta(sha256=sha256, bundle_id=full.id, base_version=base.version,
                        base_sequence=base.sequence, size=size, uploaded_at=now,
                        manifest=m.to_dict())
    try:
        with session.begin_nested():
            session.add(delta)
    except sa.exc.IntegrityError as e:
        raise ConflictError(f"{what} was added at the same time") from e
    return full, delta


_T = BundleDelta.__table__
# a full bundle's deltas, newest base first (the check-in's fast path runs it on its cursor)
DELTAS_OF = (
    sa.select(_T.c.sha256, _T.c.size, _T.c.base_version, _T.c.base_sequence)
    .where(_T.c.bundle_id == sa.bindparam("bundle_id"))
    .order_by(_T.c.base_sequence.desc())
)


def delta_refs(rows: Sequence[Sequence[Any]]) -> list[DeltaRef]:
    return [DeltaRef(r[0], r[1], r[2], r[3]) for r in rows]


def deltas_of(db: so.Session | sa.Connection, bundle_id: int) -> list[DeltaRef]:
    """The deltas of a full bundle, newest base first."""
    return delta_refs(list(db.execute(DELTAS_OF, {"bundle_id": bundle_id})))


def plan_deltas(db: so.Session, bundle_id: int) -> tuple[PlanDelta, ...]:
    """The deltas of a full bundle as a USB plan assignment lists them."""
    return tuple(PlanDelta(d.base_version, d.base_sequence, d.sha256, d.size)
                 for d in deltas_of(db, bundle_id))


def summary(full: Bundle, delta: BundleDelta, download_url: str) -> dict[str, Any]:
    """A stored delta as `bundle add` and the API show it."""
    return {
        "sha256": delta.sha256, "name": full.name, "version": full.version,
        "sequence": full.sequence, "size": delta.size,
        "uploaded_at": delta.uploaded_at.isoformat(),
        "delta_of": full.sha256,
        "delta_base": {"version": delta.base_version, "sequence": delta.base_sequence},
        "download_url": download_url,
    }


@dataclass(frozen=True)
class DeltaView:
    """A delta bundle read as its full bundle for who may fetch it (`id`: the full one's, so
    a deployment of the full bundle lets its devices fetch the delta), its own file and size."""

    id: int
    sha256: str
    name: str
    version: str
    sequence: int
    size: int
    created_at: datetime
    uploaded_at: datetime
    manifest: dict[str, Any]


def as_bundle(session: so.Session, sha256: str) -> DeltaView | None:
    """The stored delta with file `sha256` as a DeltaView, None if there is none."""
    delta = session.scalar(sa.select(BundleDelta).where(BundleDelta.sha256 == sha256))
    if delta is None:
        return None
    full = session.get(Bundle, delta.bundle_id)
    if full is None:
        return None
    return DeltaView(full.id, delta.sha256, full.name, full.version, full.sequence, delta.size,
                     full.created_at, delta.uploaded_at, delta.manifest)


def choose(offer: Offer, bundle_id: int, kept: Sequence[int], lookup: DeltaLookup | None,
           url_of: Callable[[str], str]) -> Offer:
    """`offer` of a full bundle, or of its delta against a release the device keeps."""
    if lookup is None or not kept:
        return offer
    for d in lookup(bundle_id):
        if d.base_sequence in kept and d.base_sequence < offer.sequence:
            return replace(offer, bundle_sha256=d.sha256, size=d.size, url=url_of(d.sha256),
                           fallback=Fallback(offer.bundle_sha256, offer.size, offer.url))
    return offer


def kept_sequences(value: Any) -> tuple[int, ...]:
    """The sequences of a channel status's `releases` (the kept releases, active first);
    () when absent or not a list of {version, sequence}. Raises ValueError when too long."""
    if not isinstance(value, list):
        return ()
    if len(value) > MAX_KEPT:
        raise ValueError(f"lists more than {MAX_KEPT} kept releases")
    out = []
    for r in value:
        seq = r.get("sequence") if isinstance(r, dict) else None
        if isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq < 2**63:
            out.append(seq)
    return tuple(out)
