"""A TFLite flatbuffer writer: models described as subgraphs of tensors and operators (and
their SignatureDefs), serialised with the `tflite` package's schema builders, no TensorFlow.

What a valid model needs (NOTES): buffer 0 an empty sentinel, `Model.version = 3`, file
identifier `TFL3`, operator codes with both `builtin_code` and `deprecated_builtin_code`,
constant buffers aligned for in-place reads, and quantization parameters on every quantized
tensor. Dynamic dimensions are written as the TFLite converter writes them: `shape` holds 1
where `shape_signature` holds -1. Used by the demo's model makers (`manager.modelgen`) and the
tests' model catalogue; `tflite` and `flatbuffers` are imported only when a model is written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# tflite.TensorType values
FLOAT32, FLOAT16, INT32, UINT8, INT8 = 0, 1, 2, 3, 9
# tflite.BuiltinOperator values
ADD, DEQUANTIZE, FULLY_CONNECTED, CUSTOM, MEAN, SUM, QUANTIZE = 0, 6, 9, 32, 40, 74, 114

# --- models -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorDef:
    """One tensor; -1 in `shape` marks a dynamic dimension. `quant` is (scale, zero_point)."""

    name: str
    shape: tuple[int, ...]
    type: int
    data: np.ndarray | None = None
    quant: tuple[float, int] | None = None


@dataclass(frozen=True)
class OpDef:
    """One operator: a BuiltinOperator value, or a custom op's name."""

    code: int | str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    relu: bool = False  # fused activation, for FULLY_CONNECTED and ADD
    version: int = 1


@dataclass
class Subgraph:
    """One subgraph: its tensors, which of them are its inputs and outputs, its operators."""

    name: str
    tensors: list[TensorDef]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    ops: list[OpDef] = field(default_factory=list)


@dataclass(frozen=True)
class Signature:
    """A SignatureDef: its key, its subgraph, and its names for that subgraph's tensors."""

    key: str
    subgraph: int
    inputs: Mapping[str, int]
    outputs: Mapping[str, int]


# --- flatbuffer ---------------------------------------------------------------------------


def write_model(
    path: Path,
    subgraphs: Sequence[Subgraph],
    signatures: Sequence[Signature] = (),
    description: str = "satchel model",
) -> Path:
    """Serialise `subgraphs` (and their SignatureDefs) as a TFLite model at `path`.

    Returns `path`. Raises OSError when the file cannot be written.
    """
    path = Path(path)
    path.write_bytes(_flatbuffer(subgraphs, signatures, description))
    return path


def _flatbuffer(
    subgraphs: Sequence[Subgraph], signatures: Sequence[Signature], description: str
) -> bytes:
    import flatbuffers
    import tflite

    builder = flatbuffers.Builder(4096)
    codes: list[tuple[int | str, int]] = []
    for graph in subgraphs:
        for op in graph.ops:
            if (op.code, op.version) not in codes:
                codes.append((op.code, op.version))

    # Buffer 0 is the empty sentinel that every non-constant tensor points at.
    payloads = [b""] + [
        np.ascontiguousarray(t.data).tobytes()
        for graph in subgraphs
        for t in graph.tensors
        if t.data is not None
    ]
    buffers = []
    for payload in payloads:
        data_vector = aligned_bytes(builder, payload) if payload else None
        tflite.BufferStart(builder)
        if data_vector is not None:
            tflite.BufferAddData(builder, data_vector)
        buffers.append(tflite.BufferEnd(builder))

    next_buffer = 1
    subgraph_offsets = []
    for graph in subgraphs:
        tensor_offsets = []
        for tensor in graph.tensors:
            buffer_index = 0
            if tensor.data is not None:
                buffer_index, next_buffer = next_buffer, next_buffer + 1
            tensor_offsets.append(_tensor(builder, tensor, buffer_index))
        op_offsets = [
            _operator(builder, op, codes.index((op.code, op.version))) for op in graph.ops
        ]
        subgraph_offsets.append(_subgraph(builder, graph, tensor_offsets, op_offsets))

    code_offsets = [_operator_code(builder, code, version) for code, version in codes]
    signature_offsets = [_signature(builder, signature) for signature in signatures]
    description_offset = builder.CreateString(description)
    codes_vector = offset_vector(builder, code_offsets)
    subgraphs_vector = offset_vector(builder, subgraph_offsets)
    buffers_vector = offset_vector(builder, buffers)
    signatures_vector = offset_vector(builder, signature_offsets) if signatures else None
    tflite.ModelStart(builder)
    tflite.ModelAddVersion(builder, 3)
    tflite.ModelAddOperatorCodes(builder, codes_vector)
    tflite.ModelAddSubgraphs(builder, subgraphs_vector)
    tflite.ModelAddDescription(builder, description_offset)
    tflite.ModelAddBuffers(builder, buffers_vector)
    if signatures_vector is not None:
        tflite.ModelAddSignatureDefs(builder, signatures_vector)
    model = tflite.ModelEnd(builder)
    builder.Finish(model, file_identifier=b"TFL3")
    return bytes(builder.Output())


