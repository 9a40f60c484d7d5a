"""onnxruntime adapter: the configured execution providers (CPU by default), quiet logging,
configurable threads.

onnxruntime is imported only when a model is loaded, so importing this module
costs nothing on a device without it.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import numpy as np

from satchel.agent.runtimes.accel import CPU, Acceleration, check_onnx_providers
from satchel.agent.runtimes.base import TensorSpec, check_feeds, first_line
from satchel.agent.runtimes.errors import InferenceError, ModelLoadError, RuntimeUnavailableError

RUNTIME_NAME = "onnxruntime"
# 0 verbose .. 4 fatal. Only fatal: a failing run is reported in one line by us, and ERROR
# lines (ExecuteKernel ...) would reach a technician's terminal before it.
_LOG_SEVERITY_FATAL = 4
# External data entries are {key: "location", ...}: field 1, 8 bytes, as protobuf writes it.
_EXTERNAL_DATA_KEY = b"\x0a\x08location"
_EXTERNAL_DATA_SCAN_BYTES = 16 * 1024 * 1024  # bytes: larger graph files are not scanned
PREPACK_MAX_TENSOR_SHARE = 1 / 8  # of mapped weights, the most one tensor may hold for them
# to be prepacked (what the load's peak grows by: `_prepack_pays`)
_ORT_STATUS_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")

# onnxruntime's tensor type strings -> KServe v2 datatype names.
ORT_TO_DATATYPE: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def _reason(error: Exception) -> str:
    """onnxruntime's message without its "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : " prefix."""
    return _ORT_STATUS_PREFIX.sub("", first_line(error))


def _tensor_spec(arg: Any) -> TensorSpec:
    """Describe an onnxruntime NodeArg; symbolic or unknown dimensions become -1."""
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in arg.shape or ())
    return TensorSpec(name=arg.name, datatype=ORT_TO_DATATYPE.get(arg.type, arg.type), shape=shape)


def _external_data_graph(path: Path) -> bytes | None:
    """The graph file's bytes when the model keeps weights in external data files (it names
    a "location", the TensorProto external_data key, as protobuf encodes it), else None.
    Such graph files are small; a large file holds its weights itself and is not read here."""
    try:
        if path.stat().st_size > _EXTERNAL_DATA_SCAN_BYTES:
            return None
        graph = path.read_bytes()
    except OSError:
        return None
    return graph if _EXTERNAL_DATA_KEY in graph else None


def _prepack_pays(model: bytes) -> bool:
    """Whether onnxruntime may prepack weights it maps from the file (`model`: the graph's
    bytes, its weights in external data).

    Prepacking copies a weight into the layout its kernel wants, then lets the mapping go: in
    use, the packed copies take what the mapped pages would, and batched products no longer
    pack the whole matrix on every run (bench/batch_costs.py measures both on an 8-layer
    stack, as this loader loads it). But while a weight is packed, its
    mapped bytes and its copy are both resident: the load's peak grows by the largest
    tensor. So prepacking is allowed only where no tensor is over PREPACK_MAX_TENSOR_SHARE
    of the mapped weights; a model that is one big matrix keeps it off, and its peak at the
    model's size."""
    from satchel.agent.runtimes.onnx_weights import external_tensor_lengths

    lengths = external_tensor_lengths(model)
    if not lengths:
        return False
    return max(lengths) <= sum(lengths) * PREPACK_MAX_TENSOR_SHARE


def _external_weights_graph(path: Path) -> bytes | None:
    """A large model file's graph with its weights referenced in the file itself, so that
    onnxruntime maps them instead of copying them (agent.runtimes.onnx_weights); None for a
    small file (a copy of its weights costs little) or one left to onnxruntime as it is."""
    try:
        if path.stat().st_size <= _EXTERNAL_DATA_SCAN_BYTES:
            return None
        from satchel.agent.runtimes.onnx_weights import external_weights_graph

        return external_weights_graph(path)
    except OSError:
        return None


