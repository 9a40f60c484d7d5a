"""A check-in, parsed and validated: a LAN request body or the `checkin` of a USB report.

Nothing here touches the database: a body goes in, a `CheckinReport` comes out or
InvalidRequestError is raised, with a message naming the field at fault.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, cast

from satchel.bundles.events import KIND_RE, MAX_REASON_CHARS
from satchel.bundles.identifiers import CHANNEL_RE, IDENTIFIER_RE, SHA256_RE, VERSION_RE
from satchel.manager.errors import InvalidRequestError
from satchel.manager.services.deltas import kept_sequences
from satchel.manager.services.deployments import ChannelReport, ReportedEvent

MAX_STATE_CHANNELS = 256  # channels in one device's status
MAX_CANDIDATE_FIGURES = 64  # figures in a candidate's shadow or ramp section
STAGES = ("shadow", "ramp", "probation", "active")  # a channel's stage (SPEC "Staged activation")
# What the database columns hold; a value beyond would fail in the database, not here.
BIGINT_RANGE = (-(2**63), 2**63 - 1)  # BIGINT columns: sequences; counts kept as JSON
INTEGER_RANGE = (-(2**31), 2**31 - 1)  # INTEGER columns: deployment ids, trust root versions


@dataclass(frozen=True)
class DeviceEvent:
    event_id: str
    kind: str
    occurred_at: datetime
    channel: str | None = None
    version: str | None = None
    sequence: int | None = None
    bundle_sha256: str | None = None
    deployment_id: int | None = None
    passed: bool | None = None
    reason: str | None = None
    figures: dict[str, Any] | None = None

    def reported(self) -> ReportedEvent:
        return ReportedEvent(
            self.kind, self.channel, self.sequence, self.bundle_sha256, self.passed, self.reason
        )


@dataclass(frozen=True)
class CheckinReport:
    """A parsed, validated check-in (LAN request body or the `checkin` of a USB report)."""

    status: dict[str, Any]
    channels: dict[str, ChannelReport]
    health: dict[str, dict[str, Any]]
    events: tuple[DeviceEvent, ...]
    agent_version: str | None = None
    trust_root_version: int | None = None
    sent_at: datetime | None = None  # device clock; orders reports that arrive out of order
    accepts: tuple[str, ...] = ()  # what the agent can install besides full bundles: "delta"

    @functools.cached_property
    def state_digest(self) -> str:
        """sha256 of the state this report applies: status, agent and trust root versions
        (health is left out: its counters move at every check-in and cost nothing to write)."""
        state = [self.status, self.agent_version, self.trust_root_version]
        text = json.dumps(state, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _bad(msg: str) -> InvalidRequestError:
    return InvalidRequestError(f"check-in: {msg}")


def _opt(d: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = d.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
        raise _bad(f"{where} '{key}' has the wrong type")
    return value


def _int(
    d: dict[str, Any], key: str, where: str, bounds: tuple[int, int] = BIGINT_RANGE
) -> int | None:
    """An optional integer field within `bounds`. Raises InvalidRequestError."""
    value = _opt(d, key, int, where)
    if value is not None and not bounds[0] <= value <= bounds[1]:
        raise _bad(f"{where} '{key}' is out of range")
    return cast(int | None, value)


def _match(value: Any, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise _bad(f"{what} {str(value)[:40]!r} is not valid")
    return value


def parse_time(value: Any, what: str) -> datetime:
    """An ISO 8601 timestamp with a zone ("2026-01-31T12:00:00Z"). Raises InvalidRequestError."""
    if not isinstance(value, str):
        raise _bad(f"{what} must be a timestamp string")
    try:
        t = datetime.fromisoformat(value)
    except ValueError as e:
        raise _bad(f"{what} {value[:40]!r} is not an ISO 8601 timestamp") from e
    if t.tzinfo is None:
        raise _bad(f"{what} must carry a time zone, e.g. a trailing Z")
    try:
        t.astimezone(timezone.utc)  # stored in UTC: e.g. year 9999 at -23:59 has no UTC form
    except (OverflowError, ValueError) as e:
        raise _bad(f"{what} {value[:40]!r} is out of range in UTC") from e
    return t


def _parse_event(d: Any) -> DeviceEvent:
    if not isinstance(d, dict):
        raise _bad("every event must be an object")
    event_id = _match(d.get("id"), IDENTIFIER_RE, "event id")
    where = f"event {event_id}"
    channel = _opt(d, "channel", str, where)
    version = _opt(d, "version", str, where)
    sha = _opt(d, "bundle_sha256", str, where)
    reason = _opt(d, "reason", str, where)
    return DeviceEvent(
        event_id=event_id,
        kind=_match(d.get("kind"), KIND_RE, f"{where} kind"),
        occurred_at=parse_time(d.get("time"), f"{where} time"),
        channel=None if channel is None else _match(channel, CHANNEL_RE, "channel"),
        version=None if version is None else _match(version, VERSION_RE, "version"),
        sequence=_int(d, "sequence", where),
        bundle_sha256=None if sha is None else _match(sha, SHA256_RE, "bundle_sha256"),
        deployment_id=_int(d, "deployment_id", where, INTEGER_RANGE),
        passed=_opt(d, "passed", bool, where),
        reason=None if reason is None else reason[:MAX_REASON_CHARS],
        figures=_opt(d, "figures", dict, where),
    )


def _parse_channel(name: str, d: Any) -> ChannelReport:
    _match(name, CHANNEL_RE, "channel")
    if not isinstance(d, dict):
        raise _bad(f"status of channel {name} must be an object")
    active = d.get("active")
    version = sequence = None
    if active is not None:
        if not isinstance(active, dict):
            raise _bad(f"channel {name} 'active' must be an object or null")
        version = _match(active.get("version"), VERSION_RE, f"channel {name} active version")
        sequence = _int(active, "sequence", f"channel {name} active")
        if sequence is None:
            raise _bad(f"channel {name} active 'sequence' must be an integer")
    state = d.get("state") or ""
    if not isinstance(state, str) or len(state) > 32:
        raise _bad(f"channel {name} 'state' must be a short string")
    stage = d.get("stage") or ""
    if stage and stage not in STAGES:
        raise _bad(f"channel {name} 'stage' must be one of {', '.join(STAGES)}")
    candidate = parse_candidate(name, d.get("candidate"))
    try:  # the kept releases: a delta is offered against one of them (services/deltas.py)
        kept = kept_sequences(d.get("releases"))
    except ValueError as e:
        raise _bad(f"channel {name} 'releases' {e}") from e
    return ChannelReport(
        version, sequence, state, stage, None if candidate is None else candidate["sequence"],
        kept,
    )


def parse_candidate(name: str, d: Any) -> dict[str, Any] | None:
    """A channel's `candidate` (a release in its shadow stage or ramp): its version, sequence
    and stage checked, its figures numbers or null. Raises InvalidRequestError."""
    if d is None:
        return None
    where = f"channel {name} candidate"
    if not isinstance(d, dict):
        raise _bad(f"{where} must be an object or null")
    _match(d.get("version"), VERSION_RE, f"{where} version")
    if _int(d, "sequence", where) is None:
        raise _bad(f"{where} 'sequence' must be an integer")
    if d.get("stage") not in (None, *STAGES):
        raise _bad(f"{where} 'stage' must be one of {', '.join(STAGES)}")
    for part in ("shadow", "ramp"):
        figures = d.get(part)
        if figures is None:
            continue
        if not isinstance(figures, dict) or len(figures) > MAX_CANDIDATE_FIGURES:
            raise _bad(f"{where} '{part}' must be an object of figures")
        for key, value in figures.items():
            if not _is_figure(value):
                raise _bad(f"{where} {part} '{str(key)[:32]}' must be a number, a list or null")
    answers = d.get("client_answers")
    if answers is not None and not _is_count(answers):
        raise _bad(f"{where} 'client_answers' must be a count")
    return d


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= BIGINT_RANGE[1]


def _is_figure(value: Any) -> bool:
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return True
    return (  # ramp "steps": percentages
        isinstance(value, list) and len(value) <= MAX_CANDIDATE_FIGURES
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    )


def _parse_health(d: Any) -> dict[str, dict[str, Any]]:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise _bad("'health' must map channels to summaries")
    out: dict[str, dict[str, Any]] = {}
    for name, h in d.items():
        _match(name, CHANNEL_RE, "health channel")
        if not isinstance(h, dict):
            raise _bad(f"health of channel {name} must be an object")
        summary: dict[str, Any] = {}
        for key in ("count", "errors", "nan"):
            value = h.get(key, 0)
            if (
                not isinstance(value, int)
                or isinstance(value, bool)
                or not 0 <= value <= BIGINT_RANGE[1]
            ):
                raise _bad(f"health of channel {name}: '{key}' must be a count")
            summary[key] = value
        p95 = h.get("p95_ms")
        if p95 is not None and (not isinstance(p95, (int, float)) or isinstance(p95, bool)):
            raise _bad(f"health of channel {name}: 'p95_ms' must be a number or null")
        summary["p95_ms"] = p95
        out[name] = summary
    return out


def parse_report(body: Any, device_id: str, max_events: int) -> CheckinReport:
    """Validate a check-in body for `device_id`. Raises InvalidRequestError."""
    if not isinstance(body, dict):
        raise _bad("the body must be a JSON object")
    status = body.get("status")
    if not isinstance(status, dict):
        raise _bad("'status' (the agent's `status --json`) is required")
    if status.get("device_id", device_id) != device_id:
        raise _bad(f"status is for device {str(status.get('device_id'))[:64]!r}, not {device_id}")
    raw_channels = status.get("channels") or {}
    if not isinstance(raw_channels, dict) or len(raw_channels) > MAX_STATE_CHANNELS:
        raise _bad("status 'channels' must map channel names to their state")
    events = body.get("events") or []
    if not isinstance(events, list):
        raise _bad("'events' must be a list")
    if len(events) > max_events:
        raise _bad(f"too many events ({len(events)} > {max_events}); send them in batches")
    parsed_events = tuple(_parse_event(e) for e in events)
    if len({e.event_id for e in parsed_events}) != len(parsed_events):
        raise _bad("two events share one id")
    agent_version = body.get("agent_version")
    if agent_version is not None:
        _match(agent_version, VERSION_RE, "agent_version")
    root_version = _int(body, "trust_root_version", "check-in", INTEGER_RANGE)
    sent_at = body.get("sent_at")
    return CheckinReport(
        status=status,
        channels={n: _parse_channel(n, c) for n, c in raw_channels.items()},
        health=_parse_health(body.get("health")),
        events=parsed_events,
        agent_version=agent_version,
        trust_root_version=root_version,
        sent_at=None if sent_at is None else parse_time(sent_at, "sent_at"),
        accepts=_accepts(body.get("accepts")),
    )


def _accepts(value: Any) -> tuple[str, ...]:
    """The check-in's `accepts` (agents from issue 19 on: ["delta"]); () when absent."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > 16 or not all(
        isinstance(v, str) and len(v) <= 32 for v in value
    ):
        raise _bad("'accepts' must be a short list of names")
    return tuple(value)
