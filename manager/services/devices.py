"""The fleet: enrolling devices, registering USB-only ones, tags, listing and inspecting."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
import sqlalchemy.orm as so

from satchel.bundles.errors import KeyFileError
from satchel.bundles.identifiers import IDENTIFIER_WORDS, VERSION_RE, is_identifier
from satchel.bundles.keys import PublicKey
from satchel.manager.errors import (
    AuthError,
    ConflictError,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
)
from satchel.manager.models import Device, DeviceChannel, DeviceTag, EnrollmentToken, Event
from satchel.manager.services.credentials import DEVICE, hash_token, new_token

MAX_TAGS = 64  # tags on one device


def check_label(value: Any, what: str) -> str:
    """`value` if it is a valid id/class/tag name. Raises InvalidRequestError."""
    if not is_identifier(value):
        raise InvalidRequestError(f"{what} must be {IDENTIFIER_WORDS}, not {str(value)[:40]!r}")
    return value


def parse_public_key(text: Any) -> PublicKey:
    """An Ed25519 public key given as PEM or as 64 hex characters. Raises InvalidRequestError."""
    if not isinstance(text, str):
        raise InvalidRequestError("public_key must be a PEM or hex string")
    try:
        if text.lstrip().startswith("-----BEGIN"):
            return PublicKey.from_pem(text.encode())
        raw = bytes.fromhex(text.strip())
    except (KeyFileError, ValueError) as e:
        raise InvalidRequestError(f"public_key is not an Ed25519 public key: {e}") from e
    if len(raw) != 32:
        raise InvalidRequestError("public_key must be 32 bytes (64 hex characters) or PEM")
    return PublicKey(raw)


@dataclass(frozen=True)
class Identity:
    """What a device says about itself when it enrolls or is registered."""

    device_id: str
    device_class: str
    arch: str
    agent_version: str
    public_key: PublicKey

    @classmethod
    def from_dict(cls, d: Any) -> Identity:
        """Parse an enrollment request body. Raises InvalidRequestError."""
        if not isinstance(d, dict):
            raise InvalidRequestError("enrollment request must be a JSON object")
        known = {"device_id", "device_class", "arch", "agent_version", "public_key"}
        missing = sorted({"device_id", "device_class", "public_key"} - set(d))
        if missing:
            raise InvalidRequestError(f"enrollment request has no '{missing[0]}' field")
        extra = sorted(set(d) - known)
        if extra:
            raise InvalidRequestError(f"enrollment request has an unexpected field '{extra[0]}'")
        arch = d.get("arch") or ""
        agent_version = d.get("agent_version") or ""
        if arch:
            check_label(arch, "arch")
        if agent_version and (
            not isinstance(agent_version, str) or not VERSION_RE.fullmatch(agent_version)
        ):
            raise InvalidRequestError("agent_version is not a valid version string")
        return cls(
            device_id=check_label(d["device_id"], "device_id"),
            device_class=check_label(d["device_class"], "device_class"),
            arch=arch,
            agent_version=agent_version,
            public_key=parse_public_key(d["public_key"]),
        )


@dataclass(frozen=True)
class Enrollment:
    device: Device
    token: str  # the device credential, shown once


def _new_device(session: so.Session, ident: Identity, now: datetime, token: str | None) -> Device:
    if session.get(Device, ident.device_id) is not None:
        raise ConflictError(
            f"device {ident.device_id} is already enrolled; remove it first "
            "(`satchel device remove`) to enroll it again"
        )
    device = Device(
        id=ident.device_id,
        device_class=ident.device_class,
        arch=ident.arch,
        agent_version=ident.agent_version,
        public_key=ident.public_key.raw.hex(),
        token_hash=hash_token(token) if token else None,
        enrolled_at=now,
    )
    session.add(device)
    session.flush()
    return device


def enroll(
    session: so.Session, enrollment_token: str, ident: Identity, now: datetime
) -> Enrollment:
    """Trade a one-time enrollment token for a device credential.

    Raises AuthError (unknown, used or expired token), ForbiddenError (token limited to
    another device class), ConflictError (device id already enrolled).
    """
    row = session.scalar(
        sa.select(EnrollmentToken).where(EnrollmentToken.token_hash == hash_token(enrollment_token))
    )
    if row is None:
        raise AuthError("invalid enrollment token")
    if row.used_at is not None:
        raise AuthError("this enrollment token was already used")
    if now >= row.expires_at:
        raise AuthError(f"this enrollment token expired at {row.expires_at.isoformat()}")
    if row.device_class is not None and row.device_class != ident.device_class:
        raise ForbiddenError(
            f"this enrollment token is only for devices of class {row.device_class}"
        )
    credential = new_token(DEVICE)
    device = _new_device(session, ident, now, credential)
    used = cast(
        sa.CursorResult[Any],
        session.execute(
            sa.update(EnrollmentToken)
            .where(EnrollmentToken.id == row.id, EnrollmentToken.used_at.is_(None))
            .values(used_at=now, device_id=device.id)
        ),
    )
    if used.rowcount != 1:  # another request used it first
        raise AuthError("this enrollment token was already used")
    return Enrollment(device, credential)


def register(session: so.Session, ident: Identity, now: datetime) -> Device:
    """Register a USB-only device by its public key, with no LAN credential.

    Raises ConflictError if the id is taken.
    """
    return _new_device(session, ident, now, None)


def remove(session: so.Session, device_id: str) -> None:
    """Forget a device, its credential, state and events. Raises NotFoundError."""
    session.delete(get(session, device_id))


def get(session: so.Session, device_id: str) -> Device:
    """Raises NotFoundError."""
    device = session.get(Device, device_id)
    if device is None:
        raise NotFoundError(f"no device {device_id!r}")
    return device


def set_tags(
    session: so.Session, device_id: str, add: list[str], remove: list[str] | None = None
) -> list[str]:
    """Add and remove tags of a device; return its tags. Raises NotFoundError,
    InvalidRequestError."""
    device = get(session, device_id)
    current = {t.tag for t in device.tags}
    for tag in add:
        check_label(tag, "tag")
    wanted = (current | set(add)) - set(remove or [])
    if len(wanted) > MAX_TAGS:
        raise InvalidRequestError(f"a device may have at most {MAX_TAGS} tags")
    device.tags = [t for t in device.tags if t.tag in wanted] + [
        DeviceTag(device_id=device_id, tag=t) for t in sorted(wanted - current)
    ]
    session.flush()
    return sorted(wanted)


def list_devices(
    session: so.Session,
    device_class: str | None = None,
    tag: str | None = None,
    limit: int = 1000,
    offset: int = 0,
) -> list[Device]:
    query = sa.select(Device).order_by(Device.id).limit(limit).offset(offset)
    if device_class:
        query = query.where(Device.device_class == device_class)
    if tag:
        query = query.where(
            Device.id.in_(sa.select(DeviceTag.device_id).where(DeviceTag.tag == tag))
        )
    return list(session.scalars(query))


def count_devices(session: so.Session) -> int:
    return session.scalar(sa.select(sa.func.count()).select_from(Device)) or 0


def _time(t: datetime | None) -> str | None:
    return t.isoformat() if t else None


def summary(device: Device) -> dict[str, Any]:
    """JSON-ready one-line view of a device."""
    return {
        "device_id": device.id,
        "device_class": device.device_class,
        "arch": device.arch,
        "agent_version": device.agent_version,
        "tags": sorted(t.tag for t in device.tags),
        "enrolled_at": _time(device.enrolled_at),
        "last_seen_at": _time(device.last_seen_at),
        "last_via": device.last_via,
        "lan_credential": device.token_hash is not None,
        "trust_root_version": device.trust_root_version,
    }


def detail(session: so.Session, device_id: str, events: int = 50) -> dict[str, Any]:
    """JSON-ready full view: identity, channels, health, recent events. Raises NotFoundError."""
    device = get(session, device_id)
    channels = session.scalars(
        sa.select(DeviceChannel)
        .where(DeviceChannel.device_id == device_id)
        .order_by(DeviceChannel.channel)
    )
    out = summary(device)
    out["public_key"] = device.public_key
    out["status"] = device.status
    out["health"] = device.health or {}
    out["channels"] = {
        c.channel: {
            "active": None
            if c.active_sequence is None
            else {"version": c.active_version, "sequence": c.active_sequence},
            "state": c.state,
            "updated_at": _time(c.updated_at),
            **staged_activation(device.status, c.channel),
        }
        for c in channels
    }
    out["events"] = [event_dict(e) for e in recent_events(session, device_id, events)]
    return out


def staged_activation(status: dict[str, Any] | None, channel: str) -> dict[str, Any]:
    """A channel's `stage` and `candidate` (SPEC "Staged activation") as its last status
    said, checked at the check-in (`checkin/parse.py`); an older agent reports neither."""
    reported = ((status or {}).get("channels") or {}).get(channel) or {}
    return {"stage": reported.get("stage") or "", "candidate": reported.get("candidate")}


def recent_events(session: so.Session, device_id: str, limit: int = 100) -> list[Event]:
    return list(
        session.scalars(
            sa.select(Event)
            .where(Event.device_id == device_id)
            .order_by(Event.occurred_at.desc(), Event.id.desc())
            .limit(limit)
        )
    )


def event_dict(e: Event) -> dict[str, Any]:
    return {
        "id": e.event_id,
        "kind": e.kind,
        "time": _time(e.occurred_at),
        "received_at": _time(e.received_at),
        "via": e.via,
        "channel": e.channel,
        "version": e.version,
        "sequence": e.sequence,
        "bundle_sha256": e.bundle_sha256,
        "deployment_id": e.deployment_id,
        "passed": e.passed,
        "reason": e.reason,
        "figures": e.figures,
    }
