"""The inference server's side of staged activation: shadow copies, the traffic ramp, and
the decisions at the end of each stage.

`Staging` is one channel's candidate, loaded beside the active release. On the request path
(lock-light, never waiting for the candidate):
- shadow: `offer` queues a copy of a share of the requests the active release answered
  (its inputs and outputs); the stager's one worker thread runs the candidate on them later
  and compares with the smoke test's comparison (`bundles.smoke`), per output kind. When
  the queue is full the copy is dropped and counted; the worker rests between copies so the
  shadow takes at most `shadow_cpu_share` of a core.
- ramp: `route` picks the candidate for exactly `percent`% of requests; `answered` counts
  what it did, and a breach of its health policy sends every request back to the active
  release at once (the next `route` says no), before the disk learns of it.
The worker then refuses the candidate (`lifecycle.refuse_candidate`) or, once the last
step passed, activates it (`lifecycle.activate_candidate`) and swaps it in: it is the same
loaded model, now active and on probation. Events say each step, with figures.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from satchel.agent.config import DEFAULT_CONFIG, AgentConfig
from satchel.agent.health.stats import has_nonfinite
from satchel.agent.staging.record import (
    STAGE_RAMP,
    STAGE_SHADOW,
    write_figures,
)
from satchel.agent.state import Layout
from satchel.bundles.activation import (
    REASON_DISAGREEMENT,
    REASON_LOW_MARGIN,
    REASON_NONFINITE,
    ActivationPolicy,
)
from satchel.bundles.events import (
    ACTIVATED,
    RAMP_COMPLETED,
    RAMP_FAILED,
    RAMP_STEP,
    SHADOW_FAILED,
    SHADOW_PASSED,
)
from satchel.bundles.health import HealthFigures, judge
from satchel.bundles.judge import SmokeJudge
from satchel.bundles.smoke import (
    detect_kind,
    percentile,
    smoke_kinds,
)
from satchel.bundles.timeutil import format_time, utcnow

if TYPE_CHECKING:
    from satchel.agent.server.events import EventSink
    from satchel.agent.server.registry import ServingModel

log = logging.getLogger(__name__)

_LATENCIES_KEPT = 2048  # latency samples kept per release for the p95
_FIGURES_EVERY_S = 0.5  # seconds between two writes of the figures file at most
_RSS_EVERY = 16  # shadow copies between two readings of the service's resident memory
IDLE_WAIT_S = 1.0  # seconds the worker sleeps at most while nothing is staged


def resident_kib() -> int | None:
    """The service's resident memory now (VmRSS, KiB); None where /proc does not say."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


@dataclass(frozen=True)
class _Copy:
    staging: Staging
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]  # the active release's
    active_ms: float


def low_margin(outputs: dict[str, np.ndarray], kinds: dict[str, str], margin: float) -> bool:
    """True when a class-score output's top-1 margin (best minus second best) is below
    `margin` on some row."""
    for name, a in outputs.items():
        if kinds.get(name) != "classes" or a.ndim == 0 or a.shape[-1] < 2:
            continue
        rows = np.sort(a.reshape(-1, a.shape[-1]).astype(np.float64), axis=1)
        if np.any(rows[:, -1] - rows[:, -2] < margin):
            return True
    return False


