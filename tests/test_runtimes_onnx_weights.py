"""A large single-file ONNX model is served from the file's own bytes (agent.runtimes.onnx_weights,
issue 14): the same outputs as onnxruntime's own loading, the signed file untouched, its
weights mapped rather than copied, and anything unexpected left to onnxruntime."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from satchel.agent.runtimes import ModelLoadError, onnx, onnx_weights
from satchel.agent.runtimes.onnx import OnnxRuntimeAdapter
from satchel.agent.runtimes.onnx_weights import external_weights_graph
from satchel.manager.modelgen import onnx_matmul_stack
from tests.factory.model_makers import (
    INPUT_NAME,
    OUTPUT_NAME,
    make_mlp_weights,
    mlp_forward,
    onnx_mlp,
    sample_inputs,
)

IN_DIM, HIDDEN, OUT_DIM = 32, 640, 10  # w1: 80 KiB, over the 64 KiB a tensor must have


@pytest.fixture(scope="module")
def weights() -> dict[str, np.ndarray]:
    return make_mlp_weights(IN_DIM, HIDDEN, OUT_DIM, seed=7)


@pytest.fixture
def model(tmp_path, weights) -> Path:
    return onnx_mlp(weights, tmp_path / "model.onnx")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _plain_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_prepacking", "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.fixture
def as_large(monkeypatch):
    """Every model file counts as large (the derived graph is used from 16 MiB on)."""
    monkeypatch.setattr(onnx, "_EXTERNAL_DATA_SCAN_BYTES", 0)


def test_the_derived_graph_is_small_and_names_the_model_file(model):
    graph = external_weights_graph(model)

    assert graph is not None
    # w1 (80 KiB) is referenced, not copied; w2 (25 KiB) and the biases stay inline
    assert len(graph) < model.stat().st_size - IN_DIM * HIDDEN * 4 + 1024
    assert b"location" in graph and model.name.encode() in graph


def test_a_large_model_computes_exactly_what_onnxruntime_computes_from_the_file(
        model, weights, as_large):
    before = _sha256(model)
    x = sample_inputs(IN_DIM, 5, seed=1)

    loaded = OnnxRuntimeAdapter().load(model)
    ours = loaded.run({INPUT_NAME: x})[OUTPUT_NAME]
    theirs = _plain_session(model).run([OUTPUT_NAME], {INPUT_NAME: x})[0]

    assert np.array_equal(ours, theirs)
    np.testing.assert_allclose(ours, mlp_forward(weights, x), rtol=1e-4, atol=1e-4)
    assert _sha256(model) == before  # the signed file is read, never rewritten
    assert sorted(p.name for p in model.parent.iterdir()) == ["model.onnx"]  # nothing derived


def test_the_derived_graph_is_what_a_large_model_loads(model, as_large, monkeypatch):
    seen: list[object] = []
    real = ort.InferenceSession

    def spy(source, *args, **kwargs):
        seen.append(source)
        return real(source, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", spy)

    OnnxRuntimeAdapter().load(model)

    assert len(seen) == 1 and isinstance(seen[0], bytes)


def test_a_small_model_is_loaded_by_onnxruntime_from_its_path(model, monkeypatch):
    seen: list[object] = []
    real = ort.InferenceSession
    monkeypatch.setattr(ort, "InferenceSession",
                        lambda source, *a, **k: seen.append(source) or real(source, *a, **k))

    OnnxRuntimeAdapter().load(model)

    assert seen == [str(model)]


def test_small_tensors_stay_inline(model):
    assert external_weights_graph(model, min_tensor_bytes=model.stat().st_size) is None


@pytest.mark.parametrize("content", [b"", b"\x00" * 64, b"\xff" * 64, b"\x0a\x05abc",
                                     b"\x3a\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01"])
def test_bytes_that_are_not_onnx_as_expected_are_left_to_onnxruntime(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)

    assert external_weights_graph(path) is None


def test_a_truncated_large_model_is_refused_in_one_line(model, tmp_path, as_large):
    cut = tmp_path / "cut" / "model.onnx"
    cut.parent.mkdir()
    cut.write_bytes(model.read_bytes()[: model.stat().st_size // 2])

    with pytest.raises(ModelLoadError, match="cannot load model.onnx"):
        OnnxRuntimeAdapter().load(cut)


def test_tensors_already_in_external_data_stay_there(model, weights, tmp_path, as_large,
                                                     monkeypatch):
    onnx_lib = pytest.importorskip("onnx")
    derived: list[bytes | None] = []

    def smaller_tensors_too(path: Path) -> bytes | None:  # w2 (25 KiB) moves, w1 is external
        derived.append(external_weights_graph(path, min_tensor_bytes=1024))
        return derived[-1]

    monkeypatch.setattr(onnx_weights, "external_weights_graph", smaller_tensors_too)
    sources: list[object] = []
    real = ort.InferenceSession
    monkeypatch.setattr(ort, "InferenceSession",
                        lambda source, *a, **k: sources.append(source) or real(source, *a, **k))
    split = tmp_path / "split"
    split.mkdir()
    proto = onnx_lib.load(str(model))
    # w1 goes to an external data file; the rest stays in the graph file
    onnx_lib.save_model(proto, str(split / "model.onnx"), save_as_external_data=True,
                        location="model.onnx.data", all_tensors_to_one_file=True,
                        size_threshold=HIDDEN * OUT_DIM * 4 + 1)
    x = sample_inputs(IN_DIM, 3, seed=2)

    loaded = OnnxRuntimeAdapter().load(split / "model.onnx")

    np.testing.assert_allclose(loaded.run({INPUT_NAME: x})[OUTPUT_NAME],
                               mlp_forward(weights, x), rtol=1e-4, atol=1e-4)
    assert derived[0] is not None  # the derived graph, with both kinds of reference,
    assert [type(s) for s in sources] == [bytes]  # loaded as it is (no fallback to the path)


# In a fresh process: the growth of the peak and of the resident memory from loading a model
# (argv: path, prepacking "on" as the agent decides or "off", and the input width to run it
# once with, or 0 not to run it).
PEAK = """
import json, sys
import numpy as np
from pathlib import Path
from satchel.agent.runtimes import onnx

