"""A release's variants: several models of one channel, and the policy that picks one.

A manifest with a `variants` section carries one model (and one smoke test) per variant, the
default variant's model first, so that whatever reads `models[0]` reads the default. The
section names each variant's model, its accuracy rank, and the policy a device applies to its
own state (battery, temperature, load, free memory):

    "variants": {
      "default": "full",
      "variants": [{"name": "full", "model": "full", "accuracy_level": 2},
                   {"name": "lite", "model": "lite", "accuracy_level": 1}],
      "policy": {"dwell_s": 30.0,
                 "rules": [{"when": {"battery_below": 30}, "use": "lite",
                            "leave": {"battery_above": 80}}]}
    }

A rule applies when every condition of its `when` holds (an unknown figure holds none); the
first rule that applies picks its variant. A rule in force stays in force until every
condition of its `leave` holds, or, without `leave`, until its `when` no longer holds with a
margin (`MARGINS`): hysteresis, so a battery at 30% does not flip the model at each reading.
A device switches at most once per `dwell_s`. No rule in force: the default variant.

A manifest without the section is today's single-model release, byte for byte. Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from satchel.bundles.errors import WrongTypeError
from satchel.bundles.schema import check_keys, get, get_float, get_int, get_str

VARIANT_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
MAX_VARIANTS = 16
MAX_RULES = 32
DEFAULT_DWELL_S = 30.0  # seconds a device keeps a variant before it may switch again
# How far a figure must come back past a `when` threshold before a rule without `leave`
# lets go: battery percent, degrees Celsius, load per core, MiB.
MARGINS = {"battery": 10.0, "temperature": 5.0, "load": 0.2, "memory_mb": 50.0}


@dataclass(frozen=True)
class Reading:
    """The device's state at one moment; None = unknown (no such file on this device)."""

    battery_percent: float | None = None  # 0-100
    charging: bool | None = None  # True when on mains power or charging
    temperature_c: float | None = None  # the hottest thermal zone, degrees Celsius
    load: float | None = None  # 1-minute load average divided by the CPU cores
    memory_free_mb: float | None = None  # MemAvailable, MiB

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Conditions:
    """Thresholds on a `Reading`; every one given must hold. None = not judged."""

    battery_below: float | None = None  # percent
    battery_above: float | None = None  # percent
    charging: bool | None = None
    temperature_above: float | None = None  # degrees Celsius
    temperature_below: float | None = None
    load_above: float | None = None  # load average per core
    load_below: float | None = None
    memory_below_mb: float | None = None  # MiB available
    memory_above_mb: float | None = None

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Conditions:
        names = {f.name for f in fields(cls)}
        check_keys(d, where, set(), names)
        if not d:
            raise WrongTypeError(f"{where} names no condition")
        values: dict[str, Any] = {}
        for name in names - {"charging"}:
            values[name] = get_float(d, name, where, -1e6, 1e12, nullable=True)
        values["charging"] = get(d, "charging", bool, where, nullable=True)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None}

    def holds(self, r: Reading) -> bool:
        """True when every condition given holds on `r`; a condition on an unknown figure
        does not hold."""
        checks = (
            (self.battery_below, r.battery_percent, lambda t, v: v < t),
            (self.battery_above, r.battery_percent, lambda t, v: v > t),
            (self.temperature_above, r.temperature_c, lambda t, v: v > t),
            (self.temperature_below, r.temperature_c, lambda t, v: v < t),
            (self.load_above, r.load, lambda t, v: v > t),
            (self.load_below, r.load, lambda t, v: v < t),
            (self.memory_below_mb, r.memory_free_mb, lambda t, v: v < t),
            (self.memory_above_mb, r.memory_free_mb, lambda t, v: v > t),
        )
        for threshold, value, ok in checks:
            if threshold is None:
                continue
            if value is None or not ok(threshold, value):
                return False
        return self.charging is None or r.charging is self.charging

    def widened(self) -> Conditions:
        """The same conditions with each threshold moved by its margin away from where it
        was crossed: what must stop holding before a rule without `leave` lets go."""
        def move(value: float | None, by: float) -> float | None:
            return None if value is None else value + by

        return Conditions(
            battery_below=move(self.battery_below, MARGINS["battery"]),
            battery_above=move(self.battery_above, -MARGINS["battery"]),
            charging=self.charging,
            temperature_above=move(self.temperature_above, -MARGINS["temperature"]),
            temperature_below=move(self.temperature_below, MARGINS["temperature"]),
            load_above=move(self.load_above, -MARGINS["load"]),
            load_below=move(self.load_below, MARGINS["load"]),
            memory_below_mb=move(self.memory_below_mb, MARGINS["memory_mb"]),
            memory_above_mb=move(self.memory_above_mb, -MARGINS["memory_mb"]),
        )

    def describe(self) -> str:
        """e.g. 'battery_below=30, temperature_above=75'."""
        return ", ".join(f"{k}={_number(v)}" for k, v in self.to_dict().items())


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Rule:
    when: Conditions
    use: str  # a variant name
    leave: Conditions | None = None  # None: leave when `when` stops holding with margins

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Rule:
        check_keys(d, where, {"when", "use"}, {"leave"})
        leave = d.get("leave")
        return cls(
            when=Conditions.from_dict(d["when"], f"{where} 'when'"),
            use=get_str(d, "use", where, VARIANT_NAME_RE),
            leave=None if leave is None else Conditions.from_dict(leave, f"{where} 'leave'"),
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"when": self.when.to_dict(), "use": self.use}
        if self.leave is not None:
            d["leave"] = self.leave.to_dict()
        return d

    def applies(self, r: Reading) -> bool:
        return self.when.holds(r)

    def released(self, r: Reading) -> bool:
        """True when a rule in force lets go on `r`."""
        if self.leave is not None:
            return self.leave.holds(r)
        return not self.when.widened().holds(r)

    def describe(self) -> str:
        return f"{self.when.describe()} -> {self.use}"


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...] = ()
    dwell_s: float = DEFAULT_DWELL_S

    @classmethod
    def from_dict(cls, d: Any, where: str = "variants policy") -> Policy:
        check_keys(d, where, set(), {"rules", "dwell_s"})
        raw = get(d, "rules", list, where, nullable=True) or []
        if len(raw) > MAX_RULES:
            raise WrongTypeError(f"{where} has too many rules ({len(raw)}; at most {MAX_RULES})")
        dwell = get_float(d, "dwell_s", where, 0.0, 86400.0, nullable=True)
        return cls(
            rules=tuple(Rule.from_dict(r, f"{where} rule {i + 1}") for i, r in enumerate(raw)),
            dwell_s=DEFAULT_DWELL_S if dwell is None else dwell,
        )

    def to_dict(self) -> dict[str, Any]:
        return {"rules": [r.to_dict() for r in self.rules], "dwell_s": self.dwell_s}


