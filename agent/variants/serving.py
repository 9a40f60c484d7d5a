"""Every usable variant of a serving release, loaded, and the one that answers.

Memory is spent for safety: all the variants that passed their smoke test on this device stay
loaded while their release serves, so a switch is one attribute assignment (no load, no
warm-up, no failed or delayed request); requests already running keep the model they got.
The device's state picks `current` (`VariantWatcher`, one thread); a request's parameters may
pick another (`pick`). Each variant keeps its own health counters: one that breaches the
release's health policy during probation is disabled on this device (reported, persisted in
the release's `variants.json`), while the release-level judge, which sees only the default
variant's inferences, rolls the release back as before when the default breaches.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from satchel.agent.runtimes import LoadedModel, ModelRuntimeError, get_runtime
from satchel.agent.server.errors import BadRequestError
from satchel.agent.server.events import Event, EventSink
from satchel.agent.variants.install import DISABLED, READY
from satchel.agent.variants.select import (
    Candidate,
    Choice,
    RequestRefused,
    StateSelector,
    choose_for_request,
    request_figures,
)
from satchel.agent.variants.settings import DEFAULT_VARIANT_SETTINGS, VariantSettings
from satchel.agent.variants.state import StateSource, SysfsState
from satchel.agent.variants.status import installed_states, read_runtime, write_runtime
from satchel.bundles.errors import BundleError
from satchel.bundles.events import VARIANT_DISABLED, VARIANT_SWITCHED
from satchel.bundles.health import HealthFigures, judge
from satchel.bundles.manifest import ModelEntry
from satchel.bundles.smoke import percentile
from satchel.bundles.variants import Policy, Reading, Variants, parse_policy

if TYPE_CHECKING:
    from satchel.agent.server.config import ServerConfig
    from satchel.agent.server.registry import ModelRegistry, Release, ServingModel

log = logging.getLogger(__name__)

JUDGE_EVERY = 10  # a variant on probation is judged every this many of its inferences


@dataclass
class VariantHealth:
    """One variant's inferences since its release was loaded, and its latest latencies."""

    window: int
    inferences: int = 0
    errors: int = 0
    nan: int = 0
    nonfinite_inputs: int = 0
    latencies: deque[float] = field(default_factory=deque)  # ms, the latest `window`
    _p95: float | None = None
    _p95_at: int = -1
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, latency_ms: float, *, error: bool, nonfinite: bool,
            nonfinite_input: bool) -> int:
        """Count one inference; returns the count so far."""
        with self._lock:  # request threads count at once
            self.inferences += 1
            self.errors += error
            self.nan += nonfinite and not nonfinite_input
            self.nonfinite_inputs += nonfinite_input
            if not error:
                self.latencies.append(latency_ms)
                if len(self.latencies) > self.window:
                    self.latencies.popleft()
            return self.inferences

    def p95(self) -> float | None:
        """p95 of the latest latencies, recomputed every 16 inferences."""
        if not self.latencies:
            return None
        if self._p95 is None or self.inferences - self._p95_at >= 16:
            with self._lock:
                latest = list(self.latencies)
            self._p95 = percentile(latest, 95)
            self._p95_at = self.inferences
        return self._p95

    def figures(self) -> HealthFigures:
        return HealthFigures(inferences=self.inferences, errors=self.errors, nan=self.nan,
                             p95_latency_ms=self.p95(), nonfinite_inputs=self.nonfinite_inputs)


def load_entry(release: Release, entry: ModelEntry, config: ServerConfig) -> LoadedModel:
    """Load one model of a release and warm it up on zeros. Raises ModelRuntimeError,
    KeyError."""
    adapter = get_runtime(entry.runtime)
    path = Path(release.path) / entry.file
    if entry.signature is not None:
        model = adapter.load(path, threads=config.runtime_threads, signature=entry.signature,
                             acceleration=config.acceleration)
    else:
        model = adapter.load(path, threads=config.runtime_threads,
                             acceleration=config.acceleration)
    feeds = {s.name: np.zeros([d if d > 0 else 1 for d in s.shape], dtype=s.dtype)
             for s in model.inputs}
    for _ in range(config.warmup_runs):
        model.run(feeds)
    return model


