"""TFLite adapter: ai-edge-litert, or tflite-runtime where numpy is still 1.x.

tflite-runtime 2.14 (its last release) imports fine beside numpy 2 but fails
when an Interpreter is built, so the fallback is chosen on numpy's major
version, not on whether the import succeeds. The interpreter is imported only
when needed, so importing this module costs nothing on a device without it.

Models with dynamic input dimensions are allocated at their feed's shapes, never
at the placeholder shape (where the XNNPACK delegate can fail); a failure inside
that delegate is retried once on the builtin kernels alone. A model with
SignatureDefs runs one of them, through the interpreter's signature runner.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from satchel.agent.runtimes.accel import CPU, Acceleration, load_delegates
from satchel.agent.runtimes.base import NUMPY_TO_DATATYPE, TensorSpec, check_feeds, first_line
from satchel.agent.runtimes.errors import InferenceError, ModelLoadError, RuntimeUnavailableError

RUNTIME_NAME = "tflite"
SERVING_DEFAULT = "serving_default"  # the signature converters name a model's main entry


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
    # OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES, or None where the package lacks it
    without_default_delegates: Any


@functools.cache
def _implementation() -> _Implementation | None:
    """The TFLite interpreter this machine can use, preferring ai-edge-litert."""
    try:
        module = importlib.import_module("ai_edge_litert.interpreter")
        return _Implementation("ai-edge-litert", module.Interpreter, _without_delegates(module))
    except (ImportError, OSError):
        pass
    if int(np.__version__.split(".")[0]) >= 2:
        return None
    try:
        module = importlib.import_module("tflite_runtime.interpreter")
        return _Implementation("tflite-runtime", module.Interpreter, _without_delegates(module))
    except (ImportError, OSError):
        return None


def delegate_loader() -> Any:
    """The interpreter package's `load_delegate(library, options)`.

    Raises RuntimeUnavailableError when no TFLite runtime is usable.
    """
    implementation = _implementation()
    if implementation is None:
        raise RuntimeUnavailableError("tflite_delegates are set but no TFLite runtime is usable")
    module = "ai_edge_litert" if implementation.package == "ai-edge-litert" else "tflite_runtime"
    return importlib.import_module(f"{module}.interpreter").load_delegate


def _without_delegates(module: Any) -> Any:
    resolver_types = getattr(module, "OpResolverType", None)
    return getattr(resolver_types, "BUILTIN_WITHOUT_DEFAULT_DELEGATES", None)


def _failed_in_xnnpack(error: BaseException) -> bool:
    """True when the default XNNPACK delegate, not the model, refused to prepare or run.

    Its reshape is stricter than the builtin kernels' (e.g. "XNNPack delegate failed
    to reshape runtime ... (TfLiteXNNPackDelegate) failed to prepare").
    """
    return "xnnpack" in str(error).lower()


def _unresolved_op(error: BaseException) -> bool:
    """True for the interpreter's refusal of a custom (or TensorFlow "Flex") op it lacks."""
    text = str(error).lower()
    return "unresolved custom op" in text or "select tensorflow op" in text


def _tensor_spec(detail: dict[str, Any], name: str | None = None) -> TensorSpec:
    """Describe an interpreter tensor; the shape signature carries -1 for dynamic dims.

    `name` replaces the tensor's own name (a signature names its tensors itself).
    """
    signature = detail.get("shape_signature")
    shape = signature if signature is not None and len(signature) else detail["shape"]
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail.get("quantization", (0.0, 0))
    quantization = None
    if scale:
        quantization = {"scale": float(scale), "zero_point": int(zero_point)}
    return TensorSpec(
        name=detail["name"] if name is None else name,
        datatype=NUMPY_TO_DATATYPE.get(dtype, str(dtype)),
        shape=tuple(int(dim) for dim in shape),
        quantization=quantization,
    )


def _shapes(feeds: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(array.shape) for name, array in feeds.items()}


