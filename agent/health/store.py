"""Durable, bounded health history on the device: per-minute buckets in a ring of segment files.

Layout: `STATE/health/YYYYMMDDTHHMM.json`, one file per `segment_s` (10 minutes by default)
of UTC time that saw inferences: `{"format": 1, "segment": EPOCH_S, "buckets": [{"channel",
"version", "sequence", "minute", "stats"}]}` with `stats` as `HealthStats.to_dict`. Only the
file of a segment still receiving deltas is rewritten (always through `bundles.durable`), so
a write stays small (flash wear); older files are never touched again, and only the newest
`retention_s / segment_s` files are kept, oldest deleted first. The history is thus bounded
by that many files of at most `max_buckets_per_segment` buckets, and a power cut loses at
most the deltas not yet written (the server writes every few seconds).
"""

from __future__ import annotations

import calendar
import contextlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from satchel.agent.health.stats import Deltas, HealthStats, ReleaseKey
from satchel.bundles.durable import atomic_write_bytes, fsync_dir

log = logging.getLogger(__name__)

HEALTH_DIR = "health"  # STATE/health/: the segment files below
FORMAT = 1
_NAME = "%Y%m%dT%H%M"  # segment file stem, UTC
_CACHED_SEGMENTS = 2  # segment files kept parsed in memory, as deltas arrive for these


@dataclass(frozen=True)
class MinuteBucket:
    """The health of one release during one minute."""

    key: ReleaseKey
    minute: int  # epoch seconds (UTC) at which the minute starts
    stats: HealthStats

    def to_dict(self) -> dict[str, Any]:
        return {
            "channel": self.key.channel,
            "version": self.key.version,
            "sequence": self.key.sequence,
            "minute": self.minute,
            "stats": self.stats.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Any) -> MinuteBucket:
        """Raises ValueError when `d` is not what `to_dict` writes."""
        if not isinstance(d, dict):
            raise ValueError("a health bucket must be an object")
        channel, version = d.get("channel"), d.get("version")
        sequence, minute = d.get("sequence"), d.get("minute")
        if not isinstance(channel, str) or not isinstance(version, str):
            raise ValueError("a health bucket needs a channel and a version")
        if not isinstance(sequence, int) or not isinstance(minute, int):
            raise ValueError("a health bucket needs an integer sequence and minute")
        stats = HealthStats.from_dict(d["stats"])
        return cls(ReleaseKey(channel, version, sequence), minute, stats)


_Segment = dict[tuple[ReleaseKey, int], HealthStats]


