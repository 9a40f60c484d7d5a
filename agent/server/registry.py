"""Which release of each channel is serving, with hot swap.

A new release is loaded beside the serving one (load, then a warm-up inference) and swapped
in by replacing the registry's channel map with one assignment: a request reads the map
once and keeps the model it got, so no request fails or waits during a swap. While the new
release is on probation the one it replaced stays loaded, so a rollback is a swap too.
Replaced models are not closed: they are freed when the last request holding them ends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from satchel.agent.errors import AgentError
from satchel.agent.health.stats import HealthBook, ReleaseKey, probation_end
from satchel.agent.health.store import HealthStore
from satchel.agent.runtimes import LoadedModel, ModelRuntimeError, TensorSpec, get_runtime
from satchel.agent.server.config import ServerConfig
from satchel.agent.server.errors import ReleaseLoadError
from satchel.agent.server.events import Event, EventSink
from satchel.agent.server.metrics import ChannelInfo
from satchel.bundles.events import LOAD_FAILED, SERVING
from satchel.bundles.manifest import HealthPolicy, Manifest

if TYPE_CHECKING:
    from satchel.agent.variants.serving import VariantSet

log = logging.getLogger(__name__)


class Release(Protocol):
    """An installed release, as `agent.state` describes it."""

    @property
    def channel(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def sequence(self) -> int: ...
    @property
    def path(self) -> Path: ...  # directory of the unpacked payloads
    @property
    def manifest(self) -> Manifest: ...
    @property
    def activated_at(self) -> datetime | float: ...


class StateView(Protocol):
    """What the server reads of the device state (`agent.state.DeviceState`)."""

    def channels(self) -> list[str]: ...
    def active_release(self, channel: str) -> Release | None: ...
    def previous_release(self, channel: str) -> Release | None: ...
    def kept_releases(self, channel: str) -> Sequence[Release]: ...
    def generation(self) -> int: ...


ModelLoader = Callable[[Release, ServerConfig], LoadedModel]


def epoch_seconds(value: datetime | float) -> float:
    return value.timestamp() if isinstance(value, datetime) else float(value)


def same_release(a: Release, b: Release) -> bool:
    return (a.channel, a.sequence, a.version, str(a.path)) == (
        b.channel, b.sequence, b.version, str(b.path)
    )


def load_model(release: Release, config: ServerConfig) -> LoadedModel:
    """Load a release's (first) model with its runtime and run warm-up inferences on zeros.

    Raises ReleaseLoadError.
    """
    entry = release.manifest.models[0]
    path = Path(release.path) / entry.file
    try:
        adapter = get_runtime(entry.runtime)
        if entry.signature is not None:
            model = adapter.load(path, threads=config.runtime_threads, signature=entry.signature,
                                 acceleration=config.acceleration)
        else:
            model = adapter.load(path, threads=config.runtime_threads,
                                 acceleration=config.acceleration)
        feeds = {spec.name: _warmup_feed(spec) for spec in model.inputs}
        for _ in range(config.warmup_runs):
            model.run(feeds)
    except (ModelRuntimeError, KeyError) as e:
        raise ReleaseLoadError(
            f"{release.channel} {release.version}: cannot load its model: {e}"
        ) from e
    return model


def _warmup_feed(spec: TensorSpec) -> np.ndarray:
    """Zeros of the input's shape (dynamic dimensions 1); empty strings for a BYTES input."""
    shape = [d if d > 0 else 1 for d in spec.shape]
    if spec.datatype == "BYTES":
        return np.full(shape, "", dtype=object)
    return np.zeros(shape, dtype=spec.dtype)


@dataclass(frozen=True, eq=False)
class ServingModel:
    """A loaded release, ready to answer requests."""

    release: Release
    model: LoadedModel
    key: ReleaseKey
    policy: HealthPolicy
    probation_until: float | None  # epoch seconds; None when the release is not judged
    flexible_batch: bool  # the runtime resizes the first dimension (TFLite)
    variant: str | None = None  # the variant this model is, in a release with variants
    variants: VariantSet | None = None  # all of them, and which answers (agent/variants)

    def on_probation(self, now: float) -> bool:
        return self.probation_until is not None and now < self.probation_until