class _Binding(Protocol):
    """One way into an interpreter: subgraph 0's own tensors, or a SignatureDef."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def allocate(self) -> None:
        """Allocate at the declared shapes (static models only). Raises ValueError, RuntimeError."""
        ...

    def reshapes_for(self, feeds: dict[str, np.ndarray]) -> bool:
        """True when running `feeds` means resizing and reallocating first."""
        ...

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Resize when needed, set inputs, invoke. Raises ValueError, RuntimeError."""
        ...


class _SubgraphBinding:
    """Subgraph 0's inputs and outputs, for models without signatures."""

    def __init__(self, interpreter: Any) -> None:
        self._interpreter = interpreter
        input_details = interpreter.get_input_details()
        output_details = interpreter.get_output_details()
        self.inputs = [_tensor_spec(d) for d in input_details]
        self.outputs = [_tensor_spec(d) for d in output_details]
        self._input_index = {d["name"]: int(d["index"]) for d in input_details}
        self._output_index = {d["name"]: int(d["index"]) for d in output_details}
        self._declared = {d["name"]: tuple(int(x) for x in d["shape"]) for d in input_details}
        # Input shapes of the last successful allocation; None: allocate before the next run.
        self._allocated: dict[str, tuple[int, ...]] | None = None

    def allocate(self) -> None:
        self._interpreter.allocate_tensors()
        self._allocated = dict(self._declared)

    def reshapes_for(self, feeds: dict[str, np.ndarray]) -> bool:
        return self._allocated != _shapes(feeds)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        interpreter = self._interpreter
        if self.reshapes_for(feeds):
            # Every input takes its feed's shape before allocating: a dynamic model
            # allocated at its placeholder shape can fail inside the XNNPACK delegate.
            self._allocated = None
            for name, shape in _shapes(feeds).items():
                interpreter.resize_tensor_input(self._input_index[name], list(shape))
            interpreter.allocate_tensors()
            self._allocated = _shapes(feeds)
        for name, array in feeds.items():
            interpreter.set_tensor(self._input_index[name], np.ascontiguousarray(array))
        interpreter.invoke()
        return {name: interpreter.get_tensor(index) for name, index in self._output_index.items()}


class _SignatureBinding:
    """One SignatureDef, run through the interpreter's signature runner, by its own names."""

    def __init__(self, interpreter: Any, key: str) -> None:
        self._runner = interpreter.get_signature_runner(key)
        self.inputs = [
            _tensor_spec(d, name) for name, d in self._runner.get_input_details().items()
        ]
        self.outputs = [
            _tensor_spec(d, name) for name, d in self._runner.get_output_details().items()
        ]
        self._shapes: dict[str, tuple[int, ...]] | None = None  # of the last successful run

    def allocate(self) -> None:
        # The runner allocates only when called and the interpreter refuses to allocate once
        # a runner exists, so this reaches the signature's subgraph the way the runner does.
        wrapper = getattr(self._runner, "_interpreter_wrapper", None)
        subgraph = getattr(self._runner, "_subgraph_index", None)
        if wrapper is not None and subgraph is not None:
            wrapper.AllocateTensors(subgraph)

    def reshapes_for(self, feeds: dict[str, np.ndarray]) -> bool:
        return self._shapes != _shapes(feeds)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # The runner resizes every input to its feed, then allocates, on each call.
        self._shapes = None
        results = self._runner(**{n: np.ascontiguousarray(a) for n, a in feeds.items()})
        self._shapes = _shapes(feeds)
        return {spec.name: results[spec.name] for spec in self.outputs}


def _bind(interpreter: Any, signature: str | None) -> _Binding:
    if signature is None:
        return _SubgraphBinding(interpreter)
    return _SignatureBinding(interpreter, signature)


def _is_dynamic(binding: _Binding) -> bool:
    return any(dim < 0 for spec in binding.inputs for dim in spec.shape)