@dataclass(frozen=True)
class Variant:
    name: str
    model: str  # the name of a manifest model
    accuracy_level: int = 1  # rank: higher answers more accurately (and usually slower)

    @classmethod
    def from_dict(cls, d: Any) -> Variant:
        w = "manifest variant"
        check_keys(d, w, {"name", "model", "accuracy_level"})
        name = get_str(d, "name", w, VARIANT_NAME_RE)
        w = f"manifest variant {name!r}"
        return cls(name=name, model=get_str(d, "model", w),
                   accuracy_level=get_int(d, "accuracy_level", w, 0, 1000))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model, "accuracy_level": self.accuracy_level}


@dataclass(frozen=True)
class Variants:
    default: str
    variants: tuple[Variant, ...]
    policy: Policy = field(default_factory=Policy)

    @classmethod
    def from_dict(cls, d: Any) -> Variants:
        w = "manifest variants"
        check_keys(d, w, {"default", "variants", "policy"})
        raw = get(d, "variants", list, w)
        if not raw or len(raw) > MAX_VARIANTS:
            raise WrongTypeError(f"{w} must list 1 to {MAX_VARIANTS} variants")
        found = cls(
            default=get_str(d, "default", w, VARIANT_NAME_RE),
            variants=tuple(Variant.from_dict(v) for v in raw),
            policy=Policy.from_dict(d["policy"], "manifest variants policy"),
        )
        found.check_names()
        return found

    def to_dict(self) -> dict[str, Any]:
        return {"default": self.default, "variants": [v.to_dict() for v in self.variants],
                "policy": self.policy.to_dict()}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.variants)

    def get(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)

    def check_names(self, policy: Policy | None = None) -> None:
        """Every name used is defined once. Raises WrongTypeError."""
        names = self.names
        if len(set(names)) != len(names):
            raise WrongTypeError("manifest variants repeat a name")
        if len({v.model for v in self.variants}) != len(names):
            raise WrongTypeError("two manifest variants name the same model")
        if self.default not in names:
            raise WrongTypeError(f"default variant {self.default!r} is not listed")
        for rule in (policy or self.policy).rules:
            if rule.use not in names:
                raise WrongTypeError(
                    f"variant policy rule '{rule.describe()}' uses {rule.use!r}, which is not "
                    f"a variant; variants: {', '.join(names)}"
                )

    def check_models(self, models: list[str], smoke_tested: set[str]) -> None:
        """Against the manifest: each variant names a model, the default's first, and each
        model is a variant with its own smoke test. Raises WrongTypeError."""
        by_model = {v.model: v for v in self.variants}
        for v in self.variants:
            if v.model not in models:
                raise WrongTypeError(f"variant {v.name!r} names unknown model {v.model!r}")
            if v.model not in smoke_tested:
                raise WrongTypeError(f"variant {v.name!r} has no smoke test")
        for m in models:
            if m not in by_model:
                raise WrongTypeError(f"model {m!r} is not a variant of the release")
        if by_model[models[0]].name != self.default:
            raise WrongTypeError("the default variant's model must be the manifest's first")

    def with_policy(self, policy: Policy) -> Variants:
        """These variants under another policy (a device's override). Raises
        WrongTypeError when the policy uses a variant that is not listed."""
        self.check_names(policy)
        return replace(self, policy=policy)


def parse_policy(text: str, where: str = "variants policy") -> Policy:
    """A policy from JSON text (a device's override, or `bundle build --variant-policy`).
    Raises WrongTypeError in one line."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise WrongTypeError(f"{where} is not JSON: {e}") from None
    return Policy.from_dict(doc, where)


def default_policy(names: tuple[str, ...]) -> Policy:
    """The policy of a release built without one: on battery below 30% the last (lightest)
    variant, back to the default above 80%."""
    if len(names) < 2:
        return Policy()
    return Policy(rules=(Rule(Conditions(battery_below=30.0), names[-1],
                              Conditions(battery_above=80.0)),))


def figures(measured: Mapping[str, Any]) -> dict[str, Any]:
    """Round the figures of a variant's status for reports (ms to 3 decimals)."""
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in measured.items()}
