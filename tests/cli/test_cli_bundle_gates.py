"""`satchel bundle build` on models of every shape: samples by declared shapes, per-output
checks that cannot be fooled, multi-file ONNX, cheap checks before any model runs, and every
refusal in one line."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from satchel.bundles.reader import verify_and_unpack
from satchel.bundles.timeutil import utcnow
from satchel.manager.keydir import read_root

if TYPE_CHECKING:
    from tests.cli.invoke import Cli
    from tests.cli.model_files import Models

OPSET = [helper.make_opsetid("", 17)]


def _build(model: Path, out: Path, key: Path, *extra: str | Path) -> list[str | Path]:
    return ["bundle", "build", "--name", "vad", "--version", "1.0", "--model", model,
            "--key", key, "-o", out, *extra]


def _save(graph: onnx.GraphProto, path: Path, **kwargs) -> Path:
    model = helper.make_model(graph, ir_version=9, opset_imports=OPSET)
    onnx.save_model(model, str(path), **kwargs)
    return path


def _vad(path: Path, bias: float = -3.0) -> Path:
    """A stateful voice-activity model: input [-1, 64], state [2, -1, 16] (batch on axis 1),
    scalar int64 sample rate; a one-value speech probability and the next state."""
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array((rng.standard_normal((64, 16)) * 0.1).astype(np.float32), "w")
    v = numpy_helper.from_array((rng.standard_normal((16, 1)) * 0.1).astype(np.float32), "v")
    b = numpy_helper.from_array(np.array([bias], np.float32), "b")
    scale = numpy_helper.from_array(np.array(1 / 16000, np.float32), "scale")
    nodes = [
        helper.make_node("MatMul", ["input", "w"], ["h"]),
        helper.make_node("ReduceSum", ["state", "axes0"], ["s"], keepdims=0),
        helper.make_node("Add", ["h", "s"], ["hs"]),
        helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["srf", "scale"], ["k"]),
        helper.make_node("Mul", ["hs", "k"], ["hk"]),
        helper.make_node("Tanh", ["hk"], ["t"]),
        helper.make_node("MatMul", ["t", "v"], ["logit"]),
        helper.make_node("Add", ["logit", "b"], ["logit_b"]),
        helper.make_node("Sigmoid", ["logit_b"], ["output"]),
        helper.make_node("Unsqueeze", ["t", "axes0"], ["t1"]),
        helper.make_node("Concat", ["t1", "t1"], ["stateN"], axis=0),
    ]
    axes0 = numpy_helper.from_array(np.array([0], np.int64), "axes0")
    graph = helper.make_graph(
        nodes, "vad",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 16]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "batch", 16])],
        initializer=[w, v, b, scale, axes0],
    )
    return _save(graph, path)


@pytest.fixture(scope="module")
def vad(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vad")
    rng = np.random.default_rng(0)
    samples = root / "samples.npz"
    np.savez(samples, input=rng.standard_normal((8, 1, 64)).astype(np.float32),
             state=np.zeros((2, 1, 16), np.float32), sr=np.array(16000, np.int64))
    return {"good": _vad(root / "vad.onnx"), "shifted": _vad(root / "vad-shifted.onnx", 0.0),
            "samples": samples}


def test_stateful_model_with_scalar_input_builds_from_one_feed_and_stacked_feeds(
    cli: Cli, vad: dict[str, Path], shared_keydir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "vad.satchel"

    report = cli.run(*_build(vad["good"], out, shared_keydir / "signing.key",
                             "--samples", vad["samples"], "--json")).json()

    assert report["agreement"]["samples"] == 8  # 8 stacked feeds; state and sr reused
    kinds = {c["name"]: c["kind"] for c in report["checks"]}
    assert kinds == {"output": "score", "stateN": "tensor"}
    staged = tmp_path / "staged"
    staged.mkdir()
    verify_and_unpack(out, read_root(shared_keydir), staged, utcnow(), fsync=False)
    with np.load(staged / "smoke/inputs.npz") as stored:
        assert stored["sr"].shape == () and stored["sr"].dtype == np.int64
        assert stored["state"].shape == (2, 1, 16) and stored["input"].shape == (8, 1, 64)


def test_without_samples_generated_feeds_respect_scalars_and_state_shapes(
    cli: Cli, vad: dict[str, Path], shared_keydir: Path, tmp_path: Path
) -> None:
    report = cli.run(*_build(vad["good"], tmp_path / "b.satchel", shared_keydir / "signing.key",
                             "--json")).json()

    assert report["agreement"]["samples"] == 32


def test_probability_moved_by_a_shifted_bias_is_refused_though_cosine_would_pass(
    cli: Cli, vad: dict[str, Path], shared_keydir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "b.satchel"

    line = cli.run(*_build(vad["shifted"], out, shared_keydir / "signing.key",
                           "--reference", vad["good"], "--samples", vad["samples"])).refusal()

    assert "output 'output' (score): max error" in line and "> allowed 0.05" in line
    assert not out.exists()


def test_per_output_check_overrides_the_kind_and_threshold(
    cli: Cli, vad: dict[str, Path], shared_keydir: Path, tmp_path: Path
) -> None:
    report = cli.run(*_build(vad["shifted"], tmp_path / "b.satchel",
                             shared_keydir / "signing.key", "--reference", vad["good"],
                             "--samples", vad["samples"], "--check",
                             "output:kind=score,max_rel_error=1", "--json")).json()

    check = next(c for c in report["checks"] if c["name"] == "output")
    assert check == {"name": "output", "kind": "score", "max_rel_error": 1.0}


def test_check_naming_an_unknown_output_is_refused_in_one_line(
    cli: Cli, vad: dict[str, Path], shared_keydir: Path, tmp_path: Path
) -> None:
    line = cli.run(*_build(vad["good"], tmp_path / "b.satchel", shared_keydir / "signing.key",
                           "--check", "speech:max_abs_error=0.1")).refusal()

    assert "--check names 'speech', which is not an output" in line


@pytest.mark.parametrize(
    ("name", "version", "rule"),
    [("Bad Name", "1.0", "lowercase letters"), ("vad", "1 0", "version '1 0' is invalid")],
)
def test_release_names_are_checked_before_any_model_runs(
    cli: Cli, shared_keydir: Path, tmp_path: Path, name: str, version: str, rule: str
) -> None:
    never_loaded = tmp_path / "model.onnx"
    never_loaded.write_bytes(b"not a model at all")
    started = time.monotonic()

    line = cli.run("bundle", "build", "--name", name, "--version", version, "--model",
                   never_loaded, "--key", shared_keydir / "signing.key",
                   "-o", tmp_path / "b.satchel").refusal()

    assert rule in line and time.monotonic() - started < 5


def test_reference_with_another_output_shape_is_one_line(
    cli: Cli, vad: dict[str, Path], shared_keydir: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.onnx"
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["input"], ["output"], keepdims=1),
         helper.make_node("Identity", ["state"], ["stateN"]),
         helper.make_node("Cast", ["sr"], ["unused"], to=TensorProto.FLOAT)],
        "other",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 16]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "batch", 16])],
    )
    _save(graph, other)
    # The reference's "output" is [1, 1] for the whole batch; the model's is [batch, 1].
    samples = tmp_path / "s.npz"
    np.savez(samples, input=np.ones((3, 64), np.float32), state=np.zeros((2, 3, 16), np.float32),
             sr=np.array(16000, np.int64))

    line = cli.run(*_build(vad["good"], tmp_path / "b.satchel", shared_keydir / "signing.key",
                           "--reference", other, "--samples", samples)).refusal()

    assert "disagree in shape" in line and "'output'" in line


def test_empty_samples_are_refused_without_a_native_log(
    cli: Cli, models: Models, shared_keydir: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty.npz"
    np.savez(empty, input=np.zeros((0, 64), np.float32))

    out = cli.spawn(*_build(models.int8_onnx, tmp_path / "b.satchel",
                            shared_keydir / "signing.key", "--samples", empty))

    assert "array 'input' is empty" in out.refusal()


def test_useless_thresholds_and_a_budget_below_the_host_are_warned_about(
    cli: Cli, models: Models, shared_keydir: Path, tmp_path: Path
) -> None:
    out = cli.run(*_build(models.int8_onnx, tmp_path / "b.satchel", shared_keydir / "signing.key",
                          "--reference", models.float_onnx, "--min-top1", "0",
                          "--min-cosine", "-1", "--latency-budget-ms", "0.000001")).ok()

    assert "warning: output 'logits': top-1 agreement 0 passes any output" in out.stderr
    assert "warning: output 'logits': min cosine -1 passes any output" in out.stderr
    assert "below this host's own p95" in out.stderr


def test_smoke_data_larger_than_the_model_is_warned_about(
    cli: Cli, models: Models, shared_keydir: Path, tmp_path: Path
) -> None:
    big = tmp_path / "big.npz"
    rows = np.random.default_rng(0).standard_normal((8000, 1, 64)).astype(np.float32)
    np.savez(big, input=rows)  # 2 MiB of inputs for a 38 KiB model

    out = cli.run(*_build(models.float_onnx, tmp_path / "b.satchel",
                          shared_keydir / "signing.key", "--samples", big)).ok()

    assert "warning: smoke data" in out.stderr and "larger than the model" in out.stderr


# --- ONNX external data -----------------------------------------------------------------------


def _external(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((64, 256)).astype(np.float32), "w")
    v = numpy_helper.from_array((rng.standard_normal((256, 10)) * 0.05).astype(np.float32), "v")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["h"]),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "v"], ["logits"])],
        "ext",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        initializer=[w, v],
    )
    return _save(graph, path, save_as_external_data=True, all_tensors_to_one_file=True,
                 location=path.name + ".data", size_threshold=0)


def test_onnx_with_external_data_ships_every_file_and_counts_them(
    cli: Cli, shared_keydir: Path, tmp_path: Path
) -> None:
    model = _external(tmp_path / "net.onnx")
    out = tmp_path / "b.satchel"

    report = cli.run(*_build(model, out, shared_keydir / "signing.key", "--json")).json()

    data = tmp_path / "net.onnx.data"
    assert report["model_bytes"] == model.stat().st_size + data.stat().st_size
    staged = tmp_path / "staged"
    staged.mkdir()
    verified = verify_and_unpack(out, read_root(shared_keydir), staged, utcnow(), fsync=False)
    assert verified.manifest.models[0].data_files == ("net.onnx.data",)
    assert (staged / "net.onnx.data").read_bytes() == data.read_bytes()
    text = cli.run("bundle", "inspect", out).ok().stdout
    assert "    data   net.onnx.data" in text


def test_onnx_whose_external_data_is_missing_is_refused_at_build(
    cli: Cli, shared_keydir: Path, tmp_path: Path
) -> None:
    model = _external(tmp_path / "net.onnx")
    (tmp_path / "net.onnx.data").unlink()
    out = tmp_path / "b.satchel"

    line = cli.run(*_build(model, out, shared_keydir / "signing.key")).refusal()

    assert "net.onnx: its external data file 'net.onnx.data' is missing" in line
    assert not out.exists()


def test_reference_with_external_data_is_loaded_beside_its_weights(
    cli: Cli, shared_keydir: Path, tmp_path: Path
) -> None:
    (tmp_path / "ref").mkdir()
    reference = _external(tmp_path / "ref" / "net.onnx")
    shipped = _external(tmp_path / "net.onnx")

    report = cli.run(*_build(shipped, tmp_path / "b.satchel", shared_keydir / "signing.key",
                             "--reference", reference, "--json")).json()

    assert report["agreement"]["max_abs_error"] == 0.0


def test_a_model_failing_on_generated_inputs_is_one_line_without_a_native_log(
    cli: Cli, shared_keydir: Path, tmp_path: Path
) -> None:
    """onnxruntime logs failing kernels at ERROR on fd 2; the technician sees only our line."""
    w = numpy_helper.from_array(np.ones((64, 4), np.float32), "w")
    shape = numpy_helper.from_array(np.array([-1, 64], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["rows"]),
         helper.make_node("MatMul", ["rows", "w"], ["logits"])],
        "needs64",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "length"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 4])],
        initializer=[w, shape],
    )
    model = _save(graph, tmp_path / "needs64.onnx")

    out = cli.spawn(*_build(model, tmp_path / "b.satchel", shared_keydir / "signing.key"))
    line = out.refusal()

    assert "running the models on the samples failed" in line
    assert line.endswith("give real inputs with --samples")


def test_quantize_compares_on_the_users_samples_when_asked(
    cli: Cli, models: Models, tmp_path: Path
) -> None:
    report = cli.run("model", "quantize", models.float_onnx, "-o", tmp_path / "q.onnx",
                     "--samples", models.samples, "--json").json()

    assert report["mode"] == "dynamic" and report["feeds"] == 1 and report["samples"] == 16