class OnnxModel:
    """An onnxruntime InferenceSession; `run` is thread-safe as the session is."""

    runtime = RUNTIME_NAME

    def __init__(self, session: Any) -> None:
        self._session: Any = session
        self.inputs = [_tensor_spec(arg) for arg in session.get_inputs()]
        self.outputs = [_tensor_spec(arg) for arg in session.get_outputs()]
        self._output_names = [spec.name for spec in self.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one inference and return every output by name. Raises InferenceError."""
        session = self._session
        if session is None:
            raise InferenceError("the model has been closed")
        check_feeds(self.inputs, feeds)
        try:
            results = session.run(self._output_names, dict(feeds))
        except Exception as e:  # onnxruntime raises its own pybind exception types
            raise InferenceError(f"onnxruntime failed to run the model: {_reason(e)}") from e
        return dict(zip(self._output_names, results, strict=True))

    def close(self) -> None:
        """Drop the session; onnxruntime frees it when the last reference goes."""
        self._session = None

    def __enter__(self) -> OnnxModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class OnnxRuntimeAdapter:
    """Loads `.onnx` files into onnxruntime, on the CPU unless told otherwise."""

    name = RUNTIME_NAME

    def available(self) -> bool:
        """True when onnxruntime can be imported."""
        return self.version() is not None

    def version(self) -> str | None:
        """onnxruntime's version, or None when it cannot be imported."""
        try:
            ort = importlib.import_module("onnxruntime")
        except (ImportError, OSError):
            return None
        return str(ort.__version__)

    def load(
        self, path: Path, *, threads: int | None = None, signature: str | None = None,
        acceleration: Acceleration = CPU,
    ) -> OnnxModel:
        """Load an ONNX model; `threads` caps intra-op threads (None: runtime default), on
        the execution providers `acceleration` names (refused when one is not available).

        `signature` exists for TFLite's sake: any value but None is refused.
        Raises RuntimeUnavailableError, ModelLoadError.
        """
        if signature is not None:
            raise ModelLoadError(
                f"onnx models have no signatures: {Path(path).name} cannot run"
                f" signature {signature!r}; leave the signature unset"
            )
        try:
            ort = importlib.import_module("onnxruntime")
        except ImportError as e:
            raise RuntimeUnavailableError("onnxruntime is not installed on this device") from e
        path = Path(path)
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path}")
        check_onnx_providers(acceleration, ort)
        graph = _external_weights_graph(path)
        if graph is not None:
            try:
                return OnnxModel(self._session(ort, graph, path, threads, acceleration))
            except Exception:  # noqa: BLE001, S110 - judged below, on the file as it is
                pass
        try:
            session = self._session(ort, str(path), path, threads, acceleration)
        except Exception as e:  # invalid protobuf, unsupported opset, bad graph, ...
            raise ModelLoadError(f"onnxruntime cannot load {path.name}: {_reason(e)}") from e
        return OnnxModel(session)

    @staticmethod
    def _session(ort: Any, model: str | bytes, path: Path, threads: int | None,
                 acceleration: Acceleration) -> Any:
        """An InferenceSession of `model` (the file's path, or a derived graph whose
        weights are external data in `path`: agent.runtimes.onnx_weights)."""
        options = ort.SessionOptions()
        options.log_severity_level = _LOG_SEVERITY_FATAL
        if threads is not None:
            options.intra_op_num_threads = threads
        if isinstance(model, bytes):
            options.add_session_config_entry(
                "session.model_external_initializers_file_folder_path", str(path.parent))
        mapped = model if isinstance(model, bytes) else _external_data_graph(path)
        if mapped is not None and not _prepack_pays(mapped):
            options.add_session_config_entry("session.disable_prepacking", "1")
        return ort.InferenceSession(model, sess_options=options,
                                    providers=acceleration.onnx_session_providers())