class HealthStore:
    """The health history under one directory. Thread-safe; other processes may read the
    files at any time (they are only ever replaced whole)."""

    def __init__(
        self,
        directory: Path,
        *,
        retention_s: int = 48 * 3600,  # seconds of history kept; older files are deleted
        segment_s: int = 600,  # seconds of history per file; divides a day
        max_buckets_per_segment: int = 2000,  # (release, minute) buckets in one file
    ) -> None:
        if segment_s % 60 or 86400 % segment_s:
            raise ValueError("segment_s must be whole minutes that divide a day")
        self.directory = Path(directory)
        self.segment_s = segment_s
        self.max_files = max(1, retention_s // segment_s)
        self.max_buckets_per_segment = max_buckets_per_segment
        self._cache: dict[int, _Segment] = {}
        self._index: dict[ReleaseKey, HealthStats] | None = None  # totals, built on first use
        self._lock = threading.RLock()

    def write(self, deltas: Deltas) -> Deltas:
        """Add per-minute deltas to the history, durably, and drop files past retention.

        Returns the deltas that could not be written (empty when all were), for the caller
        to keep and try again; the error is logged. Never raises.
        """
        with self._lock:
            by_segment: dict[int, Deltas] = {}
            for (key, minute), stats in deltas.items():
                segment = minute - minute % self.segment_s
                by_segment.setdefault(segment, {})[(key, minute)] = stats
            pending = sorted(by_segment.items())
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                while pending:
                    self._write_segment(*pending[0])
                    pending.pop(0)
                self._prune()
            except OSError as e:
                log.warning("health history not written, will retry: %s", e)
            return {slot: stats for _, part in pending for slot, stats in part.items()}

    def _write_segment(self, segment: int, deltas: Deltas) -> None:
        """Merge deltas into one segment file; memory changes only once the file is written.
        Raises OSError."""
        buckets = {slot: stats.copy() for slot, stats in self._cached_segment(segment).items()}
        kept: Deltas = {}
        for slot, stats in deltas.items():
            existing = buckets.get(slot)
            if existing is not None:
                existing.merge(stats)
            elif len(buckets) < self.max_buckets_per_segment:
                buckets[slot] = stats.copy()
            else:
                log.warning("health history segment %d is full; dropping a bucket", segment)
                continue
            kept[slot] = stats
        atomic_write_bytes(self._path(segment), _encode_segment(segment, buckets))
        self._cache[segment] = buckets
        if self._index is not None:
            for (key, _), stats in kept.items():
                self._index.setdefault(key, HealthStats()).merge(stats)

    def buckets(self, since: float | None = None) -> list[MinuteBucket]:
        """Every stored bucket whose minute starts at or after `since` (epoch s), oldest
        first. Unreadable files are skipped (and logged), never raised."""
        with self._lock:
            return self._buckets(since)

    def _buckets(self, since: float | None) -> list[MinuteBucket]:
        out: list[MinuteBucket] = []
        for segment in self._segments():
            if since is not None and segment + self.segment_s <= since:
                continue
            for (key, minute), stats in sorted(self._read_segment(segment).items(),
                                               key=_slot_order):
                if since is None or minute >= since:
                    out.append(MinuteBucket(key, minute, stats))
        return out

    def totals_by_release(self, since: float | None = None) -> dict[ReleaseKey, HealthStats]:
        """The stored buckets since `since` (epoch s), added up per release: the health
        summary a device reports."""
        totals: dict[ReleaseKey, HealthStats] = {}
        for bucket in self.buckets(since):
            totals.setdefault(bucket.key, HealthStats()).merge(bucket.stats)
        return totals

    def totals(self, key: ReleaseKey) -> HealthStats:
        """Everything stored about one release, added up (buckets pruned while this store
        object lived included). Reads the files once, then answers from memory."""
        with self._lock:
            stats = self._totals_index().get(key)
            return stats.copy() if stats else HealthStats()

    def highest_sequence(self, channel: str) -> int | None:
        """The highest release sequence of `channel` that has served inferences in the
        stored history, or None. Answered from memory after the first call."""
        with self._lock:
            sequences = [k.sequence for k in self._totals_index() if k.channel == channel]
        return max(sequences, default=None)

    def _totals_index(self) -> dict[ReleaseKey, HealthStats]:
        if self._index is None:
            self._index = self.totals_by_release()
        return self._index

    def _path(self, segment: int) -> Path:
        return self.directory / (time.strftime(_NAME, time.gmtime(segment)) + ".json")

    def _segments(self) -> list[int]:
        segments = []
        for path in self.directory.glob("*.json"):
            try:
                parsed = time.strptime(path.stem, _NAME)
            except ValueError:
                continue
            segments.append(calendar.timegm(parsed))
        return sorted(segments)

    def _cached_segment(self, segment: int) -> _Segment:
        if segment not in self._cache:
            self._cache[segment] = self._read_segment(segment)
            for old in sorted(self._cache)[:-_CACHED_SEGMENTS]:
                del self._cache[old]
        return self._cache[segment]

    def _read_segment(self, segment: int) -> _Segment:
        if segment in self._cache:
            return {slot: stats.copy() for slot, stats in self._cache[segment].items()}
        path = self._path(segment)
        try:
            doc = json.loads(path.read_bytes())
            if not isinstance(doc, dict) or doc.get("format") != FORMAT:
                raise ValueError("unknown health history format")
            buckets = [MinuteBucket.from_dict(b) for b in doc.get("buckets", [])]
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError) as e:
            log.warning("health history %s is unreadable and is ignored: %s", path.name, e)
            return {}
        return {(b.key, b.minute): b.stats for b in buckets}

    def _prune(self) -> None:
        segments = self._segments()
        stale = segments[: max(0, len(segments) - self.max_files)]
        for segment in stale:
            with contextlib.suppress(FileNotFoundError):
                self._path(segment).unlink()
            self._cache.pop(segment, None)
        if stale:
            fsync_dir(self.directory)


def _slot_order(item: tuple[tuple[ReleaseKey, int], HealthStats]) -> tuple[int, ReleaseKey]:
    (key, minute), _ = item
    return minute, key


def _encode_segment(segment: int, buckets: _Segment) -> bytes:
    doc = {
        "format": FORMAT,
        "segment": segment,
        "buckets": [
            MinuteBucket(key, minute, stats).to_dict()
            for (key, minute), stats in sorted(buckets.items(), key=_slot_order)
        ],
    }
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode("utf-8")