@dataclass(frozen=True)
class ChannelSlot:
    active: ServingModel
    previous: ServingModel | None  # kept loaded while `active` is on probation


@dataclass(frozen=True)
class LoadFailure:
    release: Release
    reason: str
    on_probation: bool


class ModelRegistry:
    """The serving map, kept in step with the device state.

    `get` is lock-free; `reload_now`, `poll` and `expire_probation` are serialized by a lock
    and may be called from any thread.
    """

    def __init__(
        self,
        state: StateView,
        *,
        config: ServerConfig,
        book: HealthBook,
        events: EventSink,
        history: HealthStore | None = None,
        loader: ModelLoader = load_model,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._state = state
        self._config = config
        self._book = book
        self._events = events
        self._history = history
        self._loader = loader
        self._clock = clock
        self._lock = threading.RLock()
        self._slots: Mapping[str, ChannelSlot] = {}
        self._kept: Mapping[str, tuple[Release, ...]] = {}  # as of the last reload
        self._load_errors: dict[tuple[str, int], str] = {}  # (channel, sequence): reason
        self._known: frozenset[str] = frozenset()
        self._generation: int | None = None
        self._failures: list[LoadFailure] = []
        self._failed: set[tuple[str, int, str]] = set()
        self._candidates: Mapping[str, Any] = {}  # channel -> agent.staging Staging
        self.stager: Any = None  # agent.staging.stager.Stager; None: candidates not served
        self._swaps: dict[str, int] = {}
        self._rollbacks: dict[str, int] = {}
        self.loaded_once = threading.Event()

    @property
    def state(self) -> StateView:
        return self._state

    # --- the request path: no locks ---------------------------------------------------

    def get(self, channel: str) -> ServingModel | None:
        slot = self._slots.get(channel)
        return slot.active if slot else None

    def candidate(self, channel: str) -> Any:
        """The channel's release judged in shadow or ramp (`agent.staging.stager.Staging`),
        or None."""
        return self._candidates.get(channel)

    def is_known(self, channel: str) -> bool:
        return channel in self._known

    def slots(self) -> Mapping[str, ChannelSlot]:
        return self._slots

    def slot(self, channel: str) -> ChannelSlot | None:
        return self._slots.get(channel)

    def loaded(self, channel: str, version: str) -> ServingModel | None:
        """The loaded release of `channel` with `version`: the active one, or the one it
        replaced while the new one is on probation; None when that version is not loaded."""
        slot = self._slots.get(channel)
        if slot is None:
            return None
        for serving in (slot.active, slot.previous):
            if serving is not None and serving.key.version == version:
                return serving
        return None

    def kept(self, channel: str) -> tuple[Release, ...]:
        """The releases the device keeps for `channel` (active first), as of the last reload."""
        return self._kept.get(channel, ())

    def known_channels(self) -> list[str]:
        return sorted(self._known | set(self._slots))

    def load_error(self, release: Release) -> str | None:
        """Why `release` failed to load, if it did since the state last moved."""
        return self._load_errors.get((release.channel, release.sequence))

    # --- keeping in step with the state -----------------------------------------------

    def poll(self) -> bool:
        """Reload when the state's generation changed since the last reload; True if it did.

        Raises whatever the state raises when it cannot be read.
        """
        generation = self._state.generation()
        if generation == self._generation:
            return False
        self.reload_now()
        return True

    def reload_now(self) -> None:
        """Bring every channel's serving release in line with the state now.

        Releases that fail to load are recorded (see `take_load_failures`), and a channel
        whose releases cannot be read is logged; either keeps serving what it served.
        Raises whatever the state raises when its channel list or generation is unreadable.
        """
        with self._lock:
            generation = self._state.generation()
            if generation != self._generation:
                self._failed.clear()  # the state moved on: failed releases may load now
                self._load_errors.clear()
            channels = sorted(self._state.channels())
            kept: dict[str, tuple[Release, ...]] = {}
            for channel in channels:
                try:
                    self._sync_channel(channel)
                    self._sync_candidate(channel)
                    kept[channel] = tuple(self._state.kept_releases(channel))
                except AgentError as e:  # one damaged channel must not stop the others
                    log.error("%s: cannot read its releases: %s", channel, e)
                    kept[channel] = self._kept.get(channel, ())
            for gone in set(self._slots) - set(channels):
                self._assign(gone, None)
            self._kept = kept
            self._known = frozenset(channels)
            self._generation = generation
            self._book.forget(self._loaded_keys())
            self.loaded_once.set()

    def expire_probation(self) -> None:
        """Unload the previous release of channels whose probation is over."""
        now = self._clock()
        with self._lock:
            for channel, slot in list(self._slots.items()):
                if slot.previous is not None and not slot.active.on_probation(now):
                    self._assign(channel, ChannelSlot(slot.active, None))

    def take_load_failures(self) -> list[LoadFailure]:
        with self._lock:
            failures, self._failures = self._failures, []
        return failures

    def channel_info(self) -> list[ChannelInfo]:
        now = self._clock()
        slots = self._slots
        info = []
        for channel in sorted(self._known | set(slots)):
            active = slots[channel].active if channel in slots else None
            info.append(ChannelInfo(
                channel=channel,
                version=active.key.version if active else None,
                sequence=active.key.sequence if active else None,
                on_probation=bool(active and active.on_probation(now)),
                swaps=self._swaps.get(channel, 0),
                rollbacks=self._rollbacks.get(channel, 0),
            ))
        return info

    # --- internals ----------------------------------------------------------------------

    def _loaded_keys(self) -> set[ReleaseKey]:
        keys = set()
        for staging in self._candidates.values():
            keys.add(staging.key)
        for slot in self._slots.values():
            keys.add(slot.active.key)
            if slot.previous is not None:
                keys.add(slot.previous.key)
        return keys

    def _assign(self, channel: str, slot: ChannelSlot | None) -> None:
        slots = dict(self._slots)
        if slot is None:
            slots.pop(channel, None)
        else:
            slots[channel] = slot
        self._slots = slots  # the swap: one reference assignment

    def _sync_channel(self, channel: str) -> None:
        release = self._state.active_release(channel)
        slot = self._slots.get(channel)
        if release is None:
            if slot is not None:
                self._assign(channel, None)
            return
        if slot is not None and same_release(slot.active.release, release):
            return
        if slot is not None and slot.previous and same_release(slot.previous.release, release):
            restored = replace(slot.previous, probation_until=None)
            self._swap_in(channel, ChannelSlot(restored, None), slot, loaded_ms=0.0)
            return
        staged = self._candidates.get(channel)
        if slot is not None and staged is not None and same_release(staged.serving.release,
                                                                    release):
            # the candidate judged in shadow and ramp is active now: the same loaded model
            policy = release.manifest.health_policy
            serving = replace(staged.serving, release=release, probation_until=probation_end(
                policy, epoch_seconds(release.activated_at)))
            self._drop_candidate(channel)
            self._swap_in(channel, ChannelSlot(serving, replace(slot.active,
                                                                probation_until=None)),
                          slot, loaded_ms=0.0)
            return
        started = time.perf_counter()
        serving = self._serving(release, slot)
        if serving is None:
            return
        loaded_ms = (time.perf_counter() - started) * 1000
        previous = None
        if serving.on_probation(self._clock()):
            previous = self._previous_for(channel, slot)
        self._swap_in(channel, ChannelSlot(serving, previous), slot, loaded_ms)

    def _sync_candidate(self, channel: str) -> None:
        """Load (or drop) the release the state judges in shadow or ramp for `channel`."""
        stager = self.stager
        reader = getattr(self._state, "candidate_release", None)
        release = reader(channel) if stager is not None and reader is not None else None
        staged = self._candidates.get(channel)
        if release is None or channel not in self._slots:
            if staged is not None:
                self._drop_candidate(channel)
            return
        if staged is not None and same_release(staged.serving.release, release):
            return
        if staged is not None:
            self._drop_candidate(channel)
        serving = self._serving(release, None, judged=False)
        if serving is None:
            return
        from satchel.agent.staging.record import read_candidate
        from satchel.agent.state import Layout

        record = read_candidate(Layout(stager.state_dir), channel)
        if record is None or record.sequence != release.sequence:
            return
        staging = stager.begin(serving, record.first_stage, record.shadow_skipped,
                               self._slots[channel].active.key)
        if staging is not None:
            candidates = dict(self._candidates)
            candidates[channel] = staging
            self._candidates = candidates

    def _drop_candidate(self, channel: str) -> None:
        candidates = dict(self._candidates)
        staging = candidates.pop(channel, None)
        self._candidates = candidates
        if staging is not None and self.stager is not None:
            self.stager.end(staging)

    def _previous_for(self, channel: str, slot: ChannelSlot | None) -> ServingModel | None:
        """The rollback target to keep loaded: the release the state would roll back to."""
        target = self._state.previous_release(channel)
        if target is None:
            return None
        if slot is not None:
            for candidate in (slot.active, slot.previous):
                if candidate is not None and same_release(candidate.release, target):
                    return replace(candidate, probation_until=None)
        return self._serving(target, None, judged=False)

    def _serving(
        self, release: Release, slot: ChannelSlot | None, *, judged: bool = True
    ) -> ServingModel | None:
        marker = (release.channel, release.sequence, str(release.path))
        if marker in self._failed:
            return None
        try:
            model = self._loader(release, self._config)
        except ReleaseLoadError as e:
            self._failed.add(marker)
            self._record_failure(release, str(e), judged)
            return None
        key = ReleaseKey(release.channel, release.version, release.sequence)
        if self._history is not None:
            self._book.seed(key, self._history.totals(key))
        policy = release.manifest.health_policy
        probation_until = None
        if judged and not self._is_restored(release, slot):
            probation_until = probation_end(policy, epoch_seconds(release.activated_at))
        serving = ServingModel(
            release=release,
            model=model,
            key=key,
            policy=policy,
            probation_until=probation_until,
            flexible_batch=model.runtime == "tflite",
        )
        if release.manifest.variants is None:
            return serving
        from satchel.agent.variants.serving import with_variants  # loads the other variants

        return with_variants(serving, self._config, self._events, self._clock)

    def _is_restored(self, release: Release, slot: ChannelSlot | None) -> bool:
        """A release older than one this channel already served came back by a rollback;
        it is not judged again (judging it could strip the device release by release)."""
        served = [slot.active.key.sequence] if slot is not None else []
        if self._history is not None:
            highest = self._history.highest_sequence(release.channel)
            if highest is not None:
                served.append(highest)
        return any(release.sequence < s for s in served)

    def _record_failure(self, release: Release, reason: str, judged: bool) -> None:
        log.error("%s", reason)
        self._load_errors[(release.channel, release.sequence)] = reason
        now = self._clock()
        policy = release.manifest.health_policy
        on_probation = judged and now < probation_end(policy, epoch_seconds(release.activated_at))
        self._failures.append(LoadFailure(release, reason, on_probation))
        self._events.emit(Event(
            LOAD_FAILED, release.channel, release.version, release.sequence, reason, now
        ))

    def _swap_in(
        self, channel: str, new: ChannelSlot, old: ChannelSlot | None, loaded_ms: float
    ) -> None:
        self._assign(channel, new)
        self._swaps[channel] = self._swaps.get(channel, 0) + 1
        before = old.active.key if old is not None else None
        now_key = new.active.key
        if before is not None and now_key.sequence < before.sequence:
            self._rollbacks[channel] = self._rollbacks.get(channel, 0) + 1
        log.info("%s: now serving %s (sequence %d)", channel, now_key.version, now_key.sequence)
        self._events.emit(Event(
            SERVING, channel, now_key.version, now_key.sequence,
            time=self._clock(),
            details={
                "replaced_version": before.version if before else None,
                "replaced_sequence": before.sequence if before else None,
                "load_ms": round(loaded_ms, 3),
                "on_probation": new.active.on_probation(self._clock()),
            },
        ))
