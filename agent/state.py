"""The device's state directory: where everything lives, and reading it back.

Layout (STATE is `--state-dir`):

    STATE/device.json        who this device is (written last by `init`)
    STATE/device.key         the device's own Ed25519 key (0600)
    STATE/device.pub         its public key (PEM), to register a USB-only device
    STATE/root.json          the trust root bundles are verified against
    STATE/clock.json         the newest signed time this device has seen
    STATE/generation         a counter bumped after every activation or rollback
    STATE/history.json       the last events: activations, refusals, rollbacks, recoveries
    STATE/lock               flock'ed while an install, rollback or recovery runs
    STATE/channels/CH/channel.json   THE switch: kept releases (active first), the
                                     highest sequence ever installed, the channel state
    STATE/channels/CH/journal.json   only while an install or rollback of CH is under way
    STATE/channels/CH/releases/SEQ-VERSION/{manifest.json,manifest.sig,report.json,files/}
    STATE/channels/CH/staging/SEQ-VERSION/   an install being unpacked and smoke-tested

`channel.json` is replaced atomically (temp, fsync, rename, fsync dir), so activation and
rollback are one rename. Every release it names is complete and durable before it is named.
Anything under `releases/` or `staging/` that it does not name is garbage that recovery removes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from satchel.agent.errors import NotInitializedError, StateCorruptError
from satchel.bundles.channels import (
    STATE_ACTIVE,
    STATE_INSTALLING,
    STATE_PROBATION,
    STATE_ROLLING_BACK,
)
from satchel.bundles.durable import atomic_write_bytes
from satchel.bundles.errors import BundleError
from satchel.bundles.manifest import Manifest, parse_manifest
from satchel.bundles.timeutil import format_time, parse_time, utcnow


class Layout:
    """Paths inside a state directory. Pure: nothing here touches the disk."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.device = self.root / "device.json"
        self.device_key = self.root / "device.key"
        self.device_pub = self.root / "device.pub"
        self.trust = self.root / "root.json"
        self.clock = self.root / "clock.json"
        self.generation = self.root / "generation"
        self.history = self.root / "history.json"
        self.lock = self.root / "lock"
        self.channels = self.root / "channels"

    def channel(self, channel: str) -> Path:
        return self.channels / channel

    def record(self, channel: str) -> Path:
        return self.channel(channel) / "channel.json"

    def journal(self, channel: str) -> Path:
        return self.channel(channel) / "journal.json"

    def releases(self, channel: str) -> Path:
        return self.channel(channel) / "releases"

    def release(self, channel: str, name: str) -> Path:
        return self.releases(channel) / name

    def staging(self, channel: str) -> Path:
        return self.channel(channel) / "staging"


# A release directory holds these; `files/` is the unpack target of the bundle's payloads.
MANIFEST_FILE = "manifest.json"
SIGNATURES_FILE = "manifest.sig"
REPORT_FILE = "report.json"
FILES_DIR = "files"


