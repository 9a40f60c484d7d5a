"""A large single-file ONNX model ships its weights as ONNX external data (issue 14): the
weights are bit for bit the same, the outputs too, the bundle lists and hashes both files, the
device's smoke test and its served session load them, and `bundle inspect` says so. Models
below the size, already split, or not rewritable plainly ship as they came."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from satchel.agent.install.installer import install
from satchel.agent.provision import init_device
from satchel.agent.runtimes import get_runtime
from satchel.agent.state import DeviceState
from satchel.bundles.reader import read_unverified
from satchel.manager.build import BuildDefaults, BuildRequest, build_bundle
from satchel.manager.commands.reports import describe
from satchel.manager.external_data import ALIGNMENT, DATA_FILE, externalize
from satchel.manager.modelgen import INPUT_NAME, make_mlp_weights, onnx_mlp, sample_inputs
from satchel.manager.onnx_graph import read_graph_summary
from tests.factory.keys import Keyring

CREATED = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
IN_DIM = 64
SPLIT_ABOVE = BuildDefaults(external_data_min_bytes=1024)  # every test model is "large"


def _model(folder: Path, name: str = "net.onnx") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return onnx_mlp(make_mlp_weights(IN_DIM, 96, 10, seed=0), folder / name)


def _initializers(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))  # reads external data back in
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _outputs(path: Path, x: np.ndarray) -> list[np.ndarray]:
    return list(ort.InferenceSession(str(path)).run(None, {INPUT_NAME: x}))


def test_rewritten_model_has_the_same_weights_and_outputs(tmp_path: Path) -> None:
    source = _model(tmp_path / "src")
    x = sample_inputs(IN_DIM, 8, seed=1)

    done = externalize(source, tmp_path / "out")

    assert done is not None and done.data.name == DATA_FILE
    onnx.checker.check_model(str(done.model))
    before, after = _initializers(source), _initializers(done.model)
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[k], after[k]) and before[k].dtype == after[k].dtype
               for k in before)
    assert all(np.array_equal(a, b) for a, b in zip(_outputs(source, x),
                                                    _outputs(done.model, x), strict=True))
    assert read_graph_summary(done.model).external_locations == (DATA_FILE,)
    offsets = [int(e.value) for t in onnx.load(str(done.model), load_external_data=False)
               .graph.initializer for e in t.external_data if e.key == "offset"]
    assert offsets and all(o % ALIGNMENT == 0 for o in offsets)
    assert done.model.stat().st_size < 4096  # the graph alone


def test_a_model_with_nothing_worth_moving_is_left_as_it_is(tmp_path: Path) -> None:
    source = _model(tmp_path / "src")

    assert externalize(source, tmp_path / "out", tensor_min_bytes=1 << 40) is None
    assert not (tmp_path / "out").exists()


def test_a_truncated_model_is_refused_by_the_rewrite_and_nothing_is_written(
        tmp_path: Path) -> None:
    source = _model(tmp_path / "src")
    source.write_bytes(source.read_bytes()[:-100])

    with pytest.raises(ValueError):
        externalize(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_build_ships_a_large_model_as_graph_and_data_and_the_device_serves_it(
        tmp_path: Path, keys: Keyring) -> None:
    source = _model(tmp_path / "src")
    out = tmp_path / "bundles" / "detector.satchel"

    result = build_bundle(BuildRequest(name="detector", version="1.0", model=source,
                                       sequence=3), [keys.signing], out,
                          defaults=SPLIT_ABOVE, now=CREATED)

    files = {f.path: f for f in result.manifest.files}
    assert {"model.onnx", DATA_FILE} <= files.keys()
    assert result.manifest.models[0].data_files == (DATA_FILE,)
    assert files[DATA_FILE].size >= sum(a.nbytes for a in _initializers(source).values()) - 4096
    assert sorted(p.name for p in out.parent.iterdir()) == ["detector.satchel"]  # no leftovers
    with open(out, "rb") as f:
        manifest, sigs = read_unverified(f)
    assert any(DATA_FILE in line and "external data" in line
               for line in describe(manifest, [], {}))

    state = tmp_path / "device"
    init_device(state, keys.root_json, "dev-1", "test-board")
    installed = install(state, out)  # verify, unpack, smoke test on the device's runtime
    release = DeviceState(state).active_release("detector")
    assert installed.report.passed and release is not None
    x = sample_inputs(IN_DIM, 4, seed=2)
    with get_runtime("onnxruntime").load(release.path / "model.onnx", threads=1) as served:
        got = served.run({INPUT_NAME: x})
    with get_runtime("onnxruntime").load(source, threads=1) as original:
        want = original.run({INPUT_NAME: x})
    assert got.keys() == want.keys()
    assert all(np.allclose(got[k], want[k], rtol=1e-5, atol=1e-6) for k in want)


def test_build_ships_a_small_model_as_one_file(tmp_path: Path, keys: Keyring) -> None:
    source = _model(tmp_path / "src")

    result = build_bundle(BuildRequest(name="detector", version="1.0", model=source),
                          [keys.signing], tmp_path / "b.satchel", now=CREATED)

    assert [f.path for f in result.manifest.files if f.path.startswith("model")] == [
        "model.onnx"]


def test_build_keeps_a_model_already_split_as_its_author_split_it(tmp_path: Path,
                                                                   keys: Keyring) -> None:
    source = _model(tmp_path / "src")
    onnx.save_model(onnx.load(str(source)), str(source), save_as_external_data=True,
                    location="net.weights", size_threshold=0)

    result = build_bundle(BuildRequest(name="detector", version="1.0", model=source),
                          [keys.signing], tmp_path / "b.satchel",
                          defaults=replace(SPLIT_ABOVE, external_data_min_bytes=1),
                          now=CREATED)

    assert result.manifest.models[0].data_files == ("net.weights",)