class Staging:
    """One channel's candidate and its running stage. Counters are guarded by a lock held
    for a few increments; the request path never waits for the candidate's inference."""

    def __init__(
        self, stager: Stager, serving: ServingModel, policy: ActivationPolicy,
        first_stage: str, *, shadow_skipped: str | None = None,
    ) -> None:
        self.stager = stager
        self.serving = serving
        self.key = serving.key
        self.channel = serving.key.channel
        self.policy = policy
        self.shadow_skipped = shadow_skipped
        manifest = serving.release.manifest
        self._test = manifest.smoke_tests[0] if manifest.smoke_tests else None
        self.kinds = smoke_kinds(self._test) if self._test is not None else {}
        self._kinds_fixed = False
        self._judge = SmokeJudge(self._test, self.kinds)  # made again once kinds are fixed
        self._lock = threading.Lock()
        self.stage = first_stage
        self.started = time.monotonic()
        self.started_at = format_time(utcnow())
        self.stage_started = time.monotonic()
        self.active_version: str | None = None
        self.active_sequence: int | None = None
        # shadow
        shadow = policy.shadow
        self.needed_requests = shadow.requests if shadow else 0
        if shadow and stager.config.max_shadow_requests:
            self.needed_requests = min(self.needed_requests, stager.config.max_shadow_requests)
        self._offered = 0
        self.compared = 0
        self.agreed = 0
        self.nonfinite = 0
        self.errors = 0
        self.dropped = 0
        self.shadow_ms: list[float] = []
        self.active_ms: list[float] = []
        self.first_disagreement: str | None = None
        # memory: the service's resident set from the candidate's first stage on (loaded by
        # then), so its growth is what judging field inputs took, the candidate's working
        # memory above all (an upper bound: the active release's share is in it too)
        self.rss_start_kib = resident_kib()
        self.rss_peak_kib = self.rss_start_kib
        # ramp
        self.step = 0
        self._routed = 0
        self.answered = 0  # client answers in this step
        self.client_answers = 0  # in every step
        self.ramp_errors = 0
        self.ramp_nan = 0
        self.ramp_nonfinite_inputs = 0
        self.ramp_ms: deque[float] = deque(maxlen=_LATENCIES_KEPT)  # the latest answers
        self.failed: str | None = None  # why, once decided: no request goes to it any more
        self.done = False
        self._figures_written = 0.0

    # --- the request path ---------------------------------------------------------------

    @property
    def percent(self) -> int:
        ramp = self.policy.ramp
        if self.stage != STAGE_RAMP or ramp is None or self.failed or self.done:
            return 0
        return ramp.steps[self.step]

    def route(self) -> ServingModel | None:
        """The candidate when it answers this request (ramp: exactly its percent of them)."""
        percent = self.percent
        if not percent:
            return None
        with self._lock:
            self._routed += 1
            n = self._routed
        return self.serving if (n * percent) // 100 != ((n - 1) * percent) // 100 else None

    def offer(self, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray],
              active_ms: float, active_key: Any) -> None:
        """A request the active release answered: copied to the shadow when sampled."""
        shadow = self.policy.shadow
        if self.stage != STAGE_SHADOW or shadow is None or self.failed or self.done:
            return
        with self._lock:
            self._offered += 1
            n = self._offered
            if self.compared + self.stager.pending(self) >= self.needed_requests:
                return
        f = shadow.fraction
        if int(n * f) == int((n - 1) * f):
            return
        self.active_version, self.active_sequence = active_key.version, active_key.sequence
        self.stager.submit(_Copy(self, inputs, outputs, active_ms))

    def record_answer(self, *, error: bool, nonfinite: bool, nonfinite_input: bool,
                      latency_ms: float, inputs: dict[str, np.ndarray] | None = None,
                      outputs: dict[str, np.ndarray] | None = None) -> None:
        """A request the candidate answered to a client during the ramp."""
        breach = None
        policy = self.serving.policy
        with self._lock:
            self.answered += 1
            self.client_answers += 1
            self.ramp_errors += error
            nan = nonfinite and not nonfinite_input
            self.ramp_nan += nan
            self.ramp_nonfinite_inputs += nonfinite_input
            self.ramp_ms.append(latency_ms)
            # a rate of 0 allowed means none: no need to wait for min_samples
            if error and policy.max_error_rate == 0.0:
                breach = "health: an inference failed (error rate 0 allowed)"
            elif nan and policy.max_nan_rate == 0.0:
                breach = "health: NaN/Inf outputs (nan rate 0 allowed)"
            else:  # the p95 (a sort) only when the policy judges latency
                breach = judge(policy, self.ramp_figures(
                    with_p95=policy.max_p95_latency_ms is not None)).breach
            if breach and not self.failed:
                self.failed = breach  # from now on every request goes to the active release
            step_over = self.answered >= self._step_requests()
        if nan and inputs is not None and outputs is not None:
            self.stager.capture(self, REASON_NONFINITE, inputs, {"nonfinite": True})
        elif inputs is not None and outputs is not None:
            self._maybe_low_margin(inputs, outputs)
        if breach or step_over:
            self.stager.wake()

    # --- figures ------------------------------------------------------------------------

    def _step_requests(self) -> int:
        ramp = self.policy.ramp
        return ramp.step_requests if ramp else 1

    def ramp_figures(self, *, with_p95: bool = True) -> HealthFigures:
        p95 = percentile(list(self.ramp_ms), 95) if self.ramp_ms and with_p95 else None
        return HealthFigures(inferences=self.client_answers, errors=self.ramp_errors,
                             nan=self.ramp_nan, p95_latency_ms=p95,
                             nonfinite_inputs=self.ramp_nonfinite_inputs)

    def shadow_figures(self) -> dict[str, Any]:
        share = self.agreed / self.compared if self.compared else None
        return {
            "requests": self.needed_requests,
            "compared": self.compared,
            "agreed": self.agreed,
            "agreement": None if share is None else round(share, 6),
            "needed": self.policy.shadow.agreement if self.policy.shadow else None,
            "nonfinite": self.nonfinite,
            "errors": self.errors,
            "dropped": self.dropped,
            "p95_ms": round(percentile(self.shadow_ms, 95), 3) if self.shadow_ms else None,
            "active_p95_ms": round(percentile(self.active_ms, 95), 3) if self.active_ms
            else None,
            "rss_mb": None if self.rss_peak_kib is None else round(self.rss_peak_kib / 1024, 1),
            "rss_growth_mb": self.rss_growth_mb(),
        }

    def rss_growth_mb(self) -> float | None:
        """MiB the service's resident set grew above its size when the stage began."""
        if self.rss_start_kib is None or self.rss_peak_kib is None:
            return None
        return round(max(0, self.rss_peak_kib - self.rss_start_kib) / 1024, 1)

    def ramp_status(self) -> dict[str, Any] | None:
        ramp = self.policy.ramp
        if ramp is None:
            return None
        return {
            "steps": list(ramp.steps),
            "step": self.step,
            "percent": ramp.steps[self.step] if self.stage == STAGE_RAMP else 0,
            "answered": self.answered,
            "errors": self.ramp_errors,
        }

    def figures(self) -> dict[str, Any]:
        return {
            "sequence": self.key.sequence,
            "version": self.key.version,
            "stage": self.stage,
            "started_at": self.started_at,
            "shadow": self.shadow_figures() if self.policy.shadow and not self.shadow_skipped
            else None,
            "ramp": self.ramp_status(),
            "client_answers": self.client_answers,
        }

    # --- the worker's side ----------------------------------------------------------------

    def compare(self, copy: _Copy) -> None:
        """Run the candidate on one copy and compare (the worker thread)."""
        started = time.perf_counter()
        try:
            produced = self.serving.model.run(copy.inputs)
        except Exception as e:  # the runtime's failure is the candidate's error
            with self._lock:
                self.compared += 1
                self.errors += 1
                self.first_disagreement = self.first_disagreement or f"inference failed: {e}"
            return
        ms = (time.perf_counter() - started) * 1000
        reasons: list[str]
        if not self._kinds_fixed:  # each output's kind, once: the smoke test's, else detected
            self._kinds_fixed = True
            declared = {o.name: o.shape for m in self.serving.release.manifest.models[:1]
                        for o in m.outputs}
            self.kinds = {name: self.kinds.get(name) or detect_kind(
                name, np.asarray(ref), declared.get(name)) for name, ref in copy.outputs.items()}
            self._judge = SmokeJudge(self._test, self.kinds)
        try:  # only the figures the thresholds read; every figure when it fails
            reasons = self._judge.failures(produced, copy.outputs)
        except ValueError as e:
            reasons = [str(e)]
        nonfinite = has_nonfinite(produced) and not has_nonfinite(copy.inputs)
        if nonfinite and not any("NaN" in r for r in reasons):
            reasons.append("NaN/Inf outputs")
        rss = resident_kib() if self.compared % _RSS_EVERY == 0 else None
        with self._lock:
            if rss is not None and (self.rss_peak_kib is None or rss > self.rss_peak_kib):
                self.rss_peak_kib = rss
            self.compared += 1
            self.nonfinite += nonfinite
            if not reasons:
                self.agreed += 1
            elif self.first_disagreement is None:
                self.first_disagreement = reasons[0]
            if len(self.shadow_ms) < _LATENCIES_KEPT:
                self.shadow_ms.append(ms)
                self.active_ms.append(copy.active_ms)
        if nonfinite:
            self.stager.capture(self, REASON_NONFINITE, copy.inputs, {"nonfinite": True})
        elif reasons:
            self.stager.capture(self, REASON_DISAGREEMENT, copy.inputs,
                                {"reason": reasons[0][:300]})
        else:
            self._maybe_low_margin(copy.inputs, produced)

    def _maybe_low_margin(self, inputs: dict[str, np.ndarray],
                          outputs: dict[str, np.ndarray]) -> None:
        capture = self.policy.capture
        if capture is None or capture.min_margin is None:
            return
        if REASON_LOW_MARGIN in capture.reasons and low_margin(outputs, self.kinds,
                                                               capture.min_margin):
            self.stager.capture(self, REASON_LOW_MARGIN, inputs,
                                {"min_margin": capture.min_margin})

    def shadow_verdict(self) -> tuple[bool | None, str]:
        """(True, why) passed, (False, why) failed, (None, "") not decided yet."""
        shadow = self.policy.shadow
        assert shadow is not None
        with self._lock:
            compared, agreed, nonfinite = self.compared, self.agreed, self.nonfinite
        if nonfinite:
            return False, (f"shadow: {nonfinite} NaN/Inf output(s) on finite field inputs "
                           f"({self.first_disagreement})")
        allowed_misses = (1.0 - shadow.agreement) * self.needed_requests
        if compared - agreed > allowed_misses + 1e-9:
            return False, (f"shadow: agreement with the active release below "
                           f"{shadow.agreement:.1%}: {compared - agreed} of {compared} field "
                           f"requests disagree (first: {self.first_disagreement})")
        timed_out = (shadow.max_seconds is not None
                     and time.monotonic() - self.stage_started >= shadow.max_seconds)
        if compared >= self.needed_requests or (timed_out and compared > 0):
            share = agreed / compared
            if share + 1e-12 < shadow.agreement:
                return False, (f"shadow: agreement {share:.1%} < required "
                               f"{shadow.agreement:.1%} over {compared} field requests")
            limit = self.serving.policy.max_p95_latency_ms
            p95 = percentile(self.shadow_ms, 95) if self.shadow_ms else None
            if limit is not None and p95 is not None and p95 > limit:
                return False, f"shadow: p95 latency {p95:.1f} ms > {limit:.1f} ms"
            budget = self._test.max_memory_mb if self._test is not None else None
            grew = self.rss_growth_mb()
            if budget is not None and grew is not None and grew > budget:
                return False, (f"shadow: the service grew {grew:.1f} MB while judging field "
                               f"requests, over the memory budget of {budget:.1f} MB")
            return True, f"shadow: agreement {share:.1%} over {compared} field requests"
        return None, ""


