"""`satchel model quantize` on the model forms exporters write: several outputs, weights in
Constant nodes, external data, fixed batch, already quantized, nothing to quantize."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from satchel.agent.runtimes import get_runtime
from satchel.manager.build import detect_quantization
from satchel.manager.model_files import model_files
from satchel.manager.quantize import QuantizeDefaults
from tests.factory.model_makers import make_mlp_weights, onnx_mlp, quantize_onnx

if TYPE_CHECKING:
    from tests.cli.invoke import Cli
    from tests.cli.model_files import Models

IR_VERSION, OPSET = 9, 17  # what the installed onnxruntime loads


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(
        graph, ir_version=IR_VERSION, opset_imports=[helper.make_opsetid("", OPSET)]
    )
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def _weight(name: str, shape: tuple[int, ...], seed: int, scale: float = 0.3) -> TensorProto:
    values = np.random.default_rng(seed).standard_normal(shape) * scale
    return numpy_helper.from_array(values.astype(np.float32), name=name)


def _io(name: str, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def two_head_model(path: Path) -> Path:
    """input [batch, 16] -> hidden [batch, 32] -> "logits" [batch, 10] and "features" [batch, 8]."""
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["fc1"]),
        helper.make_node("Relu", ["fc1"], ["hidden"]),
        helper.make_node("MatMul", ["hidden", "w_logits"], ["logits"]),
        helper.make_node("MatMul", ["hidden", "w_features"], ["features"]),
    ]
    graph = helper.make_graph(
        nodes, "two_heads", [_io("input", ["batch", 16])],
        [_io("logits", ["batch", 10]), _io("features", ["batch", 8])],
        initializer=[_weight("w1", (16, 32), 1), _weight("w_logits", (32, 10), 2),
                     _weight("w_features", (32, 8), 3)],
    )
    return _save(graph, path)


def constant_weights_model(path: Path) -> Path:
    """The 64 -> 128 -> 10 MLP with its weights in Constant nodes, as Paddle exports them."""
    weights = make_mlp_weights(in_dim=64, seed=0)
    nodes = [
        helper.make_node("Constant", [], [k], value=numpy_helper.from_array(weights[k], name=k))
        for k in ("w1", "b1", "w2", "b2")
    ] + [
        helper.make_node("MatMul", ["input", "w1"], ["fc1"]),
        helper.make_node("Add", ["fc1", "b1"], ["fc1_bias"]),
        helper.make_node("Relu", ["fc1_bias"], ["hidden"]),
        helper.make_node("MatMul", ["hidden", "w2"], ["fc2"]),
        helper.make_node("Add", ["fc2", "b2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "paddle_like", [_io("input", ["batch", 64])], [_io("logits", ["batch", 10])]
    )
    return _save(graph, path)


def no_weights_model(path: Path) -> Path:
    """input [batch, 8] -> Relu -> Softmax: nothing a quantizer can turn into int8 weights."""
    nodes = [
        helper.make_node("Relu", ["input"], ["hidden"]),
        helper.make_node("Softmax", ["hidden"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "no_weights", [_io("input", ["batch", 8])], [_io("probs", ["batch", 8])]
    )
    return _save(graph, path)


def fixed_batch_model(path: Path) -> Path:
    """input [1, 16] -> "logits" [1, 10]: a batch of exactly one, as many exports declare."""
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["fc1"]),
        helper.make_node("Relu", ["fc1"], ["hidden"]),
        helper.make_node("MatMul", ["hidden", "w2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "fixed_batch", [_io("input", [1, 16])], [_io("logits", [1, 10])],
        initializer=[_weight("w1", (16, 32), 4), _weight("w2", (32, 10), 5)],
    )
    return _save(graph, path)


def outlier_model(path: Path) -> Path:
    """One [16, 16] weight whose first 8 columns are ~1000x the last 8, split into outputs
    "big" and "small": per-tensor int8 rounds every weight of "small" to zero."""
    weight = np.random.default_rng(6).standard_normal((16, 16)).astype(np.float32)
    weight[:, :8] *= 100.0
    weight[:, 8:] *= 0.1
    nodes = [
        helper.make_node("MatMul", ["input", "w"], ["both"]),
        helper.make_node("Split", ["both", "halves"], ["big", "small"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "outlier", [_io("input", ["batch", 16])],
        [_io("big", ["batch", 8]), _io("small", ["batch", 8])],
        initializer=[numpy_helper.from_array(weight, name="w"),
                     numpy_helper.from_array(np.array([8, 8], np.int64), name="halves")],
    )
    return _save(graph, path)


def external_data_model(folder: Path) -> Path:
    """The 64 -> 128 -> 10 MLP saved as model.onnx + model.onnx.data."""
    folder.mkdir()
    single = onnx_mlp(make_mlp_weights(in_dim=64, seed=0), folder / "single.onnx")
    proto = onnx.load(str(single))
    single.unlink()
    path = folder / "model.onnx"
    onnx.save_model(proto, str(path), save_as_external_data=True,
                    location="model.onnx.data", size_threshold=0)
    return path


def _ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}


def _quantization_of(path: Path) -> str:
    model = get_runtime("onnxruntime").load(path)
    try:
        return detect_quantization(path, model)
    finally:
        model.close()


# --- several outputs ----------------------------------------------------------------------


def test_every_output_of_a_two_head_model_is_compared(cli: Cli, tmp_path: Path) -> None:
    src, out = two_head_model(tmp_path / "heads.onnx"), tmp_path / "int8.onnx"

    report = cli.run("model", "quantize", src, "-o", out, "--json").json()

    outputs = {o["name"]: o for o in report["agreement"]["outputs"]}
    assert set(outputs) == {"logits", "features"}
    assert outputs["logits"]["kind"] == "classes"
    assert outputs["features"]["kind"] == "embedding"
    for o in outputs.values():
        assert o["feeds"] == 64
        assert o["sqnr_db"] > 20 and o["min_cosine"] > 0.98
    assert outputs["logits"]["top1_agreement"] >= 0.9
    assert {c["name"] for c in report["checks"]} == {"logits", "features"}
    assert report["passed"] is True and report["failures"] == []
    assert report["max_abs_error"] == max(o["max_abs_error"] for o in outputs.values())
    assert report["mean_cosine"] == min(o["mean_cosine"] for o in outputs.values())
    assert report["top1_agreement"] == outputs["logits"]["top1_agreement"]
    assert _quantization_of(out) == "dynamic-int8"


def test_the_text_report_has_a_line_per_output(cli: Cli, tmp_path: Path) -> None:
    src, out = two_head_model(tmp_path / "heads.onnx"), tmp_path / "int8.onnx"

    stdout = cli.run("model", "quantize", src, "-o", out).ok().stdout

    assert "vs float on 64 sample feeds: max abs error" in stdout
    assert "    features (embedding): max abs error" in stdout
    assert "    logits (classes): max abs error" in stdout
    assert "default checks of bundle build --reference: pass" in stdout


def test_an_output_the_int8_model_loses_is_named_in_a_warning_and_still_written(
    cli: Cli, tmp_path: Path
) -> None:
    src, out = outlier_model(tmp_path / "outlier.onnx"), tmp_path / "int8.onnx"

    outcome = cli.spawn("model", "quantize", src, "-o", out, "--json").ok()

    report = outcome.json()
    assert report["passed"] is False
    assert report["failures"] and all("'small'" in f for f in report["failures"])
    small = {o["name"]: o for o in report["agreement"]["outputs"]}["small"]
    assert small["rel_error"] > 0.5
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1, outcome.stderr
    assert lines[0].startswith("warning: `satchel bundle build --reference outlier.onnx` will ")
    assert "output 'small'" in lines[0]
    assert _quantization_of(out) == "dynamic-int8"


# --- how weights are stored ---------------------------------------------------------------


def test_weights_in_constant_nodes_are_quantized(cli: Cli, tmp_path: Path) -> None:
    src, out = constant_weights_model(tmp_path / "paddle.onnx"), tmp_path / "int8.onnx"

    report = cli.run("model", "quantize", src, "-o", out, "--json").json()

    assert _quantization_of(out) == "dynamic-int8"
    assert "MatMulInteger" in _ops(out) and "Constant" not in _ops(out)
    assert report["ratio"] > 3
    assert report["passed"] is True
    assert report["top1_agreement"] >= 0.95
    assert _ops(src) >= {"Constant", "MatMul"}  # the source is left as it was


def test_external_data_counts_in_the_float_size_and_the_int8_model_is_one_file(
    cli: Cli, tmp_path: Path
) -> None:
    src = external_data_model(tmp_path / "float")
    out = tmp_path / "int8" / "model-int8.onnx"
    out.parent.mkdir()

    report = cli.run("model", "quantize", src, "-o", out, "--json").json()

    data = src.with_name("model.onnx.data")
    assert src.stat().st_size < 1024 < data.stat().st_size
    assert report["float_bytes"] == src.stat().st_size + data.stat().st_size
    assert model_files(out).data_files == ()
    assert sorted(p.name for p in out.parent.iterdir()) == ["model-int8.onnx"]
    assert report["int8_bytes"] == out.stat().st_size
    assert report["ratio"] > 3
    assert _quantization_of(out) == "dynamic-int8"


def test_a_model_past_the_one_file_limit_keeps_its_int8_weights_in_a_data_file(
    tmp_path: Path,
) -> None:
    src = external_data_model(tmp_path / "float")
    out = tmp_path / "int8" / "q.onnx"
    out.parent.mkdir()

    report = quantize_onnx(src, out, defaults=QuantizeDefaults(single_file_max_bytes=1000))

    assert model_files(out).data_files == ("q.onnx.data",)
    assert report.int8_bytes == model_files(out).total_bytes()
    assert report.int8_bytes < report.float_bytes
    assert _quantization_of(out) == "dynamic-int8"


def test_int8_weights_below_the_one_file_limit_fold_into_one_file(tmp_path: Path) -> None:
    src = external_data_model(tmp_path / "float")
    out = tmp_path / "int8" / "q.onnx"
    out.parent.mkdir()
    limit = 20_000  # the float model is above it, its int8 version below

    report = quantize_onnx(src, out, defaults=QuantizeDefaults(single_file_max_bytes=limit))

    assert report.float_bytes > limit > report.int8_bytes == out.stat().st_size
    assert sorted(p.name for p in out.parent.iterdir()) == ["q.onnx"]
    assert _quantization_of(out) == "dynamic-int8"


# --- samples as bundle build reads them ---------------------------------------------------


def test_old_and_new_sample_layouts_of_a_batch_one_model_make_the_same_feeds(
    cli: Cli, tmp_path: Path, shared_keydir: Path
) -> None:
    src = fixed_batch_model(tmp_path / "fixed.onnx")
    rows = np.random.default_rng(8).standard_normal((20, 16)).astype(np.float32)
    old, new = tmp_path / "old.npz", tmp_path / "new.npz"
    np.savez(old, input=rows)  # [N, 16]: one feed per row, as earlier releases wrote them
    np.savez(new, input=rows[:, None, :])  # [N, 1, 16]: feeds stacked on a new first axis

    reports = [
        cli.run("model", "quantize", src, "-o", tmp_path / f"{s.stem}.onnx",
                "--calibration", s, "--json").json()
        for s in (old, new)
    ]

    for report in reports:
        assert report["mode"] == "static"
        assert report["feeds"] == report["samples"] == 20
        assert report["passed"] is True
    assert reports[0]["agreement"] == reports[1]["agreement"]
    assert (tmp_path / "old.onnx").read_bytes() == (tmp_path / "new.onnx").read_bytes()
    for s in (old, new):  # the very files bundle build takes
        cli.run("bundle", "build", "--name", "fixed", "--version", "1", "--model",
                tmp_path / "new.onnx", "--reference", src, "--samples", s,
                "--key", shared_keydir / "signing.key", "-o", tmp_path / f"{s.stem}.satchel",
                "--json").json()


def test_stacked_feeds_of_a_dynamic_batch_model_each_calibrate_one_batch(
    cli: Cli, models: Models, tmp_path: Path
) -> None:
    stacked = tmp_path / "stacked.npz"
    batches = np.random.default_rng(9).standard_normal((12, 4, 64)).astype(np.float32)
    np.savez(stacked, input=batches)
    out = tmp_path / "static.onnx"

    report = cli.run("model", "quantize", models.float_onnx, "-o", out,
                     "--calibration", stacked, "--json").json()

    assert report["feeds"] == 12 and report["samples"] == 48
    assert report["agreement"]["outputs"][0]["values"] == 48 * 10
    assert report["passed"] is True
    assert _quantization_of(out) == "static-int8"


# --- refusals: one line on stderr, nothing written ----------------------------------------


def test_an_already_quantized_model_is_refused(
    cli: Cli, models: Models, tmp_path: Path
) -> None:
    out = tmp_path / "again.onnx"

    line = cli.spawn("model", "quantize", models.int8_onnx, "-o", out).refusal()

    assert line == "error: int8.onnx is already quantized (dynamic-int8); nothing to do"
    assert not out.exists()


def test_a_statically_quantized_model_is_refused(
    cli: Cli, models: Models, tmp_path: Path
) -> None:
    static = tmp_path / "static.onnx"
    cli.run("model", "quantize", models.float_onnx, "-o", static,
            "--calibration", models.samples).ok()

    line = cli.spawn("model", "quantize", static, "-o", tmp_path / "again.onnx").refusal()

    assert line == "error: static.onnx is already quantized (static-int8); nothing to do"


def test_a_model_without_weights_is_refused(cli: Cli, tmp_path: Path) -> None:
    src, out = no_weights_model(tmp_path / "softmax.onnx"), tmp_path / "int8.onnx"

    line = cli.spawn("model", "quantize", src, "-o", out).refusal()

    assert "softmax.onnx" in line and "no MatMul/Gemm/Conv weights to quantize" in line
    assert not out.exists()


def test_zero_sample_calibration_is_refused(cli: Cli, models: Models, tmp_path: Path) -> None:
    empty, out = tmp_path / "empty.npz", tmp_path / "out.onnx"
    np.savez(empty, input=np.zeros((0, 64), np.float32))

    line = cli.spawn("model", "quantize", models.float_onnx, "-o", out,
                     "--calibration", empty).refusal()

    assert line == "error: samples empty.npz: array 'input' is empty (shape [0, 64])"
    assert not out.exists()


def test_calibration_that_fits_no_layout_is_refused(
    cli: Cli, models: Models, tmp_path: Path
) -> None:
    wrong, out = tmp_path / "wide.npz", tmp_path / "out.onnx"
    np.savez(wrong, input=np.zeros((4, 65), np.float32))

    line = cli.spawn("model", "quantize", models.float_onnx, "-o", out,
                     "--calibration", wrong).refusal()

    assert line.startswith("error: samples do not fit the model: samples for input 'input'")
    assert not out.exists()
