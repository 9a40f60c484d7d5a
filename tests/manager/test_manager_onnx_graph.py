"""The build's ONNX graph reader (`manager/onnx_graph.py`) gives the answers `onnx` gives:
operators, initializer types and external data files, in onnx's order, weights unread."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import _get_all_tensors

from satchel.manager.errors import BuildError
from satchel.manager.model_files import model_files
from satchel.manager.modelgen import make_mlp_weights, onnx_mlp
from satchel.manager.onnx_graph import GraphSummary, OnnxFormatError, read_graph_summary, summarize


def _onnx_answer(path: Path) -> GraphSummary:
    """The same summary, from onnx's own parser and its external-data walk."""
    proto = onnx.load(str(path), load_external_data=False)
    locations: list[str] = []
    for tensor in _get_all_tensors(proto):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        location = {e.key: e.value for e in tensor.external_data}.get("location", "")
        if location not in locations:
            locations.append(location)
    return GraphSummary(
        op_types=frozenset(n.op_type for n in proto.graph.node),
        initializer_types=frozenset(t.data_type for t in proto.graph.initializer),
        external_locations=tuple(locations),
    )


def _init(name: str, shape: tuple[int, ...], dtype: type = np.float32) -> TensorProto:
    values = np.random.default_rng(len(name)).standard_normal(shape).astype(dtype)
    return numpy_helper.from_array(values, name=name)


def _branch(name: str, weight: str) -> onnx.GraphProto:
    """A subgraph with an initializer and a Constant node holding a tensor attribute."""
    return helper.make_graph(
        [
            helper.make_node("Constant", [], [f"{name}_c"], value=_init(f"{name}_const", (32,))),
            helper.make_node("Add", [weight, f"{name}_c"], [f"{name}_out"]),
        ],
        name,
        [],
        [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [32])],
        initializer=[_init(weight, (32,))],
    )


def _nested_model() -> onnx.ModelProto:
    """Initializers at the top, in both branches of an If, in a Constant; a float16 weight;
    a quantize op; a local function with a tensor attribute of its own."""
    function = helper.make_function(
        "local", "Scale", ["x"], ["y"],
        [helper.make_node("Constant", [], ["k"], value=_init("fn_const", (32,))),
         helper.make_node("Mul", ["x", "k"], ["y"])],
        [helper.make_opsetid("", 17)],
    )
    nodes = [
        helper.make_node("If", ["cond"], ["picked"], then_branch=_branch("then", "w_then"),
                         else_branch=_branch("else", "w_else")),
        helper.make_node("Cast", ["half"], ["half_f"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["picked", "half_f"], ["summed"]),
        helper.make_node("Scale", ["summed"], ["scaled"], domain="local"),
        helper.make_node("DynamicQuantizeLinear", ["scaled"], ["q", "s", "z"]),
    ]
    graph = helper.make_graph(
        nodes,
        "nested",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("q", TensorProto.UINT8, [32])],
        initializer=[_init("big", (64, 64)), _init("half", (32,), np.float16)],
    )
    return helper.make_model(
        graph, functions=[function],
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
    )


@pytest.mark.parametrize("layout", ["embedded", "one data file", "a file per tensor"])
def test_nested_model_is_read_as_onnx_reads_it(tmp_path: Path, layout: str) -> None:
    path = tmp_path / "nested.onnx"
    model = _nested_model()
    if layout == "embedded":
        onnx.save_model(model, str(path))
    else:
        onnx.save_model(model, str(path), save_as_external_data=True, size_threshold=0,
                        all_tensors_to_one_file=layout == "one data file",
                        location="nested.onnx.data", convert_attribute=True)

    ours = read_graph_summary(path)

    assert ours == _onnx_answer(path)
    assert {"If", "DynamicQuantizeLinear"} <= ours.op_types
    assert TensorProto.FLOAT16 in ours.initializer_types
    if layout == "a file per tensor":  # subgraph, attribute and function tensors included
        assert {"w_then", "w_else", "then_const", "fn_const"} <= set(ours.external_locations)


def test_mlp_from_modelgen_is_read_as_onnx_reads_it(tmp_path: Path) -> None:
    path = onnx_mlp(make_mlp_weights(), tmp_path / "mlp.onnx")

    assert read_graph_summary(path) == _onnx_answer(path)


def test_model_with_weights_cut_short_is_refused_in_one_line(tmp_path: Path) -> None:
    whole = onnx_mlp(make_mlp_weights(), tmp_path / "mlp.onnx").read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(whole[: len(whole) // 2])

    with pytest.raises(BuildError) as refused:
        model_files(cut)

    assert "cut.onnx is not a readable ONNX model" in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("data", [b"\x0a\xff", b"\x3a\x05\x0a\x01", b"\x0f\x00", b"\xff" * 11])
def test_malformed_protobuf_is_refused(data: bytes) -> None:
    with pytest.raises(OnnxFormatError):
        summarize(data)


def test_empty_file_has_no_graph(tmp_path: Path) -> None:
    (tmp_path / "empty.onnx").write_bytes(b"")

    assert read_graph_summary(tmp_path / "empty.onnx") == GraphSummary(
        frozenset(), frozenset(), ()
    )