class Stager:
    """The staged activations of one server: one worker thread for shadow copies and stage
    decisions, shared by every channel."""

    def __init__(
        self,
        state_dir: Path,
        events: EventSink,
        *,
        config: AgentConfig = DEFAULT_CONFIG,
        on_activated: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.events = events
        self.config = config
        self.on_activated = on_activated
        self._clock = clock
        self._queue: queue.Queue[_Copy] = queue.Queue(maxsize=max(1, config.shadow_queue))
        self._pending: dict[int, int] = {}
        self._pending_lock = threading.Lock()
        self._wake = threading.Event()
        self._stagings: dict[str, Staging] = {}
        self._to_keep: list[tuple[Staging, str, dict[str, np.ndarray], dict[str, Any]]] = []
        self._worker: threading.Thread | None = None

    # --- the registry's side ------------------------------------------------------------

    def begin(self, serving: ServingModel, first_stage: str,
              shadow_skipped: str | None, active: Any = None) -> Staging | None:
        """A Staging for a candidate the registry loaded; None when its manifest stages
        nothing (then the device state names it by mistake: it is left alone)."""
        policy = serving.release.manifest.activation
        if policy is None or not policy.staged:
            return None
        staging = Staging(self, serving, policy, first_stage, shadow_skipped=shadow_skipped)
        if active is not None:
            staging.active_version, staging.active_sequence = active.version, active.sequence
        self._stagings[staging.channel] = staging
        log.info("%s %s: judged in %s beside the active release", staging.channel,
                 staging.key.version, first_stage)
        self._write_figures(staging, force=True)
        if first_stage == STAGE_RAMP:  # no shadow stage: its first step starts now
            self._emit(staging, RAMP_STEP, "", staging.figures())
        self.wake()
        return staging

    def end(self, staging: Staging) -> None:
        if self._stagings.get(staging.channel) is staging:
            del self._stagings[staging.channel]

    # --- shadow copies ----------------------------------------------------------------------

    def pending(self, staging: Staging) -> int:
        return self._pending.get(id(staging), 0)

    def submit(self, copy: _Copy) -> None:
        try:
            self._queue.put_nowait(copy)
        except queue.Full:
            with copy.staging._lock:
                copy.staging.dropped += 1
            return
        with self._pending_lock:
            self._pending[id(copy.staging)] = self._pending.get(id(copy.staging), 0) + 1

    def wake(self) -> None:
        self._wake.set()

    # --- captures -------------------------------------------------------------------------

    def capture(self, staging: Staging, reason: str, inputs: dict[str, np.ndarray],
                figures: dict[str, Any]) -> None:
        """Keep a field input when the bundle asks and the device allows; written by the
        worker (the request path only queues it; a full queue drops it)."""
        policy = staging.policy.capture
        if policy is None or reason not in policy.reasons:
            return
        if self.config.activation_capture == "forbid":
            return
        if threading.current_thread() is not self._worker:
            with self._pending_lock:
                if len(self._to_keep) < self._queue.maxsize:
                    self._to_keep.append((staging, reason, inputs, figures))
            self.wake()
            return
        self._keep(staging, reason, inputs, figures)

    def _keep(self, staging: Staging, reason: str, inputs: dict[str, np.ndarray],
              figures: dict[str, Any]) -> None:
        policy = staging.policy.capture
        assert policy is not None
        try:
            from satchel.agent.captures import keep_capture

            keep_capture(self.state_dir, policy, self.config, inputs, {
                "channel": staging.channel, "version": staging.key.version,
                "sequence": staging.key.sequence, "active_version": staging.active_version,
                "active_sequence": staging.active_sequence, "reason": reason,
                "captured_at": format_time(utcnow()), "figures": figures,
            })
        except Exception:  # a capture must never hurt the judgement or the answers
            log.exception("%s: could not keep a field input", staging.channel)

    # --- the worker ---------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        share = min(1.0, max(0.01, self.config.shadow_cpu_share))
        self._worker = threading.current_thread()
        while not stop.is_set():
            if not self._stagings and self._queue.empty() and not self._to_keep:
                # nothing staged: sleep until `begin` (or a capture, or stop) wakes us, not
                # 20 times a second (each wake-up takes the GIL from the request path)
                self._wake.wait(IDLE_WAIT_S)
            with self._pending_lock:
                kept, self._to_keep = self._to_keep, []
            for args in kept:
                self._keep(*args)
            try:
                copy = self._queue.get(timeout=0.05)
            except queue.Empty:
                copy = None
            if copy is not None:
                started = time.perf_counter()
                try:
                    if not copy.staging.failed and not copy.staging.done:
                        copy.staging.compare(copy)
                finally:
                    with self._pending_lock:
                        self._pending[id(copy.staging)] -= 1
                busy = time.perf_counter() - started
                if share < 1.0:  # rest so the shadow keeps to its share of a core
                    stop.wait(busy * (1.0 / share - 1.0))
            self._wake.clear()
            for staging in list(self._stagings.values()):
                try:
                    self.decide(staging)
                except Exception:
                    log.exception("%s: judging the candidate failed", staging.channel)

    def decide(self, staging: Staging) -> None:
        """Move `staging` on when its stage is decided; write its figures now and then."""
        if staging.done:
            return
        if staging.failed:
            kind = RAMP_FAILED if staging.stage == STAGE_RAMP else SHADOW_FAILED
            self._refuse(staging, kind, staging.failed)
            return
        if staging.stage == STAGE_SHADOW:
            passed, why = staging.shadow_verdict()
            if passed is False:
                staging.failed = why
                self._refuse(staging, SHADOW_FAILED, why)
                return
            if passed:
                self._emit(staging, SHADOW_PASSED, "", staging.figures())
                if staging.policy.ramp is not None:
                    self._start_ramp(staging)
                else:
                    self._activate(staging)
                return
        elif staging.stage == STAGE_RAMP:
            self._judge_step(staging)
        self._write_figures(staging)

    def _start_ramp(self, staging: Staging) -> None:
        with staging._lock:
            staging.stage = STAGE_RAMP
            staging.step = 0
            staging.answered = 0
            staging.stage_started = time.monotonic()
        self._write_figures(staging, force=True)
        self._emit(staging, RAMP_STEP, "", staging.figures())

    def _judge_step(self, staging: Staging) -> None:
        ramp = staging.policy.ramp
        assert ramp is not None
        timed_out = (ramp.step_seconds is not None
                     and time.monotonic() - staging.stage_started >= ramp.step_seconds)
        if staging.answered < ramp.step_requests and not timed_out:
            return
        verdict = judge(staging.serving.policy, staging.ramp_figures())
        if verdict.breached:
            staging.failed = verdict.breach
            self._refuse(staging, RAMP_FAILED, verdict.breach or "health")
            return
        if staging.step + 1 >= len(ramp.steps):
            self._emit(staging, RAMP_COMPLETED, "", staging.figures())
            self._activate(staging)
            return
        with staging._lock:
            staging.step += 1
            staging.answered = 0
            staging.stage_started = time.monotonic()
        self._write_figures(staging, force=True)
        self._emit(staging, RAMP_STEP, "", staging.figures())

    def _activate(self, staging: Staging) -> None:
        from satchel.agent.staging.lifecycle import activate_candidate

        staging.done = True
        figures = staging.figures()
        try:
            release = activate_candidate(self.state_dir, staging.channel, staging.key.sequence,
                                         config=self.config, figures=figures)
        except Exception as e:
            log.error("%s: activating %s failed: %s", staging.channel, staging.key.version, e)
            staging.failed = f"activation failed: {e}"
            self.end(staging)
            return
        self.end(staging)
        log.info("%s %s: judged on field requests, now active", staging.channel,
                 release.version)
        self.on_activated()
        self._emit(staging, ACTIVATED, "", {**figures, "stage": "probation",
                                            "previous": staging.active_version})

    def _refuse(self, staging: Staging, kind: str, reason: str) -> None:
        from satchel.agent.staging.lifecycle import refuse_candidate

        staging.done = True
        self.end(staging)
        figures = staging.figures()
        log.warning("%s %s refused: %s", staging.channel, staging.key.version, reason)
        self._emit(staging, kind, reason, figures)
        try:
            refuse_candidate(self.state_dir, staging.channel, staging.key.sequence, reason,
                             config=self.config, figures=figures)
        except Exception as e:
            log.error("%s: dropping the refused %s failed: %s", staging.channel,
                      staging.key.version, e)
        self.on_activated()

    def _emit(self, staging: Staging, kind: str, reason: str, figures: dict[str, Any]) -> None:
        from satchel.agent.server.events import Event

        self.events.emit(Event(kind, staging.channel, staging.key.version,
                               staging.key.sequence, reason, self._clock(), figures))

    def _write_figures(self, staging: Staging, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - staging._figures_written < _FIGURES_EVERY_S:
            return
        staging._figures_written = now
        try:
            write_figures(Layout(self.state_dir), staging.channel, staging.figures())
        except OSError as e:
            log.warning("%s: cannot write the candidate's figures: %s", staging.channel, e)