def _tensor(builder: Any, tensor: TensorDef, buffer_index: int) -> int:
    import tflite

    name_offset = builder.CreateString(tensor.name)
    shape_vector = builder.CreateNumpyVector(
        np.array([1 if dim < 0 else dim for dim in tensor.shape], np.int32)
    )
    signature_vector = None
    if any(dim < 0 for dim in tensor.shape):
        signature_vector = builder.CreateNumpyVector(np.array(tensor.shape, np.int32))
    quant_offset = None
    if tensor.quant is not None:
        scale_vector = builder.CreateNumpyVector(np.array([tensor.quant[0]], np.float32))
        zero_point_vector = builder.CreateNumpyVector(np.array([tensor.quant[1]], np.int64))
        tflite.QuantizationParametersStart(builder)
        tflite.QuantizationParametersAddScale(builder, scale_vector)
        tflite.QuantizationParametersAddZeroPoint(builder, zero_point_vector)
        quant_offset = tflite.QuantizationParametersEnd(builder)
    tflite.TensorStart(builder)
    tflite.TensorAddShape(builder, shape_vector)
    if signature_vector is not None:
        tflite.TensorAddShapeSignature(builder, signature_vector)
    tflite.TensorAddType(builder, tensor.type)
    tflite.TensorAddBuffer(builder, buffer_index)
    tflite.TensorAddName(builder, name_offset)
    if quant_offset is not None:
        tflite.TensorAddQuantization(builder, quant_offset)
    return int(tflite.TensorEnd(builder))


def _options(builder: Any, op: OpDef) -> tuple[int, int] | None:
    """(BuiltinOptions type, offset) for the ops that take options, else None."""
    import tflite

    activation = (
        tflite.ActivationFunctionType.RELU if op.relu else tflite.ActivationFunctionType.NONE
    )
    if op.code == FULLY_CONNECTED:
        tflite.FullyConnectedOptionsStart(builder)
        tflite.FullyConnectedOptionsAddFusedActivationFunction(builder, activation)
        return tflite.BuiltinOptions.FullyConnectedOptions, tflite.FullyConnectedOptionsEnd(builder)
    if op.code == ADD:
        tflite.AddOptionsStart(builder)
        tflite.AddOptionsAddFusedActivationFunction(builder, activation)
        return tflite.BuiltinOptions.AddOptions, tflite.AddOptionsEnd(builder)
    if op.code in (SUM, MEAN):
        tflite.ReducerOptionsStart(builder)
        tflite.ReducerOptionsAddKeepDims(builder, False)
        return tflite.BuiltinOptions.ReducerOptions, tflite.ReducerOptionsEnd(builder)
    return None


def _operator(builder: Any, op: OpDef, opcode_index: int) -> int:
    import tflite

    options = _options(builder, op)
    input_vector = builder.CreateNumpyVector(np.array(op.inputs, np.int32))
    output_vector = builder.CreateNumpyVector(np.array(op.outputs, np.int32))
    tflite.OperatorStart(builder)
    tflite.OperatorAddOpcodeIndex(builder, opcode_index)
    tflite.OperatorAddInputs(builder, input_vector)
    tflite.OperatorAddOutputs(builder, output_vector)
    if options is not None:
        tflite.OperatorAddBuiltinOptionsType(builder, options[0])
        tflite.OperatorAddBuiltinOptions(builder, options[1])
    return int(tflite.OperatorEnd(builder))


def _operator_code(builder: Any, code: int | str, version: int) -> int:
    import tflite

    custom_name = builder.CreateString(code) if isinstance(code, str) else None
    builtin = CUSTOM if isinstance(code, str) else code
    tflite.OperatorCodeStart(builder)
    tflite.OperatorCodeAddBuiltinCode(builder, builtin)
    tflite.OperatorCodeAddDeprecatedBuiltinCode(builder, min(builtin, 127))
    tflite.OperatorCodeAddVersion(builder, version)
    if custom_name is not None:
        tflite.OperatorCodeAddCustomCode(builder, custom_name)
    return int(tflite.OperatorCodeEnd(builder))


def _subgraph(builder: Any, graph: Subgraph, tensors: list[int], ops: list[int]) -> int:
    import tflite

    name = builder.CreateString(graph.name)
    tensor_vector = offset_vector(builder, tensors)
    inputs = builder.CreateNumpyVector(np.array(graph.inputs, np.int32))
    outputs = builder.CreateNumpyVector(np.array(graph.outputs, np.int32))
    operators = offset_vector(builder, ops)
    tflite.SubGraphStart(builder)
    tflite.SubGraphAddTensors(builder, tensor_vector)
    tflite.SubGraphAddInputs(builder, inputs)
    tflite.SubGraphAddOutputs(builder, outputs)
    tflite.SubGraphAddOperators(builder, operators)
    tflite.SubGraphAddName(builder, name)
    return int(tflite.SubGraphEnd(builder))


def _signature(builder: Any, signature: Signature) -> int:
    import tflite

    def tensor_maps(names: Mapping[str, int]) -> int:
        maps = []
        for name, index in names.items():
            name_offset = builder.CreateString(name)
            tflite.TensorMapStart(builder)
            tflite.TensorMapAddName(builder, name_offset)
            tflite.TensorMapAddTensorIndex(builder, index)
            maps.append(tflite.TensorMapEnd(builder))
        return offset_vector(builder, maps)

    inputs = tensor_maps(signature.inputs)
    outputs = tensor_maps(signature.outputs)
    key = builder.CreateString(signature.key)
    tflite.SignatureDefStart(builder)
    tflite.SignatureDefAddInputs(builder, inputs)
    tflite.SignatureDefAddOutputs(builder, outputs)
    tflite.SignatureDefAddSignatureKey(builder, key)
    tflite.SignatureDefAddSubgraphIndex(builder, signature.subgraph)
    return int(tflite.SignatureDefEnd(builder))





def aligned_bytes(builder: Any, data: bytes, alignment: int = 16) -> int:
    """A byte vector whose payload starts on `alignment`, as TFLite kernels read it in place."""
    builder.StartVector(1, len(data), alignment)
    builder.head -= len(data)
    builder.Bytes[builder.head : builder.head + len(data)] = data
    return int(builder.EndVector())


def offset_vector(builder: Any, offsets: list[int]) -> int:
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return int(builder.EndVector())