if sys.argv[2] == "off":
    onnx._prepack_pays = lambda model: False

def kib(name):
    for line in open("/proc/self/status"):
        if line.startswith(name + ":"):
            return int(line.split()[1])

open("/proc/self/clear_refs", "w").write("5")
before = kib("VmRSS")
model = onnx.OnnxRuntimeAdapter().load(Path(sys.argv[1]))
if int(sys.argv[3]):
    model.run({"input": np.ones((2, int(sys.argv[3])), np.float32)})
print(json.dumps({"peak_kib": kib("VmHWM") - before, "rss_kib": kib("VmRSS") - before}))
"""


def _grown(path: Path, prepack: str = "on", run_width: int = 0) -> dict[str, int]:
    done = subprocess.run([sys.executable, "-c", PEAK, str(path), prepack, str(run_width)],
                          capture_output=True, text=True, check=True, timeout=120)
    return dict(json.loads(done.stdout))


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux peak RSS only")
def test_a_large_single_file_model_is_not_held_twice_in_memory(tmp_path):
    big = onnx_mlp(make_mlp_weights(256, 40_000, 10, seed=0), tmp_path / "big.onnx")  # 41 MB
    size_kib = big.stat().st_size / 1024

    # onnxruntime's own loading of this file grows the process by over twice its size
    assert _grown(big)["peak_kib"] < 1.5 * size_kib


# --- prepacking: allowed where no mapped tensor is a large share of the weights -----------


def _layers(path: Path, layers: int, width: int) -> Path:
    return onnx_matmul_stack(path, layers, width)  # each weight 1/layers of them


def _prepacking_disabled(path: Path, monkeypatch: pytest.MonkeyPatch) -> bool:
    entries: dict[str, str] = {}
    real = ort.SessionOptions.add_session_config_entry

    def record(self: ort.SessionOptions, key: str, value: str) -> None:
        entries[key] = value
        real(self, key, value)

    with monkeypatch.context() as patched:
        patched.setattr(ort.SessionOptions, "add_session_config_entry", record)
        OnnxRuntimeAdapter().load(path)
    return entries.get("session.disable_prepacking") == "1"


def test_mapped_tensor_lengths_are_read_from_the_derived_graph(model):
    graph = external_weights_graph(model)
    assert graph is not None

    assert onnx_weights.external_tensor_lengths(graph) == [IN_DIM * HIDDEN * 4]  # w1 only


def test_a_model_of_many_like_layers_is_prepacked_and_one_big_matrix_is_not(
        model, tmp_path, as_large, monkeypatch):
    layered = _layers(tmp_path / "layers.onnx", layers=8, width=160)  # 8 x 100 KiB

    assert not _prepacking_disabled(layered, monkeypatch)  # each tensor 1/8 of the weights
    assert _prepacking_disabled(model, monkeypatch)  # w1 is all the mapped weights


def test_a_prepacked_model_computes_what_onnxruntime_computes_from_the_file(tmp_path, as_large):
    layered = _layers(tmp_path / "layers.onnx", layers=8, width=160)
    x = np.abs(sample_inputs(160, 4, seed=5))

    ours = OnnxRuntimeAdapter().load(layered).run({INPUT_NAME: x})[OUTPUT_NAME]
    theirs = ort.InferenceSession(str(layered), providers=["CPUExecutionProvider"]).run(
        [OUTPUT_NAME], {INPUT_NAME: x})[0]

    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("content", [b"", b"\x3a\x03\x2a\x01\x00", b"\xff" * 16])
def test_graph_bytes_not_as_expected_give_no_lengths_and_no_prepacking(content):
    lengths = onnx_weights.external_tensor_lengths(content)
    assert not lengths
    assert not onnx._prepack_pays(content)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux peak RSS only")
def test_prepacking_costs_one_tensor_of_peak_and_nothing_once_the_model_runs(tmp_path):
    layered = _layers(tmp_path / "layers.onnx", layers=8, width=1024)  # 8 x 4 MiB, 32 MiB
    tensor_kib = 1024 * 1024 * 4 / 1024

    packed, mapped = _grown(layered, "on", 1024), _grown(layered, "off", 1024)

    # in use, the packed copies take what the mapped pages take; while one tensor is
    # packed, its mapped bytes are held too
    assert abs(packed["rss_kib"] - mapped["rss_kib"]) < 0.25 * tensor_kib
    assert packed["peak_kib"] < mapped["peak_kib"] + 1.25 * tensor_kib
