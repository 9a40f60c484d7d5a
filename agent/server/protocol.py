"""The Open Inference Protocol (KServe v2 / Triton REST) as bytes in, objects out, no I/O.

Requests carry tensors as JSON (`data`, flat or nested, row-major) or, with Triton's binary
tensor data extension (what `tritonclient.http` sends by default), as raw little-endian
bytes after a JSON header whose length is the `Inference-Header-Content-Length` header.
Responses use the same two forms, chosen per output by `parameters.binary_data` or for all
outputs by the request parameter `binary_data_output`. `BYTES` tensors and the classification
extension's answers are coded in `tensors`. Parameters the server has no use for (on the
request, an input or an output) are ignored, as the protocol asks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol

import numpy as np

from satchel.agent.runtimes.base import DATATYPE_TO_NUMPY, NUMPY_TO_DATATYPE
from satchel.agent.server import tensors
from satchel.agent.server.errors import BadRequestError

HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ("binary_tensor_data", "classification", "statistics", "model_repository")
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tflite": "tflite"}


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool  # answer this output as raw bytes after the JSON header
    classification: int = 0  # answer the top-k classes of this output instead (0: no)


class InferRequest(NamedTuple):  # a tuple: made per request, 3-4x quicker than a dataclass
    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: tuple[RequestedOutput, ...] | None  # None: every output of the model
    binary_output: bool  # how outputs not asked for by name are answered
    parameters: Mapping[str, Any] = MappingProxyType({})  # the request's, as sent
    # (`max_latency_ms` and `accuracy_level` choose a variant: agent/variants)


def _fail(message: str) -> BadRequestError:
    return BadRequestError(message)


_fast_loads: Callable[[bytes], Any] | None
_fast_dumps: Callable[[Any], bytes] | None
try:  # a parser written in Rust: a tenth of the standard library's time on long number lists
    from orjson import dumps as _fast_dumps
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - orjson comes with the agent extras
    _fast_loads = _fast_dumps = None


def _load_json(data: bytes) -> dict[str, Any]:
    if _fast_loads is not None:
        try:
            doc = _fast_loads(data)
        except ValueError:  # NaN/Infinity tokens, huge integers, bad JSON: the standard
            pass  # library reads the first two and words the error for the last
        else:
            if isinstance(doc, dict):
                return doc
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise _fail(f"request body is not valid JSON: {str(e).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise _fail("request body must be a JSON object")
    return doc


def _shape(entry: Mapping[str, Any], name: str) -> tuple[int, ...]:
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise _fail(f"input {name!r}: 'shape' must be a list of non-negative integers")
    return tuple(shape)


def _dtype(entry: Mapping[str, Any], name: str) -> np.dtype[Any]:
    datatype = entry.get("datatype")
    if not isinstance(datatype, str):
        raise _fail(f"input {name!r}: 'datatype' must be a string such as \"FP32\"")
    if datatype == tensors.BYTES:
        return tensors.BYTES_DTYPE
    dtype = DATATYPE_TO_NUMPY.get(datatype)
    if dtype is None:
        raise _fail(f"input {name!r}: datatype {datatype[:20]!r} is not supported")
    return dtype


def _from_json_data(data: Any, dtype: np.dtype[Any], name: str) -> np.ndarray:
    """Numbers (or booleans for BOOL) to an array of `dtype`, refusing strings, fractions
    for integer types and integers out of the type's range, which numpy would let through."""
    if not isinstance(data, list):
        raise _fail(f"input {name!r}: 'data' must be a list")
    try:
        parsed = np.array(data)
    except (ValueError, TypeError, OverflowError):
        raise _fail(
            f"input {name!r}: 'data' must be a regular (not ragged) list of numbers"
        ) from None
    if parsed.size == 0:
        return parsed.astype(dtype)
    kind = parsed.dtype.kind
    if dtype.kind == "b":
        if kind != "b":
            raise _fail(f"input {name!r}: BOOL data must be true/false")
        return parsed
    if kind not in "biuf":
        raise _fail(f"input {name!r}: 'data' must hold numbers only")
    if dtype.kind in "iu":
        if kind == "f":
            raise _fail(f"input {name!r}: {NUMPY_TO_DATATYPE[dtype]} data must be integers")
        info = np.iinfo(dtype)
        if parsed.min() < info.min or parsed.max() > info.max:
            raise _fail(f"input {name!r}: a value is out of range for {NUMPY_TO_DATATYPE[dtype]}")
    return parsed.astype(dtype, copy=False)


