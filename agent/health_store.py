"""Durable, bounded health history on the device: per-minute buckets in a ring of hour files.

Layout: `STATE/health/YYYYMMDDTHH.json`, one file per UTC hour that saw inferences:
`{"format": 1, "hour": EPOCH_S, "buckets": [{"channel", "version", "sequence", "minute",
"stats"}]}` with `stats` as `HealthStats.to_dict`. Only the file of an hour still receiving
deltas is rewritten (always through `bundles.durable`); older files are never touched again,
and only the newest `retention_hours` files are kept. So the history is bounded by
retention_hours x max_buckets_per_hour buckets, and a power cut loses at most the deltas
not yet written (the server writes every few seconds).
"""

from __future__ import annotations

import calendar
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.health import Deltas, HealthStats, ReleaseKey
from bundles.durable import atomic_write_bytes, fsync_dir

log = logging.getLogger(__name__)

FORMAT = 1
HOUR_S = 3600  # seconds in one history file
_CACHED_HOURS = 2  # hour files kept parsed in memory, as deltas arrive for these


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


_Hour = dict[tuple[ReleaseKey, int], HealthStats]


class HealthStore:
    """The health history under one directory. Not thread-safe: one writer (the server's
    monitor thread) calls `write`; readers may call the others from the same thread."""

    def __init__(
        self,
        directory: Path,
        *,
        retention_hours: int = 48,  # hour files kept; older ones are deleted
        max_buckets_per_hour: int = 6000,  # (release, minute) buckets in one hour file
    ) -> None:
        self.directory = Path(directory)
        self.retention_hours = retention_hours
        self.max_buckets_per_hour = max_buckets_per_hour
        self._cache: dict[int, _Hour] = {}

    def write(self, deltas: Deltas) -> None:
        """Add per-minute deltas to the history, durably, and drop hour files past retention.

        Raises OSError when the history cannot be written (the caller keeps the deltas).
        """
        if not deltas:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        by_hour: dict[int, Deltas] = {}
        for (key, minute), stats in deltas.items():
            by_hour.setdefault(minute - minute % HOUR_S, {})[(key, minute)] = stats
        for hour, hour_deltas in sorted(by_hour.items()):
            buckets = self._cached_hour(hour)
            for slot, stats in hour_deltas.items():
                existing = buckets.get(slot)
                if existing is not None:
                    existing.merge(stats)
                elif len(buckets) < self.max_buckets_per_hour:
                    buckets[slot] = stats.copy()
                else:
                    log.warning("health history for hour %d is full; dropping a bucket", hour)
            atomic_write_bytes(self._path(hour), _encode_hour(hour, buckets))
        self._prune()

    def buckets(self, since: float | None = None) -> list[MinuteBucket]:
        """Every stored bucket whose minute starts at or after `since` (epoch s), oldest
        first. Unreadable files are skipped (and logged), never raised."""
        out: list[MinuteBucket] = []
        for hour in self._hours():
            if since is not None and hour + HOUR_S <= since:
                continue
            for (key, minute), stats in sorted(self._read_hour(hour).items(), key=_slot_order):
                if since is None or minute >= since:
                    out.append(MinuteBucket(key, minute, stats))
        return out

    def totals(self, key: ReleaseKey) -> HealthStats:
        """Everything stored about one release, added up."""
        total = HealthStats()
        for bucket in self.buckets():
            if bucket.key == key:
                total.merge(bucket.stats)
        return total

    def highest_sequence(self, channel: str) -> int | None:
        """The highest release sequence of `channel` that has served inferences in the
        stored history, or None."""
        sequences = [b.key.sequence for b in self.buckets() if b.key.channel == channel]
        return max(sequences, default=None)

    def _path(self, hour: int) -> Path:
        return self.directory / (time.strftime("%Y%m%dT%H", time.gmtime(hour)) + ".json")

    def _hours(self) -> list[int]:
        hours = []
        for path in self.directory.glob("*.json"):
            try:
                parsed = time.strptime(path.stem, "%Y%m%dT%H")
            except ValueError:
                continue
            hours.append(calendar.timegm(parsed))
        return sorted(hours)

    def _cached_hour(self, hour: int) -> _Hour:
        if hour not in self._cache:
            self._cache[hour] = self._read_hour(hour)
            for old in sorted(self._cache)[:-_CACHED_HOURS]:
                del self._cache[old]
        return self._cache[hour]

    def _read_hour(self, hour: int) -> _Hour:
        if hour in self._cache:
            return {slot: stats.copy() for slot, stats in self._cache[hour].items()}
        path = self._path(hour)
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
        hours = self._hours()
        stale = hours[: max(0, len(hours) - self.retention_hours)]
        for hour in stale:
            with contextlib.suppress(FileNotFoundError):
                self._path(hour).unlink()
            self._cache.pop(hour, None)
        if stale:
            fsync_dir(self.directory)


def _slot_order(item: tuple[tuple[ReleaseKey, int], HealthStats]) -> tuple[int, ReleaseKey]:
    (key, minute), _ = item
    return minute, key


def _encode_hour(hour: int, buckets: _Hour) -> bytes:
    doc = {
        "format": FORMAT,
        "hour": hour,
        "buckets": [
            MinuteBucket(key, minute, stats).to_dict()
            for (key, minute), stats in sorted(buckets.items(), key=_slot_order)
        ],
    }
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode("utf-8")
