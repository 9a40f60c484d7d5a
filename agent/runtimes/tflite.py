"""TFLite adapter: ai-edge-litert, or tflite-runtime where numpy is still 1.x.

tflite-runtime 2.14 (its last release) imports fine beside numpy 2 but fails
when an Interpreter is built, so the fallback is chosen on numpy's major
version, not on whether the import succeeds. The interpreter is imported only
when needed, so importing this module costs nothing on a device without it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.runtimes.base import NUMPY_TO_DATATYPE, TensorSpec, check_feeds, first_line
from agent.runtimes.errors import InferenceError, ModelLoadError, RuntimeUnavailableError

RUNTIME_NAME = "tflite"


_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Silence file descriptor 2 while the interpreter is built.

    The TFLite C++ runtime prints banners ("INFO: Created TensorFlow Lite XNNPACK delegate")
    and load errors straight to fd 2; we report load failures ourselves in one line, and a
    technician's terminal must show only that line.
    """
    with _STDERR_LOCK:
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)


@dataclass(frozen=True)
class _Implementation:
    package: str  # distribution name, e.g. "ai-edge-litert"
    interpreter: type


@functools.cache
def _implementation() -> _Implementation | None:
    """The TFLite interpreter this machine can use, preferring ai-edge-litert."""
    try:
        module = importlib.import_module("ai_edge_litert.interpreter")
        return _Implementation("ai-edge-litert", module.Interpreter)
    except (ImportError, OSError):
        pass
    if int(np.__version__.split(".")[0]) >= 2:
        return None
    try:
        module = importlib.import_module("tflite_runtime.interpreter")
        return _Implementation("tflite-runtime", module.Interpreter)
    except (ImportError, OSError):
        return None


def _tensor_spec(detail: dict[str, Any]) -> TensorSpec:
    """Describe an interpreter tensor; the shape signature carries -1 for dynamic dims."""
    signature = detail.get("shape_signature")
    shape = signature if signature is not None and len(signature) else detail["shape"]
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail.get("quantization", (0.0, 0))
    quantization = None
    if scale:
        quantization = {"scale": float(scale), "zero_point": int(zero_point)}
    return TensorSpec(
        name=detail["name"],
        datatype=NUMPY_TO_DATATYPE.get(dtype, str(dtype)),
        shape=tuple(int(dim) for dim in shape),
        quantization=quantization,
    )


class TFLiteModel:
    """A TFLite interpreter. One lock serializes `run`, as interpreters are not re-entrant."""

    runtime = RUNTIME_NAME

    def __init__(self, interpreter: Any) -> None:
        self._interpreter: Any = interpreter
        self._lock = threading.Lock()
        input_details = interpreter.get_input_details()
        output_details = interpreter.get_output_details()
        self.inputs = [_tensor_spec(d) for d in input_details]
        self.outputs = [_tensor_spec(d) for d in output_details]
        self._input_index = {d["name"]: int(d["index"]) for d in input_details}
        self._output_index = {d["name"]: int(d["index"]) for d in output_details}
        self._allocated_shape = {
            d["name"]: tuple(int(x) for x in d["shape"]) for d in input_details
        }

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one inference and return every output by name.

        A feed whose batch dimension differs from the model's resizes the input
        first. Raises InferenceError.
        """
        feeds = {name: np.asarray(array) for name, array in feeds.items()}
        check_feeds(self.inputs, feeds, flexible_batch=True)
        with self._lock:
            interpreter = self._interpreter
            if interpreter is None:
                raise InferenceError("the model has been closed")
            try:
                self._resize_for(feeds)
                for name, array in feeds.items():
                    interpreter.set_tensor(self._input_index[name], np.ascontiguousarray(array))
                interpreter.invoke()
                return {
                    name: interpreter.get_tensor(index)
                    for name, index in self._output_index.items()
                }
            except (ValueError, RuntimeError) as e:
                raise InferenceError(f"tflite failed to run the model: {first_line(e)}") from e

    def _resize_for(self, feeds: dict[str, np.ndarray]) -> None:
        """Resize inputs whose feed shape differs from the allocated one, then reallocate."""
        changed = {
            name: tuple(array.shape)
            for name, array in feeds.items()
            if tuple(array.shape) != self._allocated_shape[name]
        }
        if not changed:
            return
        for name, shape in changed.items():
            self._interpreter.resize_tensor_input(self._input_index[name], list(shape))
        self._interpreter.allocate_tensors()
        self._allocated_shape.update(changed)

    def close(self) -> None:
        """Drop the interpreter; later `run` calls raise InferenceError."""
        with self._lock:
            self._interpreter = None

    def __enter__(self) -> TFLiteModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TFLiteAdapter:
    """Loads `.tflite` files into ai-edge-litert (or tflite-runtime under numpy 1.x)."""

    name = RUNTIME_NAME

    def available(self) -> bool:
        """True when a usable TFLite interpreter is installed."""
        return _implementation() is not None

    def package(self) -> str | None:
        """Which distribution provides the interpreter ("ai-edge-litert", "tflite-runtime")."""
        implementation = _implementation()
        return implementation.package if implementation else None

    def version(self) -> str | None:
        """The interpreter package's version, or None when none is usable."""
        implementation = _implementation()
        if implementation is None:
            return None
        try:
            return importlib.metadata.version(implementation.package)
        except importlib.metadata.PackageNotFoundError:
            return None

    def load(self, path: Path, *, threads: int | None = None) -> TFLiteModel:
        """Load a TFLite model; `threads` sets the interpreter's threads (None: default).

        Raises RuntimeUnavailableError, ModelLoadError.
        """
        implementation = _implementation()
        if implementation is None:
            raise RuntimeUnavailableError(
                "no usable TFLite runtime: install ai-edge-litert (or tflite-runtime with numpy<2)"
            )
        path = Path(path)
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path}")
        try:
            with _native_stderr_silenced():
                interpreter = implementation.interpreter(model_path=str(path), num_threads=threads)
                interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ModelLoadError(f"tflite cannot load {path.name}: {first_line(e)}") from e
        return TFLiteModel(interpreter)
