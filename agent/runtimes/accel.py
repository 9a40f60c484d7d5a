"""Where models run: onnxruntime execution providers and TFLite delegates.

The agent's settings choose them (`onnx_providers`, `onnx_provider_options`,
`tflite_delegates`, `tflite_xnnpack`; the CPU by default) and the same `Acceleration` is
handed to the smoke test and to the inference server, so a release is tested on the hardware
that will serve it. A provider or delegate this device does not have is refused, never
silently replaced by the CPU (onnxruntime itself would only warn and fall back).
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from satchel.agent.runtimes.errors import RuntimeUnavailableError

CPU_PROVIDER = "CPUExecutionProvider"


@dataclass(frozen=True)
class Delegate:
    """An external TFLite delegate: its shared library and the options it is loaded with."""

    path: str
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Acceleration:
    onnx_providers: tuple[str, ...] = (CPU_PROVIDER,)  # in order of preference
    onnx_provider_options: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    tflite_delegates: tuple[Delegate, ...] = ()  # loaded in this order
    tflite_xnnpack: bool = True  # TFLite's default XNNPACK CPU delegate

    @classmethod
    def of(cls, settings: Any) -> Acceleration:
        """The choice an `AgentConfig` (or anything with its four fields) makes."""
        return cls(
            onnx_providers=tuple(settings.onnx_providers),
            onnx_provider_options={k: dict(v) for k, v in settings.onnx_provider_options.items()},
            tflite_delegates=tuple(Delegate(d.path, dict(d.options))
                                   for d in settings.tflite_delegates),
            tflite_xnnpack=bool(settings.tflite_xnnpack),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON, for the child process that runs an isolated smoke test."""
        return {
            "onnx_providers": list(self.onnx_providers),
            "onnx_provider_options": {k: dict(v) for k, v in self.onnx_provider_options.items()},
            "tflite_delegates": [{"path": d.path, "options": dict(d.options)}
                                 for d in self.tflite_delegates],
            "tflite_xnnpack": self.tflite_xnnpack,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Acceleration:
        """The inverse of `to_dict`. Raises KeyError, TypeError for a malformed one."""
        return cls(
            onnx_providers=tuple(d["onnx_providers"]),
            onnx_provider_options={k: dict(v) for k, v in d["onnx_provider_options"].items()},
            tflite_delegates=tuple(Delegate(x["path"], dict(x["options"]))
                                   for x in d["tflite_delegates"]),
            tflite_xnnpack=bool(d["tflite_xnnpack"]),
        )

    def onnx_session_providers(self) -> list[Any]:
        """The `providers` argument of an InferenceSession: names, with options where set."""
        return [(name, dict(self.onnx_provider_options[name]))
                if name in self.onnx_provider_options else name
                for name in self.onnx_providers]


CPU = Acceleration()


def check_onnx_providers(acceleration: Acceleration, ort: Any = None) -> None:
    """Refuse providers onnxruntime does not have here, naming the ones it has.

    Imports onnxruntime only when something else than the CPU is asked for.
    Raises RuntimeUnavailableError.
    """
    if acceleration.onnx_providers == (CPU_PROVIDER,) and not acceleration.onnx_provider_options:
        return
    if ort is None:
        try:
            ort = importlib.import_module("onnxruntime")
        except ImportError as e:
            raise RuntimeUnavailableError(
                "onnx_providers are set but onnxruntime is not installed on this device"
            ) from e
    available = list(ort.get_available_providers())
    for name in acceleration.onnx_providers:
        if name not in available:
            raise RuntimeUnavailableError(
                f"onnx_providers: {name} is not available on this device; available: "
                f"{', '.join(available)}"
            )
    for name in acceleration.onnx_provider_options:
        if name not in acceleration.onnx_providers:
            raise RuntimeUnavailableError(
                f"onnx_provider_options: {name} is not one of onnx_providers "
                f"({', '.join(acceleration.onnx_providers)})"
            )


def load_delegates(acceleration: Acceleration, load_delegate: Any) -> list[Any]:
    """The external TFLite delegates, loaded with `load_delegate` (the interpreter package's).

    Raises RuntimeUnavailableError naming the library that does not load.
    """
    loaded = []
    for delegate in acceleration.tflite_delegates:
        if "/" in delegate.path and not Path(delegate.path).is_file():
            # a bare library name is searched for by the loader; a path must be there
            raise RuntimeUnavailableError(
                f"tflite_delegates: cannot load {delegate.path}: no such file"
            )
        library, why = _load_one(load_delegate, delegate)
        if why is not None:
            raise RuntimeUnavailableError(f"tflite_delegates: cannot load {delegate.path}: {why}")
        loaded.append(library)
    return loaded


def _load_one(load_delegate: Any, delegate: Delegate) -> tuple[Any, str | None]:
    """(the loaded delegate, None) or (None, why it did not load)."""
    hook = sys.unraisablehook
    sys.unraisablehook = functools.partial(_unless_half_built_delegate, hook)
    try:
        try:
            return load_delegate(delegate.path, dict(delegate.options)), None
        except (ValueError, RuntimeError, OSError) as e:
            why = _first_line(e)
        # Leaving the except block frees the half-built delegate, whose __del__ (LiteRT's)
        # trips over the attribute its __init__ never set: that noise is not the reason.
        return None, why
    finally:
        sys.unraisablehook = hook


def _unless_half_built_delegate(hook: Any, unraisable: Any) -> None:
    error = unraisable.exc_value
    if not (isinstance(error, AttributeError) and "Delegate" in str(error)):
        hook(unraisable)


def check_tflite_delegates(acceleration: Acceleration) -> None:
    """Load every configured delegate once, so a missing library is refused at start.

    Raises RuntimeUnavailableError.
    """
    if not acceleration.tflite_delegates:
        return
    from satchel.agent.runtimes.tflite import delegate_loader  # imports the interpreter

    load_delegates(acceleration, delegate_loader())


def check_available(acceleration: Acceleration) -> None:
    """Refuse, in one line, a provider or delegate this device does not have.

    Raises RuntimeUnavailableError.
    """
    check_onnx_providers(acceleration)
    check_tflite_delegates(acceleration)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