class VariantSet:
    """The variants of one loaded release. `pick` and `record` run on request threads without
    locks (reads of references the watcher replaces whole); `update` on the watcher's."""

    def __init__(self, release: Release, variants: Variants, models: Mapping[str, LoadedModel],
                 states: Mapping[str, Any], settings: VariantSettings, events: EventSink,
                 clock: Callable[[], float], probation_until: float | None,
                 policy: Policy) -> None:
        self.release = release
        self.channel = release.channel
        self.spec = variants
        self.levels = {v.name: v.accuracy_level for v in variants.variants}
        self.default = variants.default
        self.models = dict(models)
        self.states = {n: dict(s) for n, s in states.items()}  # as the install left them
        self.settings = settings
        self._events = events
        self._clock = clock
        self.probation_until = probation_until
        self.health = {n: VariantHealth(settings.live_window) for n in variants.names}
        runtime = read_runtime(Path(release.path).parent)
        disabled = runtime.get("disabled")
        self.disabled: dict[str, str] = dict(disabled) if isinstance(disabled, dict) else {}
        for name in variants.names:
            if name not in self.models and name not in self.disabled:
                self.disabled[name] = self.states.get(name, {}).get("reason") or "not loaded"
        self.seconds: dict[str, float] = {n: float(v) for n, v in
                                          (runtime.get("seconds") or {}).items()}
        self.selector = StateSelector(policy, self.default, settings.dwell_s)
        self.current: Choice = Choice(self.default, "default variant")
        self._since = clock()
        self.switches: dict[tuple[str, str], int] = {}
        self.servings: dict[str, ServingModel] = {}
        self._lock = threading.Lock()  # disabling and switching

    # --- the request path ---------------------------------------------------------------

    def usable(self) -> list[str]:
        return [n for n in self.spec.names if n in self.models and n not in self.disabled]

    def pick(self, serving: ServingModel, parameters: Mapping[str, Any]) -> ServingModel:
        """The serving model of the variant answering a request to `serving` (the release's
        default-variant model, as the registry holds it now) with `parameters`. Raises
        BadRequestError in one line when no variant meets the request's figures."""
        self.probation_until = serving.probation_until
        name = self.current.variant
        if "max_latency_ms" in parameters or "accuracy_level" in parameters:
            try:
                latency, level = request_figures(parameters)
                name = choose_for_request(self.channel, self.candidates(), name, latency, level)
            except RequestRefused as e:
                raise BadRequestError(str(e)) from None
        if name == self.default:
            return serving
        mine = self.servings.get(name)
        if mine is None or mine.release is not serving.release \
                or mine.probation_until != serving.probation_until:
            model = self.models[name]  # variants may mix runtimes (an ONNX full, a TFLite lite)
            mine = replace(serving, model=model, variant=name,
                           flexible_batch=model.runtime == "tflite")
            self.servings[name] = mine
        return mine

    def candidates(self) -> list[Candidate]:
        found = []
        for name in self.usable():
            health = self.health[name]
            live = health.p95() if len(health.latencies) >= self.settings.min_live_samples \
                else None
            smoke = self.states.get(name, {}).get("p95_ms")
            found.append(Candidate(name, self.levels[name], live if live is not None else smoke))
        return found

    def record(self, serving: ServingModel, latency_ms: float, *, error: bool, nonfinite: bool,
               nonfinite_input: bool) -> bool:
        """Count one inference of `serving`'s variant; True when it is not the default (its
        health is judged here, not in the release's counters)."""
        name = serving.variant or self.default
        health = self.health.get(name)
        if health is None:
            return False
        count = health.add(latency_ms, error=error, nonfinite=nonfinite,
                           nonfinite_input=nonfinite_input)
        if name == self.default:
            return False
        if count % JUDGE_EVERY == 0 and self._on_probation():
            breach = judge(serving.policy, health.figures()).breach
            if breach:
                self.disable(name, breach)
        return True

    def _on_probation(self) -> bool:
        until = self.probation_until
        return until is not None and self._clock() < until

    # --- switching and disabling ------------------------------------------------------

    def disable(self, name: str, reason: str) -> None:
        """Stop using variant `name` on this device (kept disabled for this release), switch
        away from it, report it."""
        with self._lock:
            if name in self.disabled or name == self.default:
                return
            self.disabled[name] = reason
            log.warning("%s %s: variant %s disabled: %s", self.channel, self.release.version,
                        name, reason)
            figures = self.health[name].figures().to_summary()
            self._emit(VARIANT_DISABLED, f"variant {name} disabled: {reason}",
                       {"variant": name, "health": figures})
            if self.current.variant == name:
                self._switch(Choice(self.default, f"variant {name} disabled"), Reading())
            else:
                self._persist()

    def update(self, reading: Reading, now: float) -> Choice:
        """Choose from the device's state now; switch when the choice changes."""
        with self._lock:
            choice = self.selector.choose(reading, now, set(self.usable()))
            if choice.variant != self.current.variant:
                self._switch(choice, reading)
            else:
                self.current = choice
            return self.current

    def _switch(self, choice: Choice, reading: Reading) -> None:
        before = self.current.variant
        now = self._clock()
        self.seconds[before] = self.seconds.get(before, 0.0) + max(0.0, now - self._since)
        self._since = now
        self.current = choice  # the swap: requests from now on get the new variant
        key = (before, choice.variant)
        self.switches[key] = self.switches.get(key, 0) + 1
        log.info("%s: variant %s -> %s (%s)", self.channel, before, choice.variant, choice.reason)
        self._emit(VARIANT_SWITCHED, f"variant {before} -> {choice.variant}: {choice.reason}",
                   {"from": before, "to": choice.variant, "why": choice.reason,
                    "state": reading.to_dict(),
                    "seconds": {k: round(v, 3) for k, v in self.time_in().items()}})
        self._persist()

    def time_in(self) -> dict[str, float]:
        """Seconds spent in each variant since the release was loaded (the current included)."""
        seconds = dict(self.seconds)
        name = self.current.variant
        seconds[name] = seconds.get(name, 0.0) + max(0.0, self._clock() - self._since)
        return seconds

    def _emit(self, kind: str, reason: str, details: dict[str, Any]) -> None:
        self._events.emit(Event(kind, self.channel, self.release.version, self.release.sequence,
                                reason, self._clock(), details))

    def persist(self) -> None:
        with self._lock:
            self._persist()

    def _persist(self) -> None:
        doc = {"current": self.current.variant, "reason": self.current.reason,
               "disabled": dict(self.disabled),
               "seconds": {k: round(v, 3) for k, v in self.time_in().items()},
               "at": round(self._clock(), 3)}  # when `seconds` were counted
        try:
            write_runtime(Path(self.release.path).parent, doc)
        except OSError as e:  # the release may have been pruned meanwhile
            log.warning("%s: cannot write variants.json: %s", self.channel, e)

    def status(self) -> dict[str, Any]:
        """Every variant's state now, for metrics and tests."""
        out = {}
        for name in self.spec.names:
            state = self.states.get(name, {}).get("state", READY)
            reason = self.states.get(name, {}).get("reason", "")
            if state == READY and name in self.disabled:
                state, reason = DISABLED, self.disabled[name]
            out[name] = {"state": state, "reason": reason,
                         "p95_ms": self.states.get(name, {}).get("p95_ms"),
                         "live_p95_ms": self.health[name].p95(),
                         "inferences": self.health[name].inferences}
        return out


