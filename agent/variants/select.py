"""Which variant answers: by the device's state (hysteretic, with a minimum dwell), and by
a request's `max_latency_ms` and `accuracy_level`.

State: the first rule of the policy that applies picks its variant; a rule in force stays
until it is released (`bundles.variants.Rule.released`); a change waits until the variant in
use has served `dwell_s`. Request: among the usable variants meeting both figures, the one the
state chose if it does, else the most accurate (then the fastest); none: a one-line refusal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from satchel.bundles.variants import Policy, Reading, Rule


@dataclass(frozen=True)
class Choice:
    variant: str
    reason: str  # the rule in force, or why the default


class StateSelector:
    """Hysteretic choice of a variant from readings. Not thread-safe: one watcher calls it."""

    def __init__(self, policy: Policy, default: str, dwell_s: float | None = None) -> None:
        self.policy = policy
        self.default = default
        self.dwell_s = policy.dwell_s if dwell_s is None else dwell_s
        self.rule: Rule | None = None  # the rule in force
        self.current = Choice(default, "default variant")
        self._since: float | None = None  # when `current` was chosen (None: never switched)

    def choose(self, reading: Reading, now: float, usable: set[str]) -> Choice:
        """The variant to use now (the current one while it must dwell)."""
        rule = self.rule
        if rule is not None and (rule.use not in usable or rule.released(reading)):
            rule = None
        if rule is None:
            rule = next((r for r in self.policy.rules if r.use in usable and r.applies(reading)),
                        None)
        if rule is None:
            want = Choice(self.default, "no rule applies: default variant")
        else:
            want = Choice(rule.use, rule.when.describe())
        if want.variant == self.current.variant:
            self.rule = rule
            if want.reason != self.current.reason:
                self.current = want
            return self.current
        if self.current.variant in usable and self._since is not None \
                and now - self._since < self.dwell_s:
            return self.current  # too soon: no flapping
        self.rule = rule
        self.current = want
        self._since = now
        return want


class RequestRefused(ValueError):
    """No variant meets a request's figures; the message is the one-line answer."""


class Candidate(NamedTuple):  # a tuple: built per request, 4x cheaper than a dataclass
    name: str
    accuracy_level: int
    p95_ms: float | None  # live p95, else the smoke test's on this device; None: unknown


def request_figures(parameters: Mapping[str, Any]) -> tuple[float | None, int | None]:
    """A request's `max_latency_ms` and `accuracy_level`. Raises RequestRefused for values
    that are not a positive number and a non-negative integer."""
    latency = parameters.get("max_latency_ms")
    level = parameters.get("accuracy_level")
    if latency is not None and (isinstance(latency, bool) or not isinstance(latency, int | float)
                                or not latency > 0):
        raise RequestRefused("parameter 'max_latency_ms' must be a positive number of ms")
    if level is not None and (isinstance(level, bool) or not isinstance(level, int) or level < 0):
        raise RequestRefused("parameter 'accuracy_level' must be an integer >= 0")
    return (None if latency is None else float(latency)), level


def choose_for_request(
    channel: str, candidates: list[Candidate], preferred: str, max_latency_ms: float | None,
    accuracy_level: int | None,
) -> str:
    """The variant answering a request with these figures. Raises RequestRefused."""
    if not candidates:
        raise RequestRefused(f"no variant of {channel} is usable on this device")
    fits = candidates
    if accuracy_level is not None:
        fits = [c for c in fits if c.accuracy_level >= accuracy_level]
        if not fits:
            best = max(candidates, key=lambda c: c.accuracy_level)
            raise RequestRefused(
                f"no variant of {channel} meets accuracy_level={accuracy_level}: most accurate "
                f"is {best.name} at level {best.accuracy_level}"
            )
    if max_latency_ms is not None:
        fast = [c for c in fits if c.p95_ms is not None and c.p95_ms <= max_latency_ms]
        if not fast:
            known = [c for c in fits if c.p95_ms is not None]
            what = f"accuracy_level={accuracy_level} and " if accuracy_level is not None else ""
            if not known:
                raise RequestRefused(f"no variant of {channel} meets {what}max_latency_ms="
                                     f"{max_latency_ms:g}: no latency measured yet")
            best = min(known, key=lambda c: c.p95_ms or 0.0)
            raise RequestRefused(
                f"no variant of {channel} meets {what}max_latency_ms={max_latency_ms:g}: "
                f"fastest is {best.name} at {best.p95_ms:.3g} ms p95"
            )
        fits = fast
    for c in fits:
        if c.name == preferred:
            return c.name
    return max(fits, key=lambda c: (c.accuracy_level, -(c.p95_ms or 0.0))).name
