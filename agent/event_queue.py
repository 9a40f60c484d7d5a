"""The durable on-device event queue: what happened, kept until the manager has it.

Events (downloaded, verified, smoke_test, activated, install_refused, rolled_back, ...) are
appended to STATE/events/queue.jsonl, one JSON line each, fsync'd before `append` returns,
and leave the queue only through `ack`, which the check-in calls once the manager answered
200 (or the USB code, once a report holding them is durably on a stick of a USB-only device).
So a device that cannot reach its manager for a week delivers that week's events when it
can; the manager records each `(device_id, id)` once, so delivering one twice is harmless.

File: a header line `{"format": 1, "epoch": E, "next": N}` then one `{"seq": S, "event": {...}}`
per event. Ids are `E-S`: `S` only grows, and `E` is drawn at random whenever the file is
created, so even a device whose queue was lost never reuses an id the manager has already
seen (it would drop that event as a duplicate). Appends go to the end of the file; `ack` and
trimming rewrite it atomically. Both hold `flock(STATE/events/lock)`, so the service and a
technician's CLI may use the queue at the same time. A line torn by a power cut is dropped
on the next open. The queue is bounded (`event_queue_max_events`, `event_queue_max_bytes`):
when full, the oldest events make room and an `events_dropped` event says how many went.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from satchel.agent.config import DEFAULT_CONFIG, AgentConfig
from satchel.bundles.durable import atomic_write_bytes, fsync_dir
from satchel.bundles.events import EVENTS_DROPPED, KIND_RE, MAX_REASON_CHARS
from satchel.bundles.timeutil import format_time, utcnow

log = logging.getLogger(__name__)

EVENTS_DIR = "events"
QUEUE_FILE = "queue.jsonl"
LOCK_FILE = "lock"
FORMAT = 1
_FIELDS = ("channel", "version", "sequence", "bundle_sha256", "deployment_id", "passed",
           "reason", "figures")


def json_safe(value: Any) -> Any:
    """`value` with NaN and infinities replaced by None, so it encodes as strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def _encode(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


@dataclass
class _Loaded:
    """The queue file as last read: header, events in order, where reading stopped."""

    epoch: str
    next_seq: int
    events: list[tuple[int, dict[str, Any]]]
    header: bytes = b""  # the header line as on disk; a rewrite always changes it
    inode: tuple[int, int] = (0, 0)
    offset: int = 0  # bytes of the file consumed (complete lines only)


class EventQueue:
    """The queue under STATE/events. Thread-safe and safe across processes.

    Implements the inference server's `EventSink` protocol (`emit`), so health rollbacks and
    crash-loop rollbacks land here too.
    """

    def __init__(self, state_dir: Path, config: AgentConfig = DEFAULT_CONFIG) -> None:
        self.directory = Path(state_dir) / EVENTS_DIR
        self.path = self.directory / QUEUE_FILE
        self._lock_path = self.directory / LOCK_FILE
        self._config = config
        self._mutex = threading.Lock()
        self._loaded: _Loaded | None = None

    # --- public -------------------------------------------------------------------------

    def append(self, kind: str, *, time: datetime | None = None, **fields: Any) -> dict[str, Any]:
        """Add one event durably and return it (with its new `id` and `time`).

        `fields` are the API's optional event fields (channel, version, sequence,
        bundle_sha256, deployment_id, passed, reason, figures); None values are left out.
        Raises ValueError for a kind the manager would refuse, OSError when the disk fails.
        """
        if not KIND_RE.fullmatch(kind):
            raise ValueError(f"event kind {kind!r} is not {KIND_RE.pattern}")
        unknown = set(fields) - set(_FIELDS)
        if unknown:
            raise ValueError(f"unknown event field {sorted(unknown)[0]!r}")
        body: dict[str, Any] = {"kind": kind, "time": format_time(time or utcnow())}
        for name, value in fields.items():
            if value is None:
                continue
            if name == "reason":
                value = " ".join(str(value).split())[:MAX_REASON_CHARS]
            body[name] = json_safe(value)
        with self._locked() as loaded:
            return self._append_locked(loaded, body)

    def emit(self, event: Any) -> None:
        """`EventSink.emit`: queue an event of the inference server (`agent.server.Event`).
        Never raises: a failure is logged."""
        try:
            when = datetime.fromtimestamp(float(event.time), timezone.utc)
            figures = dict(event.details) if event.details else None
            self.append(
                event.kind, time=when, channel=event.channel, version=event.version,
                sequence=event.sequence, reason=event.reason or None, figures=figures,
            )
        except Exception:  # noqa: BLE001 - a sink must not raise into the server
            log.exception("could not queue the %s event of %s", event.kind, event.channel)

    def pending(
        self, limit: int | None = None, max_bytes: int | None = None
    ) -> list[dict[str, Any]]:
        """The oldest undelivered events, oldest first: at most `limit` of them and, beyond
        the first, at most `max_bytes` of JSON. Raises OSError."""
        with self._locked() as loaded:
            events = loaded.events if limit is None else loaded.events[:limit]
            batch: list[dict[str, Any]] = []
            size = 0
            for _, event in events:
                size += len(_encode(event)) + 1
                if batch and max_bytes is not None and size > max_bytes:
                    break
                batch.append(dict(event))
            return batch

    def ack(self, ids: Iterable[str]) -> int:
        """Remove the events with these ids: the manager has them. Returns how many went.
        Raises OSError."""
        wanted = set(ids)
        if not wanted:
            return 0
        with self._locked() as loaded:
            kept = [(s, e) for s, e in loaded.events if e["id"] not in wanted]
            removed = len(loaded.events) - len(kept)
            if removed:
                self._rewrite(loaded, kept)
            return removed

    def __len__(self) -> int:
        with self._locked() as loaded:
            return len(loaded.events)

    # --- locking and reading ------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[_Loaded]:
        with self._mutex:
            if not self.directory.is_dir():
                self.directory.mkdir(parents=True, exist_ok=True)
                fsync_dir(self.directory.parent)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield self._sync()
            finally:
                os.close(fd)

    def _sync(self) -> _Loaded:
        """Bring the in-memory view up to date with the file: another process may have
        appended to it (read the new lines) or rewritten it (a new header: read it all).
        Called with the lock held."""
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return self._rewrite(_Loaded(os.urandom(4).hex(), 1, []), [])
        with f:
            st = os.fstat(f.fileno())
            header = f.readline(64 * 1024)
            loaded = self._loaded
            same = (
                loaded is not None
                and loaded.header == header
                and loaded.inode == (st.st_dev, st.st_ino)
                and st.st_size >= loaded.offset
            )
            if loaded is not None and same:
                f.seek(loaded.offset)
                if self._consume(loaded, f.read()):
                    return loaded
                f.seek(0)
                header = f.readline(64 * 1024)
            return self._read_all(header, f.read(), (st.st_dev, st.st_ino))

    def _read_all(self, header: bytes, rest: bytes, inode: tuple[int, int]) -> _Loaded:
        try:
            head = json.loads(header)
            if head.get("format") != FORMAT:
                raise ValueError("unknown queue format")
            loaded = _Loaded(str(head["epoch"]), int(head["next"]), [], header, inode,
                             len(header))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            log.error("event queue %s is unreadable (%s); starting a new one", self.path, e)
            return self._rewrite(_Loaded(os.urandom(4).hex(), 1, []), [])
        self._loaded = loaded
        if not self._consume(loaded, rest):
            self._rewrite(loaded, loaded.events)  # drop torn or damaged lines for good
        return loaded

    def _consume(self, loaded: _Loaded, data: bytes) -> bool:
        """Parse the complete lines of `data` into `loaded`. False when a line is damaged,
        or a torn line (no newline: a write cut short by a power loss) ends `data`: appends
        happen under the lock, so an unfinished line seen under it is never finished."""
        clean = True
        end = data.rfind(b"\n") + 1
        if end != len(data):
            clean = False
            log.warning("event queue %s ends with a torn line; it is dropped", self.path)
        for line in data[:end].splitlines():
            try:
                doc = json.loads(line)
                seq, event = int(doc["seq"]), doc["event"]
                if not isinstance(event, dict) or not isinstance(event.get("id"), str):
                    raise ValueError("not an event")
            except (ValueError, KeyError, TypeError) as e:
                log.warning("event queue %s: a damaged line is dropped (%s)", self.path, e)
                clean = False
                continue
            loaded.events.append((seq, event))
            loaded.next_seq = max(loaded.next_seq, seq + 1)
        loaded.offset += end
        return clean

    # --- writing ------------------------------------------------------------------------

    @staticmethod
    def _line(seq: int, event: dict[str, Any]) -> bytes:
        return _encode({"seq": seq, "event": event}) + b"\n"

    def _append_locked(self, loaded: _Loaded, body: dict[str, Any]) -> dict[str, Any]:
        line = self._line(loaded.next_seq, {"id": self._id(loaded), **body})
        if (len(loaded.events) + 1 > self._config.event_queue_max_events
                or loaded.offset + len(line) > self._config.event_queue_max_bytes):
            self._make_room(loaded, len(line))
        event = {"id": self._id(loaded), **body}
        line = self._line(loaded.next_seq, event)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        loaded.events.append((loaded.next_seq, event))
        loaded.next_seq += 1
        loaded.offset += len(line)
        return dict(event)

    @staticmethod
    def _id(loaded: _Loaded) -> str:
        return f"{loaded.epoch}-{loaded.next_seq:06d}"

    def _make_room(self, loaded: _Loaded, incoming: int) -> None:
        """Drop the oldest events so that one more line of `incoming` bytes and an
        `events_dropped` marker fit; the marker counts every event dropped so far."""
        events = list(loaded.events)
        already = 0
        if events and events[0][1].get("kind") == EVENTS_DROPPED:
            already = int((events[0][1].get("figures") or {}).get("dropped", 0))
            events.pop(0)
        marker_bytes = 400  # more than the marker line takes
        budget_bytes = self._config.event_queue_max_bytes - incoming - marker_bytes
        budget_events = self._config.event_queue_max_events - 2
        sizes = [len(self._line(s, e)) for s, e in events]
        total = len(self._header(loaded)) + 1 + sum(sizes)
        dropped = 0
        while events and (len(events) > budget_events or total > budget_bytes):
            events.pop(0)
            total -= sizes.pop(0)
            dropped += 1
        count = already + dropped
        marker = {
            "id": self._id(loaded),
            "kind": EVENTS_DROPPED,
            "time": format_time(utcnow()),
            "reason": f"event queue full: the {count} oldest undelivered event(s) were dropped",
            "figures": {"dropped": count},
        }
        log.warning("%s", marker["reason"])
        kept = [(loaded.next_seq, marker), *events]
        loaded.next_seq += 1
        self._rewrite(loaded, kept)

    @staticmethod
    def _header(loaded: _Loaded) -> bytes:
        # `rev` makes every rewrite's header unique, so other processes notice the rewrite
        # even if the new file reuses the old one's inode number.
        return _encode({"format": FORMAT, "epoch": loaded.epoch, "next": loaded.next_seq,
                        "rev": os.urandom(4).hex()})

    def _rewrite(self, loaded: _Loaded, events: list[tuple[int, dict[str, Any]]]) -> _Loaded:
        """Replace the file with `events`, atomically and durably; return the new view."""
        header = self._header(loaded) + b"\n"
        data = header + b"".join(self._line(s, e) for s, e in events)
        atomic_write_bytes(self.path, data, 0o600)
        st = os.stat(self.path)
        loaded.events = list(events)
        loaded.header = header
        loaded.inode = (st.st_dev, st.st_ino)
        loaded.offset = len(data)
        self._loaded = loaded
        return loaded