def with_variants(serving: ServingModel, config: ServerConfig, events: EventSink,
                  clock: Callable[[], float] = time.time) -> ServingModel:
    """`serving` (its release's default variant, loaded) with every other usable variant
    loaded beside it. A variant dropped at install is not loaded; one that fails to load is
    disabled. The device's policy override (`[variants] policy`) replaces the release's."""
    release = serving.release
    spec = release.manifest.variants
    assert spec is not None
    settings: VariantSettings = getattr(config, "variants", DEFAULT_VARIANT_SETTINGS)
    states = installed_states(Path(release.path).parent)
    entries = {m.name: m for m in release.manifest.models}
    models: dict[str, LoadedModel] = {spec.default: serving.model}
    for variant in spec.variants:
        if variant.name == spec.default or states.get(variant.name, {}).get("state") != READY:
            continue
        try:
            models[variant.name] = load_entry(release, entries[variant.model], config)
        except (ModelRuntimeError, KeyError) as e:
            log.error("%s %s: variant %s cannot load: %s", release.channel, release.version,
                      variant.name, e)
    policy = spec.policy
    if settings.policy:
        try:
            policy = spec.with_policy(parse_policy(settings.policy, "[variants] policy")).policy
        except BundleError as e:  # checked when the settings load; here for a release's names
            log.error("%s: the device's variant policy is not used: %s", release.channel, e)
    found = VariantSet(release, spec, models, states, settings, events, clock,
                       serving.probation_until, policy)
    found.persist()  # `status` says which variant answers from now on
    return replace(serving, variant=spec.default, variants=found)


class VariantWatcher:
    """Reads the device's state every `poll_s` and lets each serving release with variants
    choose. One thread (`run`); `check` is one round."""

    def __init__(self, registry: ModelRegistry, settings: VariantSettings,
                 source: StateSource | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.settings = settings
        self.source: StateSource = source or SysfsState(settings)
        self._clock = clock
        self.last: Reading = Reading()

    def sets(self) -> list[VariantSet]:
        found = []
        for slot in self.registry.slots().values():
            if slot.active.variants is not None:
                found.append(slot.active.variants)
        return found

    def check(self) -> None:
        """One round. Never raises."""
        sets = self.sets()
        if not sets:
            return
        try:
            reading = self.source.read()
        except Exception:  # a source must not stop the watcher
            log.exception("reading the device state failed")
            return
        self.last = reading
        now = self._clock()
        for found in sets:
            try:
                found.update(reading, now)
            except Exception:
                log.exception("%s: choosing a variant failed", found.channel)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.check()
            stop.wait(self.settings.poll_s)
