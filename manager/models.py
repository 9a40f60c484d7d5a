"""The fleet database: typed SQLAlchemy 2 models.

Secrets are never stored: tokens and passwords are kept as hashes. Timestamps are
timezone-aware UTC on every backend (SQLite drops the zone; `UTCDateTime` puts it back).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
import sqlalchemy.orm as so

from satchel.bundles.timeutil import now

ID_LEN = 64  # characters of device ids, classes, channels, versions, tags, event ids
HASH_LEN = 64  # hex characters of a sha256


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A timezone-aware datetime stored as UTC on every backend."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class Base(so.DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: sa.JSON(), list[Any]: sa.JSON()}


class User(Base):
    """An admin who can log in to the web dashboard."""

    __tablename__ = "users"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    username: so.Mapped[str] = so.mapped_column(sa.String(ID_LEN), unique=True)
    password_hash: so.Mapped[str] = so.mapped_column(sa.String(255))
    created_at: so.Mapped[datetime] = so.mapped_column(default=now)


class WebSession(Base):
    """A dashboard login. The signed cookie holds a random secret, this row its sha256: deleting
    the row (log-out, password change, user removed) ends the login on every manager process."""

    __tablename__ = "web_sessions"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    token_hash: so.Mapped[str] = so.mapped_column(sa.String(HASH_LEN), unique=True)
    user_id: so.Mapped[int] = so.mapped_column(
        sa.ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    created_at: so.Mapped[datetime] = so.mapped_column(default=now)
    expires_at: so.Mapped[datetime] = so.mapped_column(index=True)


class LoginAttempts(Base):
    """Log-in attempts counted against one user name or one client address in the current
    window: counted before the password is checked, refunded when it was right."""

    __tablename__ = "login_attempts"

    scope: so.Mapped[str] = so.mapped_column(sa.String(8), primary_key=True)  # user | address
    subject: so.Mapped[str] = so.mapped_column(sa.String(ID_LEN), primary_key=True)
    failures: so.Mapped[int]
    window_started_at: so.Mapped[datetime] = so.mapped_column(index=True)


class AdminToken(Base):
    """A bearer token for the admin API, stored as the sha256 of the secret."""

    __tablename__ = "admin_tokens"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    token_hash: so.Mapped[str] = so.mapped_column(sa.String(HASH_LEN), unique=True)
    name: so.Mapped[str] = so.mapped_column(sa.String(100), default="")
    user_id: so.Mapped[int | None] = so.mapped_column(
        sa.ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    created_at: so.Mapped[datetime] = so.mapped_column(default=now)
    revoked_at: so.Mapped[datetime | None]
    expires_at: so.Mapped[datetime | None]  # None: until revoked
    # written at most once per `admin_token_touch_s`, so using a token is not a write each time
    last_used_at: so.Mapped[datetime | None]


class EnrollmentToken(Base):
    """A one-time, expiring token a device trades for its own credential."""

    __tablename__ = "enrollment_tokens"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    token_hash: so.Mapped[str] = so.mapped_column(sa.String(HASH_LEN), unique=True)
    device_class: so.Mapped[str | None] = so.mapped_column(sa.String(ID_LEN))
    created_at: so.Mapped[datetime] = so.mapped_column(default=now)
    expires_at: so.Mapped[datetime]
    used_at: so.Mapped[datetime | None]
    device_id: so.Mapped[str | None] = so.mapped_column(
        sa.ForeignKey("devices.id", ondelete="SET NULL"), index=True
    )


class Device(Base):
    """An enrolled (or USB-registered) device and the last state it reported."""

    __tablename__ = "devices"

    id: so.Mapped[str] = so.mapped_column(sa.String(ID_LEN), primary_key=True)
    device_class: so.Mapped[str] = so.mapped_column(sa.String(ID_LEN), index=True)
    arch: so.Mapped[str] = so.mapped_column(sa.String(ID_LEN), default="")
    agent_version: so.Mapped[str] = so.mapped_column(sa.String(ID_LEN), default="")
    public_key: so.Mapped[str] = so.mapped_column(sa.String(HASH_LEN))  # raw Ed25519, hex
    token_hash: so.Mapped[str | None] = so.mapped_column(sa.String(HASH_LEN), unique=True)
    enrolled_at: so.Mapped[datetime] = so.mapped_column(default=now)
    last_seen_at: so.Mapped[datetime | None]
    last_via: so.Mapped[str | None] = so.mapped_column(sa.String(8))  # "lan" | "usb"
    state_at: so.Mapped[datetime | None]  # device time of the newest state applied
    # sha256 of the state applied (status, agent and trust root versions): an unchanged
    # check-in is recognised by it without reading the status (manager/checkin/fast.py)
    state_digest: so.Mapped[str | None] = so.mapped_column(sa.String(HASH_LEN))
    status: so.Mapped[dict[str, Any] | None]  # the agent's `status --json`
    health: so.Mapped[dict[str, Any] | None]  # channel -> health summary
    trust_root_version: so.Mapped[int | None]

    tags: so.Mapped[list[DeviceTag]] = so.relationship(
        back_populates="device", cascade="all, delete-orphan", lazy="selectin"
    )
    channels: so.Mapped[list[DeviceChannel]] = so.relationship(
        back_populates="device", cascade="all, delete-orphan"
    )


class DeviceTag(Base):
    __tablename__ = "device_tags"

    device_id: so.Mapped[str] = so.mapped_column(
        sa.ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    tag: so.Mapped[str] = so.mapped_column(sa.String(ID_LEN), primary_key=True, index=True)
    device: so.Mapped[Device] = so.relationship(back_populates="tags")


class DeviceChannel(Base):
    """What one channel of a device runs, as last reported."""

    __tablename__ = "device_channels"

    device_id: so.Mapped[str] = so.mapped_column(
        sa.ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    channel: so.Mapped[str] = so.mapped_column(sa.String(ID_LEN), primary_key=True)
    active_version: so.Mapped[str | None] = so.mapped_column(sa.String(ID_LEN))
    active_sequence: so.Mapped[int | None] = so.mapped_column(sa.BigInteger)
    state: so.Mapped[str] = so.mapped_column(sa.String(32), default="")
    updated_at: so.Mapped[datetime] = so.mapped_column(default=now)
    device: so.Mapped[Device] = so.relationship(back_populates="channels")


class TrustRoot(Base):
    """Every version of the trust root the manager has accepted (the rotation history)."""

    __tablename__ = "trust_roots"

    version: so.Mapped[int] = so.mapped_column(primary_key=True, autoincrement=False)
    document: so.Mapped[bytes] = so.mapped_column(sa.LargeBinary)
    imported_at: so.Mapped[datetime] = so.mapped_column(default=now)


class Bundle(Base):
    """A verified bundle in the content-addressed store."""

    __tablename__ = "bundles"
    __table_args__ = (
        sa.UniqueConstraint("name", "version", name="uq_bundles_name_version"),
        sa.UniqueConstraint("name", "sequence", name="uq_bundles_name_sequence"),
    )

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    sha256: so.Mapped[str] = so.mapped_column(sa.String(HASH_LEN), unique=True)
    name: so.Mapped[str] = so.mapped_column(sa.String(ID_LEN), index=True)  # the channel
    version: so.Mapped[str] = so.mapped_column(sa.String(ID_LEN))
    sequence: so.Mapped[int] = so.mapped_column(sa.BigInteger)
    size: so.Mapped[int] = so.mapped_column(sa.BigInteger)  # bytes of the .satchel file
    created_at: so.Mapped[datetime]  # the manifest's creation time
    uploaded_at: so.Mapped[datetime] = so.mapped_column(default=now)
    manifest: so.Mapped[dict[str, Any]]


class BundleDelta(Base):
    """A delta bundle (docs/DELTAS.md): a stored full bundle's payloads as patches against
    one earlier release of its channel, offered instead of it to devices that keep that base."""

    __tablename__ = "bundle_deltas"
    __table_args__ = (
        sa.UniqueConstraint("bundle_id", "base_sequence", name="uq_bundle_deltas_base"),
    )

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    sha256: so.Mapped[str] = so.mapped_column(sa.String(HASH_LEN), unique=True)
    bundle_id: so.Mapped[int] = so.mapped_column(  # its full counterpart
        sa.ForeignKey("bundles.id", ondelete="CASCADE"), index=True
    )
    base_version: so.Mapped[str] = so.mapped_column(sa.String(ID_LEN))
    base_sequence: so.Mapped[int] = so.mapped_column(sa.BigInteger)
    size: so.Mapped[int] = so.mapped_column(sa.BigInteger)  # bytes of the .satchel file
    uploaded_at: so.Mapped[datetime] = so.mapped_column(default=now)
    manifest: so.Mapped[dict[str, Any]]


class Deployment(Base):
    """A bundle rolled out to a set of devices in waves."""

    __tablename__ = "deployments"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    bundle_id: so.Mapped[int] = so.mapped_column(
        sa.ForeignKey("bundles.id", ondelete="RESTRICT"), index=True
    )
    state: so.Mapped[str] = so.mapped_column(sa.String(16), index=True)
    selectors: so.Mapped[dict[str, Any]]  # {"device_classes", "tags", "devices"} as asked
    waves: so.Mapped[list[Any]]  # wave specs as given: "1", "10%", ...
    wave_sizes: so.Mapped[list[Any]]  # devices per wave, resolved at creation
    current_wave: so.Mapped[int] = so.mapped_column(default=0)
    success_ratio: so.Mapped[float]
    max_failure_ratio: so.Mapped[float]
    failures_tolerated: so.Mapped[int] = so.mapped_column(default=0)  # failed before a resume
    reason: so.Mapped[str | None] = so.mapped_column(sa.Text)  # why it halted or was aborted
    created_at: so.Mapped[datetime] = so.mapped_column(default=now)
    updated_at: so.Mapped[datetime] = so.mapped_column(default=now)

    bundle: so.Mapped[Bundle] = so.relationship(lazy="joined", innerjoin=True)


class DeploymentTarget(Base):
    """One device of a deployment: its wave and its progress."""

    __tablename__ = "deployment_targets"

    deployment_id: so.Mapped[int] = so.mapped_column(
        sa.ForeignKey("deployments.id", ondelete="CASCADE"), primary_key=True
    )
    device_id: so.Mapped[str] = so.mapped_column(
        sa.ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    wave: so.Mapped[int]
    state: so.Mapped[str] = so.mapped_column(sa.String(16))
    reason: so.Mapped[str | None] = so.mapped_column(sa.Text)
    updated_at: so.Mapped[datetime] = so.mapped_column(default=now)


class Event(Base):
    """Something a device reports happened; (device_id, event_id) makes re-delivery a no-op."""

    __tablename__ = "events"
    __table_args__ = (
        sa.UniqueConstraint("device_id", "event_id", name="uq_events_device_event"),
        # the fleet page finds rolled-back and failing devices by kind and time
        sa.Index("ix_events_kind_occurred_at", "kind", "occurred_at"),
        sa.Index("ix_events_received_at", "received_at"),  # retention prunes by arrival
    )

    id: so.Mapped[int] = so.mapped_column(BigId, primary_key=True)
    device_id: so.Mapped[str] = so.mapped_column(
        sa.ForeignKey("devices.id", ondelete="CASCADE"), index=True
    )
    event_id: so.Mapped[str] = so.mapped_column(sa.String(ID_LEN))
    kind: so.Mapped[str] = so.mapped_column(sa.String(32))
    channel: so.Mapped[str | None] = so.mapped_column(sa.String(ID_LEN))
    version: so.Mapped[str | None] = so.mapped_column(sa.String(ID_LEN))
    sequence: so.Mapped[int | None] = so.mapped_column(sa.BigInteger)
    bundle_sha256: so.Mapped[str | None] = so.mapped_column(sa.String(HASH_LEN))
    deployment_id: so.Mapped[int | None]
    passed: so.Mapped[bool | None]
    reason: so.Mapped[str | None] = so.mapped_column(sa.Text)
    figures: so.Mapped[dict[str, Any] | None]
    occurred_at: so.Mapped[datetime]
    received_at: so.Mapped[datetime] = so.mapped_column(default=now)
    via: so.Mapped[str] = so.mapped_column(sa.String(8))  # "lan" | "usb"


class UsbReport(Base):
    """A signed device report imported from a USB stick; importing it again is a no-op."""

    __tablename__ = "usb_reports"

    device_id: so.Mapped[str] = so.mapped_column(
        sa.ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    report_id: so.Mapped[str] = so.mapped_column(sa.String(ID_LEN), primary_key=True)
    plan_id: so.Mapped[str | None] = so.mapped_column(sa.String(ID_LEN))
    created_at: so.Mapped[datetime]  # device time the report was written
    imported_at: so.Mapped[datetime] = so.mapped_column(default=now)


class ManagerSecret(Base):
    """A random key every manager process must share (the dashboard's cookie-signing key),
    made once by whichever process starts first. The cookie it signs holds only a login's
    secret, itself looked up by hash in `web_sessions`: the key alone opens nothing."""

    __tablename__ = "manager_secrets"

    name: so.Mapped[str] = so.mapped_column(sa.String(32), primary_key=True)
    value: so.Mapped[bytes] = so.mapped_column(sa.LargeBinary)
    created_at: so.Mapped[datetime] = so.mapped_column(default=now)


class Sample(Base):
    """A capture a device kept for retraining (`bundles/captures.py`): the field inputs a
    candidate release tripped on, stored as the file the device sent, once by its sha256."""

    __tablename__ = "samples"
    __table_args__ = (sa.Index("ix_samples_channel_version", "channel", "version"),)

    id: so.Mapped[int] = so.mapped_column(BigId, primary_key=True)
    device_id: so.Mapped[str] = so.mapped_column(
        sa.ForeignKey("devices.id", ondelete="CASCADE"), index=True
    )
    channel: so.Mapped[str] = so.mapped_column(sa.String(ID_LEN))
    version: so.Mapped[str] = so.mapped_column(sa.String(ID_LEN))  # the candidate release
    sequence: so.Mapped[int] = so.mapped_column(sa.BigInteger)
    reason: so.Mapped[str] = so.mapped_column(sa.String(32))
    sha256: so.Mapped[str] = so.mapped_column(sa.String(HASH_LEN), unique=True)
    size: so.Mapped[int]  # bytes of the capture file
    captured_at: so.Mapped[datetime]  # device time
    received_at: so.Mapped[datetime] = so.mapped_column(default=now)
    via: so.Mapped[str] = so.mapped_column(sa.String(8))  # "lan" | "usb"
    data: so.Mapped[bytes] = so.mapped_column(sa.LargeBinary, deferred=True)
