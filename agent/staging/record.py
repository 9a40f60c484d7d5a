"""A channel's candidate release, as the state dir keeps it.

`channels/CH/candidate.json` names the release being judged (installed under `releases/`
but not active: channel.json still names the previous release active). It is written by the
installer, under the device lock, when a release with a shadow stage or a ramp passed its
smoke test, and removed when the candidate is activated or refused. The server's figures of
the running stage go to `channels/CH/candidate-figures.json`, written without the lock (a
stale one, for a candidate gone since, is ignored: it names another sequence).

After a power cut the candidate comes back at the beginning of its first stage (its figures
are reset): the previous release serves meanwhile, and no client ever got an answer the
device had not judged.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from satchel.agent.errors import StateCorruptError
from satchel.agent.staging import CANDIDATE_FILE, FIGURES_FILE
from satchel.agent.state import Layout, read_json, write_json
from satchel.bundles.errors import BundleError
from satchel.bundles.timeutil import format_time, parse_time

STAGE_SHADOW = "shadow"
STAGE_RAMP = "ramp"
STAGE_PROBATION = "probation"
STAGE_ACTIVE = "active"


def candidate_path(layout: Layout, channel: str) -> Path:
    return layout.channel(channel) / CANDIDATE_FILE


def figures_path(layout: Layout, channel: str) -> Path:
    return layout.channel(channel) / FIGURES_FILE


@dataclass(frozen=True)
class Candidate:
    channel: str
    name: str  # its directory under releases/
    version: str
    sequence: int
    first_stage: str  # STAGE_SHADOW or STAGE_RAMP: where it starts (again after a restart)
    installed_at: datetime
    created: str  # the manifest's created time (advances the clock once it is activated)
    shadow_skipped: str | None = None  # why the bundle's shadow stage was skipped, if it was

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "channel": self.channel,
            "name": self.name,
            "version": self.version,
            "sequence": self.sequence,
            "first_stage": self.first_stage,
            "installed_at": format_time(self.installed_at),
            "created": self.created,
        }
        if self.shadow_skipped:
            d["shadow_skipped"] = self.shadow_skipped
        return d

    @classmethod
    def from_dict(cls, d: Any, channel: str) -> Candidate:
        """Raises StateCorruptError."""
        try:
            candidate = cls(
                channel=str(d["channel"]),
                name=str(d["name"]),
                version=str(d["version"]),
                sequence=int(d["sequence"]),
                first_stage=str(d["first_stage"]),
                installed_at=parse_time(d["installed_at"], "installed_at"),
                created=str(d["created"]),
                shadow_skipped=d.get("shadow_skipped"),
            )
        except (KeyError, TypeError, ValueError, BundleError) as e:
            raise StateCorruptError(f"candidate.json of {channel} is damaged ({e})") from e
        if candidate.channel != channel or candidate.first_stage not in (STAGE_SHADOW,
                                                                         STAGE_RAMP):
            raise StateCorruptError(f"candidate.json of {channel} is damaged")
        return candidate


def read_candidate(layout: Layout, channel: str) -> Candidate | None:
    """The channel's candidate, or None. Raises StateCorruptError."""
    data = read_json(candidate_path(layout, channel), "candidate record")
    return None if data is None else Candidate.from_dict(data, channel)


def write_candidate(layout: Layout, candidate: Candidate) -> None:
    """Durably write the candidate record (under the device lock). Raises OSError."""
    write_json(candidate_path(layout, candidate.channel), candidate.to_dict())


def remove_candidate(layout: Layout, channel: str) -> bool:
    """Remove the candidate record and its figures; True if there was a record.
    Raises OSError."""
    from satchel.bundles.durable import fsync_dir

    gone = False
    for path in (candidate_path(layout, channel), figures_path(layout, channel)):
        try:
            path.unlink()
            gone = gone or path.name == CANDIDATE_FILE
        except FileNotFoundError:
            continue
    fsync_dir(layout.channel(channel))
    return gone


def remove_candidate_figures(layout: Layout, channel: str) -> bool:
    """Remove a figures file left by a candidate gone since; True if there was one.
    Raises OSError."""
    try:
        figures_path(layout, channel).unlink()
    except FileNotFoundError:
        return False
    return True


def read_figures(layout: Layout, candidate: Candidate) -> dict[str, Any] | None:
    """The running stage's figures the server last wrote for this very candidate, or None."""
    try:
        data = read_json(figures_path(layout, candidate.channel), "candidate figures")
    except StateCorruptError:
        return None
    if not isinstance(data, dict) or data.get("sequence") != candidate.sequence:
        return None
    return data


def write_figures(layout: Layout, channel: str, figures: dict[str, Any]) -> None:
    """Replace the figures file (no lock: a stale file is ignored). Raises OSError."""
    write_json(figures_path(layout, channel), figures)


def candidate_status(layout: Layout, channel: str) -> dict[str, Any] | None:
    """The `"candidate"` object of the channel's status, or None when it has none.
    Raises StateCorruptError."""
    candidate = read_candidate(layout, channel)
    if candidate is None:
        return None
    figures = read_figures(layout, candidate) or {}
    stage = figures.get("stage") or candidate.first_stage
    return {
        "version": candidate.version,
        "sequence": candidate.sequence,
        "stage": stage,
        "started_at": figures.get("started_at") or format_time(candidate.installed_at),
        "shadow": figures.get("shadow"),
        "ramp": figures.get("ramp"),
        "client_answers": int(figures.get("client_answers") or 0),
        "shadow_skipped": candidate.shadow_skipped,
    }
