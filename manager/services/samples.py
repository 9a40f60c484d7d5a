"""Hard examples brought home: the captures devices keep where a candidate release tripped
(`bundles/captures.py`), stored once by sha256, listed, and exported per channel and release.

A capture comes over the LAN (`POST /api/v1/devices/{id}/samples`) or on a USB stick (listed
in the device's signed report); both end in `store`. Each device keeps at most
`max_samples_per_device` (its oldest dropped), so no device can fill the database.

`export` stacks the captures of one channel and release into the file `satchel bundle build
--samples` reads (SPEC "Samples"): one array per model input keyed by input name, the feeds
stacked on one more leading axis, plus one row of meta per feed (device, reason, figures).
Captures of differing shapes are refused in one line naming the shapes (they would not stack,
and a model takes one shape per input): filter them with `--device` or `--reason`.
"""

from __future__ import annotations

import functools
import hashlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

import numpy as np
import sqlalchemy as sa
import sqlalchemy.orm as so

from satchel.bundles.captures import REASONS, Capture, decode_capture
from satchel.bundles.errors import CaptureError
from satchel.bundles.identifiers import CHANNEL_RE, SHA256_RE, VERSION_RE
from satchel.bundles.timeutil import format_time
from satchel.manager.errors import InvalidRequestError, NotFoundError, RequestTooLargeError
from satchel.manager.models import Device, Sample
from satchel.manager.stick_samples import StickSamples


class Runner(Protocol):
    """What runs a unit of work in one transaction (`manager.db.Database`)."""

    def run(self, work: Callable[[so.Session], T]) -> T: ...

T = TypeVar("T")
MAX_LIST = 10_000  # rows of one listing
MAX_EXPORT = 100_000  # captures in one export
MAX_EXPORT_BYTES = 512 * 1024 * 1024  # bytes of the stored captures one export reads


@dataclass(frozen=True)
class Stored:
    """The outcome of `store`: the capture's sha256, and whether it is new here."""

    sha256: str
    created: bool
    dropped: int = 0  # the device's oldest captures dropped to stay within its cap


@dataclass
class Export:
    """One channel and release's captures, stacked: `inputs` for `--samples`, `rows` of meta."""

    channel: str
    version: str
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def npz_bytes(self) -> bytes:
        """The `.npz` (no pickles) `satchel bundle build --samples` reads."""
        out = io.BytesIO()
        np.savez(out, allow_pickle=False, **self.inputs)
        return out.getvalue()

    def sidecar(self) -> dict[str, Any]:
        """Per-row meta, in the order of the stacked feeds."""
        return {"channel": self.channel, "version": self.version, "count": len(self.rows),
                "rows": self.rows}


def check_upload(data: bytes, declared_sha256: str | None, max_bytes: int) -> Capture:
    """Decode an uploaded capture. Raises RequestTooLargeError over `max_bytes`,
    InvalidRequestError for a bad capture or a sha256 header that does not match."""
    if len(data) > max_bytes:
        raise RequestTooLargeError(f"a capture file is at most {max_bytes} bytes")
    if declared_sha256 is not None:
        if SHA256_RE.fullmatch(declared_sha256) is None:
            raise InvalidRequestError("X-Satchel-Sample-SHA256 must be 64 lower-case hex digits")
        if hashlib.sha256(data).hexdigest() != declared_sha256:
            raise InvalidRequestError("the capture's sha256 differs from X-Satchel-Sample-SHA256")
    try:
        return decode_capture(data, max_bytes)
    except CaptureError as e:
        raise InvalidRequestError(f"bad capture: {e}") from e


def store(
    session: so.Session,
    device_id: str,
    data: bytes,
    capture: Capture,
    via: str,
    now: datetime,
    keep: int,
) -> Stored:
    """Store a decoded capture for `device_id` once (by sha256); keep the device's newest
    `keep`. Raises NotFoundError for an unknown device."""
    if session.get(Device, device_id) is None:
        raise NotFoundError(f"no device {device_id!r}")
    sha = hashlib.sha256(data).hexdigest()
    if session.scalar(sa.select(Sample.id).where(Sample.sha256 == sha)) is not None:
        return Stored(sha, created=False)
    session.add(
        Sample(
            device_id=device_id, channel=capture.channel, version=capture.version,
            sequence=capture.sequence, reason=capture.reason, sha256=sha, size=len(data),
            captured_at=capture.captured_at, received_at=now, via=via, data=data,
        )
    )
    session.flush()
    return Stored(sha, created=True, dropped=_drop_oldest(session, device_id, keep))


def store_from_stick(
    db: Runner, now: datetime, keep: int, max_bytes: int, found: StickSamples
) -> tuple[int, list[tuple[str, str]]]:
    """Decode and store the checked captures of one stick report, one transaction each:
    (how many were new, refusals as (file, why)). `db` is the manager's `Database`."""
    stored, refused = 0, []
    for sha, data in found.found:
        rel = f"reports/{found.device_id}/samples/{sha}.npz"
        try:
            capture = decode_capture(data, max_bytes)
        except CaptureError as e:
            refused.append((rel, f"bad capture: {e}"))
            continue
        try:
            work = functools.partial(
                _store_in, device_id=found.device_id, data=data, capture=capture, now=now, keep=keep
            )
            done = db.run(work)
        except sa.exc.IntegrityError:
            continue  # stored at the same moment by another import
        stored += done.created
    return stored, refused


