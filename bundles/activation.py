"""A release's staged activation policy: the manifest's optional signed `"activation"` section.

    "activation": {
      "shadow":  {"requests": N, "fraction": F, "agreement": A, "max_seconds": S | null},
      "ramp":    {"steps": [10, 50, 100], "step_requests": M, "step_seconds": T | null},
      "capture": {"reasons": ["disagreement", "nonfinite", "low_margin"],
                  "min_margin": 0.1 | null, "max_samples": K, "max_bytes": B}
    }

Every sub-section is optional; a manifest without the section activates as before (and is
written without it, so older agents still read manifests built without the new options).
Shadow: the new release answers a copy of a share `fraction` of field requests beside the
active one until `requests` copies were compared (or `max_seconds` passed, when set), and
passes when at least `agreement` of them pass the smoke-test comparison (`bundles.smoke`)
with no NaN/Inf and no error. Ramp: it then answers `steps[i]` percent of the requests, each
step judged by its health policy after `step_requests` answers (or `step_seconds`); the last
step is 100. Capture: which field inputs the device may keep for retraining.

`parse_build_options` turns `satchel bundle build`'s flags into a policy (ValueError on a bad
value, one line).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from satchel.bundles.errors import WrongTypeError
from satchel.bundles.schema import check_keys, get, get_float, get_int

# why a field input is kept (the capture's meta "reason")
REASON_DISAGREEMENT = "disagreement"  # the new release's outputs failed the comparison
REASON_NONFINITE = "nonfinite"  # the new release produced NaN/Inf
REASON_LOW_MARGIN = "low_margin"  # class scores whose top-1 margin is below `min_margin`
CAPTURE_REASONS = (REASON_DISAGREEMENT, REASON_NONFINITE, REASON_LOW_MARGIN)

MAX_SHADOW_REQUESTS = 10**7
MAX_RAMP_STEPS = 20
DEFAULT_SHADOW_FRACTION = 0.1
DEFAULT_SHADOW_AGREEMENT = 0.99
DEFAULT_STEP_REQUESTS = 100
DEFAULT_CAPTURE_MAX = 100
DEFAULT_CAPTURE_MAX_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class ShadowPolicy:
    requests: int  # compared requests needed to pass (>= 1)
    fraction: float = DEFAULT_SHADOW_FRACTION  # share of field requests copied (0 < F <= 1)
    agreement: float = DEFAULT_SHADOW_AGREEMENT  # share of compared requests that must pass
    max_seconds: float | None = None  # judge what was compared by then (None: no limit)

    @classmethod
    def from_dict(cls, d: Any) -> ShadowPolicy:
        w = "manifest activation shadow"
        check_keys(d, w, {"requests", "fraction", "agreement"}, {"max_seconds"})
        fraction = get_float(d, "fraction", w, 0.0, 1.0)
        if fraction <= 0.0:
            raise WrongTypeError(f"{w}: 'fraction' must be above 0")
        max_seconds = get_float(d, "max_seconds", w, 0.0, 365 * 86400.0, nullable=True)
        if max_seconds is not None and max_seconds <= 0.0:
            raise WrongTypeError(f"{w}: 'max_seconds' must be above 0")
        return cls(
            requests=get_int(d, "requests", w, 1, MAX_SHADOW_REQUESTS),
            fraction=fraction,
            agreement=get_float(d, "agreement", w, 0.0, 1.0),
            max_seconds=max_seconds,
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "requests": self.requests, "fraction": self.fraction, "agreement": self.agreement,
        }
        if self.max_seconds is not None:
            d["max_seconds"] = self.max_seconds
        return d


@dataclass(frozen=True)
class RampPolicy:
    steps: tuple[int, ...]  # percent of requests the new release answers, rising, last 100
    step_requests: int = DEFAULT_STEP_REQUESTS  # answers by the new release judged per step
    step_seconds: float | None = None  # a step also ends after this long (None: no limit)

    @classmethod
    def from_dict(cls, d: Any) -> RampPolicy:
        w = "manifest activation ramp"
        check_keys(d, w, {"steps", "step_requests"}, {"step_seconds"})
        steps = get(d, "steps", list, w)
        check_steps(steps, w)
        step_seconds = get_float(d, "step_seconds", w, 0.0, 365 * 86400.0, nullable=True)
        if step_seconds is not None and step_seconds <= 0.0:
            raise WrongTypeError(f"{w}: 'step_seconds' must be above 0")
        return cls(
            steps=tuple(steps),
            step_requests=get_int(d, "step_requests", w, 1, MAX_SHADOW_REQUESTS),
            step_seconds=step_seconds,
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"steps": list(self.steps), "step_requests": self.step_requests}
        if self.step_seconds is not None:
            d["step_seconds"] = self.step_seconds
        return d


def check_steps(steps: Sequence[Any], where: str) -> None:
    """Raises WrongTypeError unless `steps` are 1..MAX_RAMP_STEPS rising percents ending at
    100."""
    if not 1 <= len(steps) <= MAX_RAMP_STEPS:
        raise WrongTypeError(f"{where}: 'steps' must list 1 to {MAX_RAMP_STEPS} percents")
    for s in steps:
        if type(s) is not int or not 1 <= s <= 100:
            raise WrongTypeError(f"{where}: 'steps' has an invalid percent {str(s)[:20]!r}")
    if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
        raise WrongTypeError(f"{where}: 'steps' must rise")
    if steps[-1] != 100:
        raise WrongTypeError(f"{where}: the last of 'steps' must be 100")


@dataclass(frozen=True)
class CapturePolicy:
    reasons: tuple[str, ...]  # of CAPTURE_REASONS
    min_margin: float | None = None  # top-1 margin below which class scores count (low_margin)
    max_samples: int = DEFAULT_CAPTURE_MAX
    max_bytes: int = DEFAULT_CAPTURE_MAX_BYTES

    @classmethod
    def from_dict(cls, d: Any) -> CapturePolicy:
        w = "manifest activation capture"
        check_keys(d, w, {"reasons", "max_samples", "max_bytes"}, {"min_margin"})
        reasons = get(d, "reasons", list, w)
        if not reasons or any(r not in CAPTURE_REASONS for r in reasons) or (
            len(set(reasons)) != len(reasons)
        ):
            raise WrongTypeError(
                f"{w}: 'reasons' must list some of {', '.join(CAPTURE_REASONS)}, each once"
            )
        min_margin = get_float(d, "min_margin", w, 0.0, 1.0, nullable=True)
        if (REASON_LOW_MARGIN in reasons) != (min_margin is not None):
            raise WrongTypeError(f"{w}: 'min_margin' is set exactly when 'low_margin' is asked")
        return cls(
            reasons=tuple(reasons),
            min_margin=min_margin,
            max_samples=get_int(d, "max_samples", w, 1, 10**6),
            max_bytes=get_int(d, "max_bytes", w, 1, 2**40),
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "reasons": list(self.reasons), "max_samples": self.max_samples,
            "max_bytes": self.max_bytes,
        }
        if self.min_margin is not None:
            d["min_margin"] = self.min_margin
        return d


@dataclass(frozen=True)
class ActivationPolicy:
    shadow: ShadowPolicy | None = None
    ramp: RampPolicy | None = None
    capture: CapturePolicy | None = None

    @property
    def staged(self) -> bool:
        """Whether the release goes through a shadow stage or a ramp before activating."""
        return self.shadow is not None or self.ramp is not None

    @classmethod
    def from_dict(cls, d: Any) -> ActivationPolicy:
        """Raises ManifestError subclasses (one line naming the field)."""
        check_keys(d, "manifest activation", set(), {"shadow", "ramp", "capture"})
        return cls(
            shadow=ShadowPolicy.from_dict(d["shadow"]) if "shadow" in d else None,
            ramp=RampPolicy.from_dict(d["ramp"]) if "ramp" in d else None,
            capture=CapturePolicy.from_dict(d["capture"]) if "capture" in d else None,
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.shadow is not None:
            d["shadow"] = self.shadow.to_dict()
        if self.ramp is not None:
            d["ramp"] = self.ramp.to_dict()
        if self.capture is not None:
            d["capture"] = self.capture.to_dict()
        return d


def parse_activation(d: Any) -> ActivationPolicy | None:
    """The manifest's `"activation"` value parsed; None for an empty section."""
    policy = ActivationPolicy.from_dict(d)
    return policy if policy.to_dict() else None


