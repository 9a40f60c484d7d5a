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
    exact = _parse_exact(value)
    if exact is not None:
        return exact
    try:
        return datetime.strptime(value, _FORMAT).replace(tzinfo=timezone.utc)
    except ValueError as e:
        raise WrongTypeError(
            f"{field} must be a timestamp like 2026-01-31T12:00:00Z, not {value[:40]!r}"
        ) from e


def _parse_exact(value: str) -> datetime | None:
    """`value` if it is exactly `YYYY-MM-DDTHH:MM:SSZ` (what format_time writes), else None
    for strptime to judge: the common case without importing _strptime and locale (~5 ms of
    every device command, issue 14)."""
    if not (len(value) == 20 and value.isascii() and value[4] == value[7] == "-"
            and value[10] == "T" and value[13] == value[16] == ":" and value[19] == "Z"):
        return None
    fields = (value[0:4], value[5:7], value[8:10], value[11:13], value[14:16], value[17:19])
    if not all(f.isdigit() for f in fields):
        return None
    year, month, day, hour, minute, second = (int(f) for f in fields)
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)
    except ValueError:
        return None


def now() -> datetime:
    """The clock: now, aware UTC, to the microsecond. What the manager stamps its rows and
    answers with (its check-in answer's `server_time` carries the microseconds)."""
    return datetime.now(timezone.utc)


def utcnow() -> datetime:
    """The clock to the whole second: the precision of every time in a signed document and in
    the device's own records (`channel.json`, journals), so a time kept is the time read back."""
    return now().replace(microsecond=0)