def _binary_size(entry: Mapping[str, Any], name: str) -> int | None:
    parameters = entry.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise _fail(f"input {name!r}: 'parameters' must be an object")
    size = parameters.get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _fail(f"input {name!r}: 'binary_data_size' must be a non-negative integer")
    return size


def _parse_input(
    entry: Any, binary: memoryview, offset: int, max_elements: int
) -> tuple[str, np.ndarray, int]:
    """One request input as (name, array, bytes of binary data it used)."""
    if not isinstance(entry, dict):
        raise _fail("each input must be a JSON object")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise _fail("each input needs a 'name' string")
    shape = _shape(entry, name)
    dtype = _dtype(entry, name)
    count = math.prod(shape)
    if count > max_elements:
        raise _fail(f"input {name!r}: {count} elements is more than the {max_elements} allowed")
    size = _binary_size(entry, name)
    if dtype == tensors.BYTES_DTYPE:
        return _parse_bytes_input(entry, name, shape, count, size, binary, offset)
    if size is not None:
        if size != count * dtype.itemsize:
            raise _fail(
                f"input {name!r}: binary_data_size {size} does not match shape {list(shape)}"
                f" of {NUMPY_TO_DATATYPE[dtype]} ({count * dtype.itemsize} bytes)"
            )
        chunk = binary[offset : offset + size]
        if len(chunk) != size:
            raise _fail(f"input {name!r}: the request body ends inside its binary data")
        array = np.frombuffer(chunk, dtype=dtype.newbyteorder("<")).astype(dtype)
        return name, array.reshape(shape), size
    if "data" not in entry:
        raise _fail(f"input {name!r} has no 'data'")
    array = _from_json_data(entry["data"], dtype, name)
    if array.size != count:
        raise _fail(
            f"input {name!r}: 'data' holds {array.size} values but shape {list(shape)}"
            f" needs {count}"
        )
    return name, array.reshape(shape), 0


def _parse_bytes_input(
    entry: Mapping[str, Any], name: str, shape: tuple[int, ...], count: int, size: int | None,
    binary: memoryview, offset: int,
) -> tuple[str, np.ndarray, int]:
    if size is not None:
        chunk = binary[offset : offset + size]
        if len(chunk) != size:
            raise _fail(f"input {name!r}: the request body ends inside its binary data")
        return name, tensors.strings_from_binary(chunk, count, name).reshape(shape), size
    if "data" not in entry:
        raise _fail(f"input {name!r} has no 'data'")
    return name, tensors.strings_from_json(entry["data"], count, name).reshape(shape), 0


def _classification(parameters: Mapping[str, Any], name: str) -> int:
    k = parameters.get("classification", 0)
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise _fail(f"output {name!r}: 'classification' must be a non-negative integer")
    return k


def _parse_outputs(doc: Mapping[str, Any]) -> tuple[RequestedOutput, ...] | None:
    outputs = doc.get("outputs")
    if outputs is None:
        return None
    if not isinstance(outputs, list):
        raise _fail("'outputs' must be a list")
    parsed = []
    for entry in outputs:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise _fail("each requested output needs a 'name' string")
        parameters = entry.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise _fail(f"output {entry['name']!r}: 'parameters' must be an object")
        parsed.append(RequestedOutput(
            entry["name"], bool(parameters.get("binary_data", False)),
            _classification(parameters, entry["name"]),
        ))
    return tuple(parsed)


