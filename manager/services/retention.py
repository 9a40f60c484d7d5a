"""Retention: device events and health samples older than the configured age are deleted.

Two settings (`retention_events_s`, `retention_health_s`; 0 keeps for ever) say how long a
row is kept after it arrived (`events.received_at`, the manager's clock, so a device with a
wrong clock can neither hide nor lose its events). Health samples are the events of kind
`health`; every other kind goes by the events setting. The job runs from `satchel db prune`
and from every `satchel serve` process every `retention_interval_s`.

Rows go in batches of `retention_batch`, one short transaction each, so check-ins are never
held up behind one long delete. Several managers may prune at once: on PostgreSQL a batch
first takes a transaction-level advisory lock without waiting, and a manager that does not get
it leaves the work to the one that did (this run ends, skipped); on SQLite every transaction
holds the write lock, so batches simply take turns. Deleting a row twice is impossible either
way: a batch deletes the ids it selected under its own lock.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

import sqlalchemy as sa
import sqlalchemy.orm as so

from satchel.bundles.events import HEALTH
from satchel.bundles.timeutil import now as utc_now
from satchel.manager.config import ManagerConfig
from satchel.manager.db import Database
from satchel.manager.models import Event

log = logging.getLogger("satchel.retention")
PRUNE_LOCK = 0x5A7C_0001  # PostgreSQL advisory lock key of a prune batch
_EVENTS = cast(sa.Table, Event.__table__)


@dataclass(frozen=True)
class Pruned:
    """What one prune deleted."""

    events: int = 0  # events other than health samples
    health: int = 0  # health samples
    skipped: bool = False  # another manager was pruning: this run left it to them

    def __str__(self) -> str:
        if self.skipped:
            return "another manager is pruning; nothing deleted here"
        return f"deleted {self.events} event(s) and {self.health} health sample(s)"


def cutoffs(config: ManagerConfig, at: datetime) -> tuple[datetime | None, datetime | None]:
    """Arrival times before which events and health samples go (None: kept for ever)."""

    def before(keep_s: float) -> datetime | None:
        return at - timedelta(seconds=keep_s) if keep_s > 0 else None

    return before(config.retention_events_s), before(config.retention_health_s)


def enabled(config: ManagerConfig) -> bool:
    """Whether either retention setting deletes anything."""
    return config.retention_events_s > 0 or config.retention_health_s > 0


def _old(before: datetime, health: bool) -> sa.ColumnElement[bool]:
    kind = _EVENTS.c.kind == HEALTH if health else _EVENTS.c.kind != HEALTH
    return sa.and_(_EVENTS.c.received_at < before, kind)


def _batch(session: so.Session, condition: sa.ColumnElement[bool], size: int) -> int | None:
    """Delete up to `size` rows matching `condition`; None when another manager holds the
    prune lock (PostgreSQL)."""
    if session.get_bind().dialect.name == "postgresql":
        got = session.scalar(sa.select(sa.func.pg_try_advisory_xact_lock(PRUNE_LOCK)))
        if not got:
            return None
    ids = sa.select(_EVENTS.c.id).where(condition).order_by(_EVENTS.c.id).limit(size)
    # the ids are read, then deleted: one plain statement on both databases
    chosen = list(session.scalars(ids))
    if not chosen:
        return 0
    session.execute(sa.delete(_EVENTS).where(_EVENTS.c.id.in_(chosen)))
    return len(chosen)


def prune(db: Database, config: ManagerConfig, at: datetime | None = None) -> Pruned:
    """Delete what the retention settings no longer keep, batch by batch. Raises sqlalchemy
    errors, DiskFullError (a database that cannot even log a delete)."""
    events_before, health_before = cutoffs(config, at or utc_now())
    counts = {True: 0, False: 0}
    for health, before in ((False, events_before), (True, health_before)):
        if before is None:
            continue
        condition = _old(before, health)

        def one_batch(session: so.Session, c: sa.ColumnElement[bool] = condition) -> int | None:
            return _batch(session, c, config.retention_batch)

        while True:
            n = db.run(one_batch)
            if n is None:
                return Pruned(counts[False], counts[True], skipped=True)
            counts[health] += n
            if n < config.retention_batch:
                break
    return Pruned(counts[False], counts[True])


class Pruner:
    """A daemon thread pruning every `retention_interval_s` (one per server process)."""

    def __init__(self, db: Database, config: ManagerConfig) -> None:
        self.db, self.config = db, config
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="satchel-retention",
                                        daemon=True)

    def start(self) -> Pruner:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def _loop(self) -> None:
        while not self._stop.wait(self.config.retention_interval_s):
            try:
                pruned = prune(self.db, self.config)
            except Exception as e:  # a failed prune must not end the thread: next time
                log.warning("retention prune failed: %s", str(e).splitlines()[0] if str(e)
                            else type(e).__name__)
                continue
            if pruned.events or pruned.health:
                log.info("retention: %s", pruned)


def start_pruner(db: Database, config: ManagerConfig) -> Pruner | None:
    """Start the periodic prune of a server process, when retention is on and periodic."""
    if not enabled(config) or config.retention_interval_s <= 0:
        return None
    return Pruner(db, config).start()