# --- build options -------------------------------------------------------------------------


def parse_ramp(text: str) -> tuple[int, ...]:
    """`--ramp 10,50,100` as percents. Raises ValueError."""
    try:
        steps = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ValueError(f"--ramp {text!r}: give rising percents, e.g. 10,50,100") from None
    try:
        check_steps(steps, "--ramp")
    except WrongTypeError as e:
        raise ValueError(f"{e} (got {text!r})") from None
    return tuple(steps)


def parse_capture(text: str) -> tuple[tuple[str, ...], float | None]:
    """`--capture disagreement,nonfinite,low-margin:0.1` as reasons and the margin.
    Raises ValueError."""
    reasons: list[str] = []
    margin: float | None = None
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, _, value = part.partition(":")
        name = name.replace("-", "_")
        if name not in CAPTURE_REASONS:
            raise ValueError(
                f"--capture: unknown reason {name!r}; known: disagreement, nonfinite, "
                "low-margin:MARGIN"
            )
        if name == REASON_LOW_MARGIN:
            try:
                margin = float(value) if value else 0.1
            except ValueError:
                raise ValueError(f"--capture: low-margin:{value!r} is not a number") from None
            if not 0.0 < margin <= 1.0:
                raise ValueError(f"--capture: low-margin must be in (0, 1], got {margin:g}")
        elif value:
            raise ValueError(f"--capture: reason {name!r} takes no value")
        if name not in reasons:
            reasons.append(name)
    if not reasons:
        raise ValueError("--capture: name at least one reason")
    return tuple(reasons), margin


