"""Events the inference server reports (rollbacks and why, swaps, load failures; their kinds
are `bundles.events`).

The server writes them to an `EventSink`; the transport ships them to the manager. Tests and
`serve` without a transport use `MemoryEventSink`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

from satchel.bundles.timeutil import format_time


@dataclass(frozen=True)
class Event:
    kind: str
    channel: str
    version: str | None  # the release the event is about
    sequence: int | None
    reason: str = ""  # one line a technician understands
    time: float = field(default_factory=time.time)  # epoch seconds
    details: dict[str, Any] = field(default_factory=dict)  # figures: stats, pause, versions

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "channel": self.channel,
            "version": self.version,
            "sequence": self.sequence,
            "reason": self.reason,
            "time": format_time(datetime.fromtimestamp(self.time, timezone.utc)),
            "details": self.details,
        }


class EventSink(Protocol):
    def emit(self, event: Event) -> None:
        """Record one event. Must not block for long, and must not raise."""
        ...


class MemoryEventSink:
    """Keeps events in a list, thread-safe; for tests and for running without a transport."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[Event] = []

    def emit(self, event: Event) -> None:
        with self._lock:
            self._events.append(event)

    @property
    def events(self) -> list[Event]:
        with self._lock:
            return list(self._events)

    def of_kind(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind]

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)