def _store_in(
    session: so.Session, *, device_id: str, data: bytes, capture: Capture, now: datetime, keep: int
) -> Stored:
    return store(session, device_id, data, capture, "usb", now, keep)


def _drop_oldest(session: so.Session, device_id: str, keep: int) -> int:
    """Delete the device's captures beyond its newest `keep`; how many went."""
    beyond = (
        sa.select(Sample.id)
        .where(Sample.device_id == device_id)
        .order_by(Sample.captured_at.desc(), Sample.id.desc())
        .offset(keep)
    )
    ids = list(session.scalars(beyond))
    if ids:
        session.execute(sa.delete(Sample).where(Sample.id.in_(ids)))
    return len(ids)


def _filtered(
    channel: str | None,
    version: str | None,
    reasons: Sequence[str] = (),
    devices: Sequence[str] = (),
) -> sa.Select[Sample]:
    if channel is not None and CHANNEL_RE.fullmatch(channel) is None:
        raise InvalidRequestError(f"{channel[:40]!r} is not a channel name")
    if version is not None and VERSION_RE.fullmatch(version) is None:
        raise InvalidRequestError(f"{version[:40]!r} is not a version")
    for reason in reasons:
        if reason not in REASONS:
            raise InvalidRequestError(f"reason must be one of {', '.join(REASONS)}, not {reason!r}")
    query = sa.select(Sample)
    if channel is not None:
        query = query.where(Sample.channel == channel)
    if version is not None:
        query = query.where(Sample.version == version)
    if reasons:
        query = query.where(Sample.reason.in_(list(reasons)))
    if devices:
        query = query.where(Sample.device_id.in_(list(devices)))
    return query.order_by(Sample.captured_at, Sample.id)


def summary(sample: Sample) -> dict[str, Any]:
    """A stored capture as the API and `samples list --json` show it (without its bytes)."""
    return {
        "sha256": sample.sha256,
        "device_id": sample.device_id,
        "channel": sample.channel,
        "version": sample.version,
        "sequence": sample.sequence,
        "reason": sample.reason,
        "size": sample.size,
        "captured_at": format_time(sample.captured_at),
        "received_at": format_time(sample.received_at),
        "via": sample.via,
    }


def list_samples(
    session: so.Session,
    channel: str | None = None,
    version: str | None = None,
    reasons: Sequence[str] = (),
    devices: Sequence[str] = (),
    limit: int = 1000,
) -> list[dict[str, Any]]:
    """Stored captures, oldest first. Raises InvalidRequestError for a bad filter."""
    query = _filtered(channel, version, reasons, devices).limit(min(limit, MAX_LIST))
    return [summary(s) for s in session.scalars(query)]


def counts(session: so.Session) -> list[dict[str, Any]]:
    """Captures per channel, release and reason."""
    query = (
        sa.select(Sample.channel, Sample.version, Sample.reason, sa.func.count())
        .group_by(Sample.channel, Sample.version, Sample.reason)
        .order_by(Sample.channel, Sample.version, Sample.reason)
    )
    rows = session.execute(query)
    return [{"channel": c, "version": v, "reason": r, "count": n} for c, v, r, n in rows]


def export(
    session: so.Session,
    channel: str,
    version: str,
    reasons: Sequence[str] = (),
    devices: Sequence[str] = (),
) -> Export:
    """The captures of one channel and release, stacked for `bundle build --samples`.

    Raises NotFoundError (none match), InvalidRequestError (a bad filter, or captures whose
    inputs differ in name, shape or dtype: the message names them).
    """
    matching = _filtered(channel, version, reasons, devices).subquery()
    count, size = session.execute(
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(matching.c.size), 0))
    ).one()
    if count > MAX_EXPORT or size > MAX_EXPORT_BYTES:
        raise InvalidRequestError(
            f"{count} captures of {channel} {version} ({size} bytes) are more than one export "
            f"takes ({MAX_EXPORT}, {MAX_EXPORT_BYTES} bytes): narrow it with --device or --reason"
        )
    query = _filtered(channel, version, reasons, devices).options(so.undefer(Sample.data))
    result = Export(channel, version)
    feeds: dict[str, list[np.ndarray]] = {}
    first: tuple[str, dict[str, tuple[tuple[int, ...], str]]] | None = None
    for sample in session.scalars(query):
        capture = decode_capture(sample.data, max(sample.size, 1))
        layout = {n: (a.shape, a.dtype.str) for n, a in capture.inputs.items()}
        if first is None:
            first = (sample.sha256, layout)
        elif layout != first[1]:
            raise InvalidRequestError(
                f"captures of {channel} {version} differ: {_layout(first[1])} "
                f"({first[0][:12]}) vs {_layout(layout)} ({sample.sha256[:12]}); "
                "export them apart with --device or --reason"
            )
        for name, array in capture.inputs.items():
            feeds.setdefault(name, []).append(array)
        result.rows.append({
            "sha256": sample.sha256, "device_id": sample.device_id, "reason": sample.reason,
            "sequence": sample.sequence, "captured_at": format_time(sample.captured_at),
            "figures": capture.figures,
        })
    if first is None:
        raise NotFoundError(f"no captures of {channel} {version} match")
    result.inputs = {name: np.stack(arrays) for name, arrays in feeds.items()}
    return result


def _layout(layout: dict[str, tuple[tuple[int, ...], str]]) -> str:
    return ", ".join(f"{n}{list(shape)} {dtype}" for n, (shape, dtype) in sorted(layout.items()))
