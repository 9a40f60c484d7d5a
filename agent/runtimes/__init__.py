"""Runtime adapters: load ONNX and TFLite models and run them, behind one interface.

Used by the agent (smoke tests, inference server) and the manager (bundle
build). Importing this package does not import any ML runtime.
"""

from __future__ import annotations

from pathlib import Path

from satchel.agent.runtimes.base import (
    DATATYPE_TO_NUMPY,
    LoadedModel,
    RuntimeAdapter,
    TensorSpec,
    check_feeds,
    dequantize,
    quantize,
)
from satchel.agent.runtimes.errors import (
    InferenceError,
    ModelLoadError,
    ModelRuntimeError,
    RuntimeUnavailableError,
    UnsupportedModelError,
)
from satchel.agent.runtimes.onnx import OnnxRuntimeAdapter

__all__ = [
    "DATATYPE_TO_NUMPY",
    "InferenceError",
    "LoadedModel",
    "ModelLoadError",
    "ModelRuntimeError",
    "RuntimeAdapter",
    "RuntimeUnavailableError",
    "TensorSpec",
    "UnsupportedModelError",
    "check_feeds",
    "dequantize",
    "get_runtime",
    "installed_runtimes",
    "known_runtimes",
    "quantize",
    "runtime_version",
    "runtime_for_file",
]

_RUNTIME_NAMES = ("onnxruntime", "tflite")
_ADAPTERS: dict[str, RuntimeAdapter] = {}


def _adapter(name: str) -> RuntimeAdapter | None:
    """The adapter for a runtime name, or None when it is unknown. Made when first asked
    for: the TFLite adapter's module loads only for a TFLite model (issue 14)."""
    if name not in _ADAPTERS and name in _RUNTIME_NAMES:
        if name == "tflite":
            from satchel.agent.runtimes.tflite import TFLiteAdapter

            _ADAPTERS[name] = TFLiteAdapter()
        else:
            _ADAPTERS[name] = OnnxRuntimeAdapter()
    return _ADAPTERS.get(name)
_RUNTIME_BY_SUFFIX = {".onnx": "onnxruntime", ".tflite": "tflite"}


def runtime_for_file(path: Path) -> str:
    """The runtime name for a model file, from its extension.

    Raises UnsupportedModelError for anything but `.onnx` and `.tflite`.
    """
    suffix = Path(path).suffix.lower()
    try:
        return _RUNTIME_BY_SUFFIX[suffix]
    except KeyError:
        raise UnsupportedModelError(
            f"{Path(path).name}: unsupported model file type {suffix or '(none)'!r};"
            " expected .onnx or .tflite"
        ) from None


def get_runtime(name: str) -> RuntimeAdapter:
    """The adapter for a runtime name ("onnxruntime", "tflite").

    Raises RuntimeUnavailableError when the name is unknown or the runtime is not usable here.
    """
    adapter = _adapter(name)
    if adapter is None:
        raise RuntimeUnavailableError(
            f"unknown runtime {name!r}; known runtimes: {', '.join(sorted(_RUNTIME_NAMES))}"
        )
    if not adapter.available():
        raise RuntimeUnavailableError(f"runtime {name!r} is not installed on this device")
    return adapter


def known_runtimes() -> list[str]:
    """The names of every runtime an adapter exists for, installed here or not."""
    return sorted(_RUNTIME_NAMES)


def runtime_version(name: str) -> str | None:
    """The installed version of one runtime, or None when it is unknown or not usable here.
    Imports that runtime (and only it). Never raises."""
    adapter = _adapter(name)
    return adapter.version() if adapter is not None else None


def installed_runtimes() -> dict[str, str]:
    """Runtime name -> package version, for every runtime usable on this machine. Never raises."""
    found: dict[str, str] = {}
    for name in _RUNTIME_NAMES:
        adapter = _adapter(name)
        version = adapter.version() if adapter is not None else None
        if version is not None:
            found[name] = version
    return found