class TFLiteModel:
    """A TFLite interpreter. One lock serializes `run`, as interpreters are not re-entrant.

    `signature` is the SignatureDef it runs (None: subgraph 0, for a model without
    signatures). `default_delegates` turns False once the XNNPACK delegate has
    failed and the model runs on the builtin kernels alone.
    """

    runtime = RUNTIME_NAME

    def __init__(
        self,
        binding: _Binding,
        *,
        signature: str | None = None,
        signatures: list[str] | None = None,
        default_delegates: bool = True,
        rebuild_without_delegates: Callable[[], _Binding] | None = None,
    ) -> None:
        self._binding: _Binding | None = binding
        self._lock = threading.Lock()
        self._signatures = list(signatures or [])
        self._rebuild = rebuild_without_delegates
        self.signature = signature
        self.default_delegates = default_delegates
        self.inputs = binding.inputs
        self.outputs = binding.outputs

    def signatures(self) -> list[str]:
        """Every SignatureDef key in the model file (empty for a model without signatures)."""
        return list(self._signatures)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one inference and return every output by name.

        Inputs whose feed shape differs from the allocated one (a dynamic dimension,
        another batch size) are resized first. A failure inside the XNNPACK delegate
        is retried once on an interpreter without default delegates, which the model
        keeps. Raises InferenceError.
        """
        feeds = {name: np.asarray(array) for name, array in feeds.items()}
        check_feeds(self.inputs, feeds, flexible_batch=True)
        with self._lock:
            binding = self._binding
            if binding is None:
                raise InferenceError("the model has been closed")
            # Native code prints only while it prepares the graph; the steady state is not
            # silenced, as silencing fd 2 takes a process-wide lock.
            quiet = binding.reshapes_for(feeds)
            rebuild = self._rebuild if self.default_delegates else None
            try:
                with _native_stderr_silenced() if quiet else contextlib.nullcontext():
                    return binding.run(feeds)
            except (ValueError, RuntimeError) as e:
                if rebuild is None or not _failed_in_xnnpack(e):
                    raise InferenceError(f"tflite failed to run the model: {first_line(e)}") from e
            try:
                with _native_stderr_silenced():
                    self._binding = binding = rebuild()
                    self.default_delegates = False
                    return binding.run(feeds)
            except (ValueError, RuntimeError) as e:
                raise InferenceError(f"tflite failed to run the model: {first_line(e)}") from e

    def close(self) -> None:
        """Drop the interpreter; later `run` calls raise InferenceError."""
        with self._lock:
            self._binding = None

    def __enter__(self) -> TFLiteModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _choose_signature(model: str, keys: list[str], requested: str | None) -> str | None:
    """The SignatureDef to run: the requested one, the only one, or serving_default.

    None means the model has no signatures (run subgraph 0). Raises ModelLoadError.
    """
    if requested is not None:
        if requested in keys:
            return requested
        known = f"its signatures are {', '.join(keys)}" if keys else "it has no signatures"
        raise ModelLoadError(f"{model} has no signature {requested!r}: {known}")
    if not keys:
        return None
    if len(keys) == 1:
        return keys[0]
    if SERVING_DEFAULT in keys:
        return SERVING_DEFAULT
    raise ModelLoadError(
        f"{model} has {len(keys)} signatures ({', '.join(keys)}) and none is"
        f" {SERVING_DEFAULT!r}: choose one of them"
    )


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
        import importlib.metadata  # here: ~25 ms of imports an ONNX install does not need

        try:
            return importlib.metadata.version(implementation.package)
        except importlib.metadata.PackageNotFoundError:
            return None

    def signatures(self, path: Path) -> list[str]:
        """The SignatureDef keys of a model file, in file order (empty when it has none).

        Raises RuntimeUnavailableError, ModelLoadError.
        """
        implementation, path = self._check(path)
        try:
            with _native_stderr_silenced():
                interpreter = implementation.interpreter(model_path=str(path))
                return list(interpreter.get_signature_list())
        except (ValueError, RuntimeError) as e:
            raise ModelLoadError(f"tflite cannot load {path.name}: {first_line(e)}") from e

    def load(
        self, path: Path, *, threads: int | None = None, signature: str | None = None,
        acceleration: Acceleration = CPU,
    ) -> TFLiteModel:
        """Load a TFLite model; `threads` sets the interpreter's threads (None: default).

        `signature` names the SignatureDef to run; None picks the only one, or
        "serving_default" among several, or subgraph 0 when the model has none.
        A model with static inputs is allocated now, so a broken one fails here; one
        with dynamic inputs is allocated at its first run, at the feed's shapes, and
        is only checked here for custom ops the interpreter lacks. `acceleration` adds
        external delegates and may turn the default XNNPACK delegate off.
        Raises RuntimeUnavailableError, ModelLoadError.
        """
        implementation, path = self._check(path)
        xnnpack = acceleration.tflite_xnnpack
        if not xnnpack and implementation.without_default_delegates is None:
            raise RuntimeUnavailableError(
                f"tflite_xnnpack = false needs ai-edge-litert; {implementation.package} cannot "
                "turn the XNNPACK delegate off"
            )
        delegates = (load_delegates(acceleration, delegate_loader())
                     if acceleration.tflite_delegates else [])
        build = functools.partial(_new_interpreter, implementation, path, threads,
                                  delegates=delegates)

        def rebuild_without_delegates() -> _Binding:
            return _bind(build(default_delegates=False), chosen)

        can_rebuild = implementation.without_default_delegates is not None
        try:
            with _native_stderr_silenced():
                interpreter = build(default_delegates=xnnpack)
                keys = list(interpreter.get_signature_list())
                chosen = _choose_signature(path.name, keys, signature)
                binding = _bind(interpreter, chosen)
                default_delegates = xnnpack
                if _is_dynamic(binding):
                    _refuse_unresolved_ops(build(default_delegates=not can_rebuild), chosen)
                else:
                    try:
                        binding.allocate()
                    except (ValueError, RuntimeError) as e:
                        if not (can_rebuild and _failed_in_xnnpack(e)):
                            raise
                        binding, default_delegates = rebuild_without_delegates(), False
                        binding.allocate()
        except (ValueError, RuntimeError) as e:
            raise ModelLoadError(f"tflite cannot load {path.name}: {first_line(e)}") from e
        return TFLiteModel(
            binding,
            signature=chosen,
            signatures=keys,
            default_delegates=default_delegates,
            rebuild_without_delegates=rebuild_without_delegates if can_rebuild else None,
        )

    def _check(self, path: Path) -> tuple[_Implementation, Path]:
        """Raises RuntimeUnavailableError, ModelLoadError."""
        implementation = _implementation()
        if implementation is None:
            raise RuntimeUnavailableError(
                "no usable TFLite runtime: install ai-edge-litert (or tflite-runtime with numpy<2)"
            )
        path = Path(path)
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path}")
        return implementation, path


def _new_interpreter(
    implementation: _Implementation, path: Path, threads: int | None, *, default_delegates: bool,
    delegates: list[Any] | None = None,
) -> Any:
    """A fresh interpreter over `path`, with `delegates` (loaded external ones).

    Raises ValueError, RuntimeError.
    """
    options: dict[str, Any] = {"model_path": str(path), "num_threads": threads}
    if delegates:
        options["experimental_delegates"] = delegates
    if not default_delegates:
        options["experimental_op_resolver_type"] = implementation.without_default_delegates
    return implementation.interpreter(**options)


def _refuse_unresolved_ops(probe: Any, signature: str | None) -> None:
    """Allocate a throwaway interpreter at the placeholder shapes to find custom ops it lacks.

    The interpreter reports those only when it prepares the graph, which a dynamic model
    otherwise first does at its first run. Other failures are expected at placeholder
    shapes and left to that run. Raises RuntimeError for an unresolved op.
    """
    try:
        _bind(probe, signature).allocate()
    except (ValueError, RuntimeError) as e:
        if _unresolved_op(e):
            raise