def read_json(path: Path, what: str) -> Any:
    """The parsed JSON at `path`, or None if the file does not exist.

    Raises StateCorruptError if it exists but cannot be read or parsed.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StateCorruptError(f"cannot read {what} {path}: {e.strerror}") from e
    try:
        return json.loads(data)
    except ValueError as e:
        raise StateCorruptError(f"{what} {path} is not valid JSON; the file is damaged") from e


def write_json(path: Path, obj: Any, mode: int = 0o644) -> None:
    """Durably replace `path` with `obj` as sorted, indented JSON. Raises OSError."""
    text = json.dumps(obj, sort_keys=True, indent=2, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"), mode)


@dataclass(frozen=True)
class DeviceIdentity:
    device_id: str
    device_class: str
    architecture: str  # platform.machine() when the device was initialised
    trusted_clock: bool  # False: expiry is judged against the newest signed time seen
    device_keyid: str  # sha256 of the device's own public key

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "device_class": self.device_class,
            "architecture": self.architecture,
            "trusted_clock": self.trusted_clock,
            "device_keyid": self.device_keyid,
        }

    @classmethod
    def from_dict(cls, d: Any) -> DeviceIdentity:
        """Raises StateCorruptError."""
        try:
            return cls(
                device_id=str(d["device_id"]),
                device_class=str(d["device_class"]),
                architecture=str(d["architecture"]),
                trusted_clock=bool(d["trusted_clock"]),
                device_keyid=str(d["device_keyid"]),
            )
        except (KeyError, TypeError) as e:
            raise StateCorruptError(f"device.json is missing {e}; the file is damaged") from e


@dataclass(frozen=True)
class KeptRelease:
    """One good release kept on disk, as channel.json names it."""

    name: str  # directory under releases/
    version: str
    sequence: int
    installed_at: datetime
    activated_at: datetime  # the last time it became active

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "sequence": self.sequence,
            "installed_at": format_time(self.installed_at),
            "activated_at": format_time(self.activated_at),
        }

    @classmethod
    def from_dict(cls, d: Any) -> KeptRelease:
        return cls(
            name=str(d["name"]),
            version=str(d["version"]),
            sequence=int(d["sequence"]),
            installed_at=parse_time(d["installed_at"], "installed_at"),
            activated_at=parse_time(d["activated_at"], "activated_at"),
        )


@dataclass(frozen=True)
class ChannelRecord:
    """What channel.json says: the switch. The active release is always `releases[0]`."""

    channel: str
    releases: tuple[KeptRelease, ...]  # newest sequence first; never empty
    highest_sequence: int  # anti-rollback floor: only grows, survives pruning
    state: str  # STATE_ACTIVE or STATE_ROLLED_BACK

    @property
    def active(self) -> KeptRelease:
        return self.releases[0]

    @property
    def previous(self) -> KeptRelease | None:
        return self.releases[1] if len(self.releases) > 1 else None

    def names(self) -> set[str]:
        return {r.name for r in self.releases}

    def to_dict(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "releases": [r.to_dict() for r in self.releases],
            "highest_sequence": self.highest_sequence,
            "state": self.state,
        }

    @classmethod
    def from_dict(cls, d: Any, channel: str) -> ChannelRecord:
        """Raises StateCorruptError."""
        try:
            record = cls(
                channel=str(d["channel"]),
                releases=tuple(KeptRelease.from_dict(r) for r in d["releases"]),
                highest_sequence=int(d["highest_sequence"]),
                state=str(d["state"]),
            )
        except (KeyError, TypeError, ValueError, BundleError) as e:
            raise StateCorruptError(f"channel.json of {channel} is damaged ({e})") from e
        if record.channel != channel or not record.releases:
            raise StateCorruptError(f"channel.json of {channel} is damaged (no releases)")
        return record

    def with_state(self, state: str) -> ChannelRecord:
        return replace(self, state=state)


@dataclass(frozen=True)
class Release:
    """An unpacked, smoke-tested release of a channel, ready to load."""

    channel: str
    version: str
    sequence: int
    path: Path  # directory holding the unpacked payloads (manifest file paths are relative)
    manifest: Manifest
    activated_at: datetime

    @property
    def directory(self) -> Path:
        """The release directory (manifest.json, manifest.sig, report.json, files/)."""
        return self.path.parent

    def report(self) -> dict[str, Any]:
        """The smoke-test report written when the release was installed."""
        return dict(read_json(self.directory / REPORT_FILE, "smoke-test report") or {})


def read_record(layout: Layout, channel: str) -> ChannelRecord | None:
    """The channel's record, or None if the channel has none. Raises StateCorruptError."""
    data = read_json(layout.record(channel), "channel record")
    return None if data is None else ChannelRecord.from_dict(data, channel)


def write_record(layout: Layout, record: ChannelRecord) -> None:
    """THE switch: durably replace channel.json in one rename. Raises OSError."""
    write_json(layout.record(record.channel), record.to_dict())