def build_policy(
    *,
    shadow_requests: int = 0,
    shadow_fraction: float = DEFAULT_SHADOW_FRACTION,
    shadow_agreement: float = DEFAULT_SHADOW_AGREEMENT,
    shadow_max_seconds: float | None = None,
    ramp: str | None = None,
    ramp_step_requests: int = DEFAULT_STEP_REQUESTS,
    ramp_step_seconds: float | None = None,
    capture: str | None = None,
    capture_max: int = DEFAULT_CAPTURE_MAX,
    capture_max_mb: float = DEFAULT_CAPTURE_MAX_BYTES / (1024 * 1024),
) -> ActivationPolicy | None:
    """The policy `satchel bundle build`'s flags ask for; None when they ask for nothing
    (the manifest then has no activation section). Raises ValueError, one line."""
    shadow = None
    if shadow_requests < 0 or shadow_requests > MAX_SHADOW_REQUESTS:
        raise ValueError(f"--shadow-requests must be 0 to {MAX_SHADOW_REQUESTS}")
    if not 0.0 < shadow_fraction <= 1.0:
        raise ValueError(f"--shadow-fraction must be in (0, 1], got {shadow_fraction:g}")
    if not 0.0 <= shadow_agreement <= 1.0:
        raise ValueError(f"--shadow-agreement must be in [0, 1], got {shadow_agreement:g}")
    if shadow_requests:
        shadow = ShadowPolicy(shadow_requests, shadow_fraction, shadow_agreement,
                              shadow_max_seconds)
    if ramp_step_requests < 1:
        raise ValueError("--ramp-step-requests must be at least 1")
    ramp_policy = (
        RampPolicy(parse_ramp(ramp), ramp_step_requests, ramp_step_seconds) if ramp else None
    )
    capture_policy = None
    if capture:
        reasons, margin = parse_capture(capture)
        if capture_max < 1:
            raise ValueError("--capture-max must be at least 1")
        if capture_max_mb <= 0:
            raise ValueError("--capture-max-mb must be above 0")
        if shadow is None and ramp_policy is None:
            raise ValueError(  # inputs are kept only while the new release is being judged
                "--capture needs a shadow stage (--shadow-requests) or a ramp (--ramp)"
            )
        capture_policy = CapturePolicy(reasons, margin, capture_max,
                                       max(1, int(capture_max_mb * 1024 * 1024)))
    policy = ActivationPolicy(shadow, ramp_policy, capture_policy)
    return policy if policy.to_dict() else None
