"""The clock, and timestamps in signed documents: UTC, whole seconds, `YYYY-MM-DDTHH:MM:SSZ`."""

from __future__ import annotations

from datetime import datetime, timezone

from satchel.bundles.errors import WrongTypeError

_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def format_time(t: datetime) -> str:
    """Format an aware datetime as a signed-document timestamp."""
    return t.astimezone(timezone.utc).strftime(_FORMAT)


def parse_time(value: object, field: str) -> datetime:
    """Parse a signed-document timestamp. Raises WrongTypeError naming `field`."""
    if not isinstance(value, str):
        raise WrongTypeError(f"{field} must be a timestamp string like 2026-01-31T12:00:00Z")
    try:
        return datetime.strptime(value, _FORMAT).replace(tzinfo=timezone.utc)
    except ValueError as e:
        raise WrongTypeError(
            f"{field} must be a timestamp like 2026-01-31T12:00:00Z, not {value[:40]!r}"
        ) from e


def now() -> datetime:
    """The clock: now, aware UTC, to the microsecond. What the manager stamps its rows and
    answers with (its check-in answer's `server_time` carries the microseconds)."""
    return datetime.now(timezone.utc)


def utcnow() -> datetime:
    """The clock to the whole second: the precision of every time in a signed document and in
    the device's own records (`channel.json`, journals), so a time kept is the time read back."""
    return now().replace(microsecond=0)