def read_generation(layout: Layout) -> int:
    try:
        return int(layout.generation.read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def bump_generation(layout: Layout) -> int:
    """Durably increase the generation counter; returns the new value. Raises OSError."""
    value = read_generation(layout) + 1
    atomic_write_bytes(layout.generation, f"{value}\n".encode())
    return value


def read_newest_signed_time(layout: Layout) -> datetime | None:
    """The newest signed time this device has seen, or None. Raises StateCorruptError."""
    data = read_json(layout.clock, "clock record")
    if not data:
        return None
    try:
        return parse_time(data["newest_signed_time"], "newest_signed_time")
    except (KeyError, TypeError, BundleError) as e:
        raise StateCorruptError(f"clock.json is damaged ({e})") from e


def advance_newest_signed_time(layout: Layout, seen: datetime) -> None:
    """Durably raise the newest signed time seen to `seen` (never lowers it). Raises OSError."""
    newest = read_newest_signed_time(layout)
    if newest is None or seen > newest:
        write_json(layout.clock, {"newest_signed_time": format_time(seen)})


def load_release(layout: Layout, channel: str, kept: KeptRelease) -> Release:
    """The Release that `kept` names. Raises FileNotFoundError if it was just removed,
    StateCorruptError if its manifest is damaged."""
    directory = layout.release(channel, kept.name)
    data = (directory / MANIFEST_FILE).read_bytes()
    try:
        manifest = parse_manifest(data)
    except BundleError as e:
        raise StateCorruptError(f"manifest of {channel} {kept.version} is damaged: {e}") from e
    return Release(
        channel=channel,
        version=kept.version,
        sequence=kept.sequence,
        path=directory / FILES_DIR,
        manifest=manifest,
        activated_at=kept.activated_at,
    )


class DeviceState:
    """Read-only view of a device's state, safe to use while an install runs elsewhere.

    For the inference server and health monitor: poll `generation()` (a counter that changes
    on every activation or rollback) and reload `active_release(channel)` when it moves.
    """

    _ATTEMPTS = 3  # re-reads of channel.json when a release vanishes under a concurrent switch

    def __init__(self, state_dir: Path) -> None:
        self.layout = Layout(state_dir)

    def identity(self) -> DeviceIdentity:
        """Raises NotInitializedError, StateCorruptError."""
        data = read_json(self.layout.device, "device record")
        if data is None:
            raise NotInitializedError(
                f"{self.layout.root} is not set up; run: satchel-agent "
                f"--state-dir {self.layout.root} init --trust root.json --device-id ID "
                "--device-class CLASS"
            )
        return DeviceIdentity.from_dict(data)

    def channels(self) -> list[str]:
        """Channels with an active release, sorted."""
        try:
            entries = sorted(p.name for p in self.layout.channels.iterdir())
        except FileNotFoundError:
            return []
        return [c for c in entries if self.layout.record(c).exists()]

    def record(self, channel: str) -> ChannelRecord | None:
        """Raises StateCorruptError."""
        return read_record(self.layout, channel)

    def active_release(self, channel: str) -> Release | None:
        """The release the channel serves now, or None. Raises StateCorruptError."""
        return self._release(channel, 0)

    def previous_release(self, channel: str) -> Release | None:
        """The release a rollback would go back to, or None. Raises StateCorruptError."""
        return self._release(channel, 1)

    def kept_releases(self, channel: str) -> list[Release]:
        """Every release the channel keeps, active first; one that vanishes under a concurrent
        prune is left out. Raises StateCorruptError."""
        record = self.record(channel)
        if record is None:
            return []
        kept = []
        for entry in record.releases:
            try:
                kept.append(load_release(self.layout, channel, entry))
            except FileNotFoundError:
                continue
        return kept

    def _release(self, channel: str, index: int) -> Release | None:
        for attempt in range(self._ATTEMPTS):
            record = self.record(channel)
            if record is None or index >= len(record.releases):
                return None
            try:
                return load_release(self.layout, channel, record.releases[index])
            except FileNotFoundError:
                if attempt == self._ATTEMPTS - 1:
                    raise StateCorruptError(
                        f"release {record.releases[index].name} of {channel} is missing"
                    ) from None
        return None

    def candidate_release(self, channel: str) -> Release | None:
        """The release being judged in shadow or ramp (installed, not active), or None.
        Raises StateCorruptError."""
        from satchel.agent.staging.record import read_candidate

        candidate = read_candidate(self.layout, channel)
        if candidate is None:
            return None
        kept = KeptRelease(candidate.name, candidate.version, candidate.sequence,
                           candidate.installed_at, candidate.installed_at)
        try:
            return load_release(self.layout, channel, kept)
        except FileNotFoundError:
            return None

    def generation(self) -> int:
        """A counter that changes on every activation or rollback; one small file read."""
        return read_generation(self.layout)

    def newest_signed_time(self) -> datetime | None:
        return read_newest_signed_time(self.layout)

    def channel_state(self, record: ChannelRecord, now: datetime | None = None) -> str:
        """The record's state, the operation under way when a journal is present, or
        "probation" while a newly activated release's health policy window runs."""
        journal = read_json(self.layout.journal(record.channel), "journal")
        if isinstance(journal, dict):
            return STATE_ROLLING_BACK if journal.get("op") == "rollback" else STATE_INSTALLING
        if record.state == STATE_ACTIVE and self._on_probation(record, now or utcnow()):
            return STATE_PROBATION
        return record.state

    def _on_probation(self, record: ChannelRecord, now: datetime) -> bool:
        try:
            manifest = load_release(self.layout, record.channel, record.active).manifest
        except (FileNotFoundError, StateCorruptError):
            return False
        window = timedelta(seconds=manifest.health_policy.probation_s)
        return now < record.active.activated_at + window

    def status(self) -> dict[str, Any]:
        """The SPEC's `status --json` object. Raises NotInitializedError, StateCorruptError."""
        from satchel.agent.staging.record import candidate_status
        from satchel.agent.variants.status import variant_status

        identity = self.identity()
        channels: dict[str, Any] = {}
        for channel in self.channels():
            record = self.record(channel)
            if record is None:
                continue
            state = self.channel_state(record)
            candidate = candidate_status(self.layout, channel)
            channels[channel] = {
                "active": {"version": record.active.version, "sequence": record.active.sequence},
                "releases": [
                    {"version": r.version, "sequence": r.sequence} for r in record.releases
                ],
                "state": state,
                "stage": candidate["stage"] if candidate else (
                    "probation" if state == STATE_PROBATION else "active"
                ),
                "candidate": candidate,
            }
            channels[channel].update(  # a release with variants (agent/variants/status.py)
                variant_status(self.layout.release(channel, record.active.name)))
        return {
            "device_id": identity.device_id,
            "device_class": identity.device_class,
            "channels": channels,
        }