def parse_infer_request(
    body: bytes, header_length: int | None, *, max_elements: int, max_json_bytes: int
) -> InferRequest:
    """Decode an infer request body. `header_length` is the value of the
    Inference-Header-Content-Length header (None when absent: the body is all JSON).

    Raises BadRequestError naming what is wrong.
    """
    if header_length is None:
        header_length = len(body)
    if header_length < 0 or header_length > len(body):
        raise _fail(f"{HEADER_LENGTH} {header_length} does not fit a {len(body)}-byte body")
    if header_length > max_json_bytes:
        raise _fail(f"the JSON part of the request is larger than {max_json_bytes} bytes")
    doc = _load_json(body[:header_length])
    binary = memoryview(body)[header_length:]
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _fail("'id' must be a string")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise _fail("'inputs' must be a non-empty list")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for entry in raw_inputs:
        name, array, used = _parse_input(entry, binary, offset, max_elements)
        if name in inputs:
            raise _fail(f"input {name!r} is given twice")
        inputs[name] = array
        offset += used
    if offset != len(binary):
        unused = len(binary) - offset
        raise _fail(f"the request carries {unused} bytes of binary data that no input uses")
    parameters = doc.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise _fail("'parameters' must be an object")
    return InferRequest(
        id=request_id,
        inputs=inputs,
        outputs=_parse_outputs(doc),
        binary_output=bool(parameters.get("binary_data_output", False)),
        parameters=parameters,
    )


def select_outputs(
    request: InferRequest, produced: Mapping[str, np.ndarray]
) -> list[tuple[str, np.ndarray, bool]]:
    """The outputs to answer, in order, each with whether it goes as binary.

    Raises BadRequestError for a requested output the model does not produce.
    """
    if request.outputs is None:
        return [(name, array, request.binary_output) for name, array in produced.items()]
    selected = []
    for wanted in request.outputs:
        if wanted.name not in produced:
            raise _fail(f"unknown output {wanted.name!r}; the model produces {sorted(produced)}")
        array = produced[wanted.name]
        if wanted.classification:
            array = tensors.classify(array, wanted.classification, wanted.name)
        selected.append((wanted.name, array, wanted.binary))
    return selected


def encode_infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: Sequence[tuple[str, np.ndarray, bool]],
    parameters: Mapping[str, Any] | None = None,
    *,
    finite: bool = False,
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header's length.

    Non-finite floats are written as the tokens NaN / Infinity (as Python's json and
    rapidjson read them); ask for binary outputs to get them bit-exact. `finite`: the caller
    knows no output holds one, so orjson may write the JSON (a twentieth of the standard
    library's time; it would write them as null).
    """
    described: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, array, binary in outputs:
        a = np.asarray(array)
        strings = tensors.is_bytes(a)
        entry: dict[str, Any] = {
            "name": name,
            "datatype": tensors.BYTES if strings else (
                NUMPY_TO_DATATYPE.get(a.dtype) or str(a.dtype)),
            "shape": list(a.shape),
        }
        if binary:
            if strings:
                blob = tensors.encode_binary(a)
            else:
                blob = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = tensors.json_strings(a) if strings else a.ravel().tolist()
        described.append(entry)
    doc: dict[str, Any] = {
        "model_name": model_name,
        "model_version": model_version,
        "outputs": described,
    }
    if request_id is not None:
        doc["id"] = request_id
    if parameters:
        doc["parameters"] = dict(parameters)
    header = b""
    if finite and _fast_dumps is not None:
        try:
            header = _fast_dumps(doc)
        except TypeError:  # e.g. a string orjson refuses (lone surrogates): the slow way
            header = b""
    if not header:
        header = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def _tensor_metadata(spec: Tensor) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


class Tensor(Protocol):
    """A tensor's description: a runtime's `TensorSpec` or a manifest's `TensorInfo`."""

    @property
    def name(self) -> str: ...
    @property
    def datatype(self) -> str: ...
    @property
    def shape(self) -> tuple[int, ...]: ...


def model_metadata(
    channel: str, version: str, runtime: str, inputs: Sequence[Tensor],
    outputs: Sequence[Tensor],
) -> dict[str, Any]:
    """The model metadata response: name, versions, platform, inputs, outputs."""
    return {
        "name": channel,
        "versions": [version],
        "platform": PLATFORMS.get(runtime, runtime),
        "inputs": [_tensor_metadata(s) for s in inputs],
        "outputs": [_tensor_metadata(s) for s in outputs],
    }


def server_metadata(version: str) -> dict[str, Any]:
    return {"name": "satchel-agent", "version": version, "extensions": list(EXTENSIONS)}
