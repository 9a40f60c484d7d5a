"""The probation watch: judge releases on probation, roll back on a breach, keep history.

`HealthMonitor.check` is one round: judge every channel whose serving release is on
probation against its manifest's health policy; on a breach (or when a release on probation
could not even be loaded) call the installer's rollback and swap the still-loaded previous
release in at once. `run` repeats it shortly after inferences are recorded on a release on
probation (`poke`; pokes within `judge_batch_s` make one round), and at least every
`monitor_interval_s`, when it also unloads previous
releases whose probation is over and writes the health history.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from satchel.agent.health.stats import HealthBook
from satchel.agent.health.store import HealthStore
from satchel.agent.server.config import ServerConfig
from satchel.agent.server.events import Event, EventSink
from satchel.agent.server.registry import ModelRegistry, Release, ServingModel
from satchel.bundles.events import ROLLBACK_FAILED, ROLLED_BACK
from satchel.bundles.health import judge

log = logging.getLogger(__name__)

# (state_dir, channel, reason, *, expected_sequence) -> the release now active
RollbackFn = Callable[..., Release]


class HealthMonitor:
    def __init__(
        self,
        state_dir: Path,
        registry: ModelRegistry,
        book: HealthBook,
        *,
        rollback: RollbackFn,
        events: EventSink,
        config: ServerConfig,
        history: HealthStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._state_dir = state_dir
        self._registry = registry
        self._book = book
        self._rollback = rollback
        self._events = events
        self._config = config
        self._history = history
        self._clock = clock
        self._wake = threading.Event()
        self._retry_after: dict[tuple[str, int], float] = {}
        self._last_flush = clock()

    def poke(self) -> None:
        """Ask for a judgement round now (cheap; called after inferences on probation)."""
        self._wake.set()

    def check(self) -> list[str]:
        """Judge every release on probation; roll back those that breach. Returns the
        reasons of the rollbacks done. Never raises: failures become events."""
        now = self._clock()
        done = []
        for failure in self._registry.take_load_failures():
            if failure.on_probation:
                reason = f"health: release failed to load: {failure.reason}"
                if self._roll_back(failure.release.channel, failure.release, reason, {}):
                    done.append(reason)
        for channel, slot in self._registry.slots().items():
            serving = slot.active
            if not serving.on_probation(now):
                continue
            if self._retry_after.get((channel, serving.key.sequence), 0.0) > now:
                continue
            stats = self._book.totals(serving.key)
            breach = judge(serving.policy, stats.figures()).breach
            if breach and self._roll_back(channel, serving.release, breach, stats.to_dict()):
                done.append(breach)
        return done

    def housekeeping(self) -> None:
        """Unload previous releases whose probation is over; write the health history when
        due. Never raises."""
        try:
            self._registry.expire_probation()
        except Exception:  # a housekeeping failure must not stop the monitor
            log.exception("unloading releases past probation failed")
        if self._clock() - self._last_flush >= self._config.health_flush_s:
            self.flush()

    def flush(self) -> None:
        """Write recorded health deltas to the history now; kept for later on failure."""
        self._last_flush = self._clock()
        if self._history is None:
            self._book.drain()
            return
        unwritten = self._history.write(self._book.drain())
        if unwritten:
            self._book.restore(unwritten)

    def run(self, stop: threading.Event) -> None:
        """Judge on every poke, housekeep at least every monitor_interval_s, until `stop`."""
        while not stop.is_set():
            if self._wake.wait(self._config.monitor_interval_s):
                stop.wait(self._config.judge_batch_s)
            self._wake.clear()
            self.check()
            self.housekeeping()
        self.flush()

    def _roll_back(
        self, channel: str, release: Release, reason: str, stats: dict[str, object]
    ) -> bool:
        version, sequence = release.version, release.sequence
        if not self._still_active(channel, sequence):
            return False  # something newer was activated meanwhile: judge that instead
        log.warning("%s %s: %s; rolling back", channel, version, reason)
        try:
            restored = self._rollback(
                self._state_dir, channel, reason, expected_sequence=sequence
            )
        except Exception as e:  # the installer's errors (no earlier release, lock busy, disk)
            self._retry_after[(channel, sequence)] = self._clock() + self._config.rollback_retry_s
            log.error("%s: rollback after %r failed: %s", channel, reason, e)
            self._events.emit(Event(
                ROLLBACK_FAILED, channel, version, sequence, f"{reason}; rollback failed: {e}",
                self._clock(), {"stats": stats},
            ))
            return False
        try:
            self._registry.reload_now()
        except Exception:  # the state watcher swaps it in at its next poll
            log.exception("%s: swapping in the restored release failed", channel)
        serving: ServingModel | None = self._registry.get(channel)
        self._events.emit(Event(
            ROLLED_BACK, channel, version, sequence, reason, self._clock(),
            {
                "stats": stats,
                "to_version": restored.version,
                "to_sequence": restored.sequence,
                "serving_version": serving.key.version if serving else None,
            },
        ))
        return True

    def _still_active(self, channel: str, sequence: int) -> bool:
        try:
            active = self._registry.state.active_release(channel)
        except Exception:  # unreadable now: the rollback itself would fail the same way
            return True
        return active is not None and active.sequence == sequence
