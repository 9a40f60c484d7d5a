"""Execution providers (onnxruntime) and delegates (TFLite) chosen in the agent's settings, the
CPU by default. What the device does not have is refused in one line that lists what it has,
before anything is done, never silently replaced by the CPU; the smoke test and the server
load models on the same choice.

This machine has no GPU: CUDAExecutionProvider stands for a provider the device lacks.
"""

from __future__ import annotations

import hashlib
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from satchel.agent.config import AgentConfig
from satchel.agent.install.smoketest import ChildSmokeRunner, InProcessSmokeRunner
from satchel.agent.runtimes import RuntimeUnavailableError, get_runtime
from satchel.agent.runtimes.accel import CPU, Acceleration, Delegate
from satchel.agent.service import AgentService
from satchel.bundles.manifest import FileEntry, Manifest, ModelEntry, SmokeTest, TensorInfo
from tests.factory.model_makers import INPUT_NAME, OUTPUT_NAME

MISSING = "CUDAExecutionProvider"
pytestmark = pytest.mark.skipif(MISSING in onnxruntime.get_available_providers(),
                                reason="this machine has CUDA: nothing to refuse")


def _unpacked(model, files: Path) -> Manifest:
    """A release's files and manifest with one smoke test, as the installer hands them over."""
    (files / "smoke").mkdir(parents=True)
    shutil.copy(model.path, files / "model.onnx")
    np.savez(files / "smoke/inputs.npz", **model.inputs)
    np.savez(files / "smoke/reference.npz", **model.reference)
    listed = tuple(FileEntry(str(p.relative_to(files)), p.stat().st_size,
                             hashlib.sha256(p.read_bytes()).hexdigest(), 1, "0" * 64)
                   for p in sorted(files.rglob("*")) if p.is_file())
    return Manifest(
        name="kws", version="1", sequence=1, created=datetime.now(timezone.utc), files=listed,
        smoke_tests=(SmokeTest("m", "smoke/inputs.npz", "smoke/reference.npz",
                               max_abs_error=0.1),),
        models=(ModelEntry("m", "onnxruntime", "model.onnx",
                           (TensorInfo(INPUT_NAME, "FP32", (-1, 16)),),
                           (TensorInfo(OUTPUT_NAME, "FP32", (-1, 4)),)),),
    )


def _available() -> str:
    return ", ".join(onnxruntime.get_available_providers())


def test_onnx_models_run_on_the_cpu_provider_by_default(models):
    model = get_runtime("onnxruntime").load(models["onnx"].path)

    assert AgentConfig().onnx_providers == ("CPUExecutionProvider",)
    assert model._session.get_providers() == ["CPUExecutionProvider"]
    assert model.run({"input": models["onnx"].inputs["input"][:1]})["logits"].shape[0] == 1


def test_configured_cpu_provider_with_options_is_used(models):
    options = {"CPUExecutionProvider": {"arena_extend_strategy": "kSameAsRequested"}}
    acceleration = Acceleration(onnx_provider_options=options)
    model = get_runtime("onnxruntime").load(models["onnx"].path, acceleration=acceleration)

    assert model._session.get_providers() == ["CPUExecutionProvider"]


def test_an_unavailable_provider_is_refused_listing_the_available_ones(models):
    acceleration = Acceleration(onnx_providers=(MISSING, "CPUExecutionProvider"))

    with pytest.raises(RuntimeUnavailableError) as refused:
        get_runtime("onnxruntime").load(models["onnx"].path, acceleration=acceleration)

    assert str(refused.value) == (f"onnx_providers: {MISSING} is not available on this device; "
                                  f"available: {_available()}")


def test_install_with_an_unavailable_provider_is_refused_before_anything_is_done(
    device, make_bundle
):
    bundle = make_bundle(version="1.0.0", sequence=1)
    tree = device.tree()

    line = device.spawn("install", str(bundle),
                        env={"SATCHEL_AGENT_ONNX_PROVIDERS": MISSING}).refusal()

    assert line == (f"error: onnx_providers: {MISSING} is not available on this device; "
                    f"available: {_available()}")
    assert device.tree() == tree and device.active() is None


def test_run_with_an_unavailable_provider_in_the_settings_file_refuses_to_start(
    device, tmp_path
):
    toml = tmp_path / "agent.toml"
    toml.write_text(f'[agent]\nonnx_providers = ["{MISSING}"]\n')

    line = device.spawn("--config", str(toml), "run", "--listen", "127.0.0.1:0",
                        "--no-socket").refusal()

    assert MISSING in line and "available: " in line and "CPUExecutionProvider" in line


def test_install_with_the_cpu_provider_named_in_the_settings_file_installs(
    device, make_bundle, tmp_path
):
    toml = tmp_path / "agent.toml"
    toml.write_text('[agent]\nonnx_providers = ["CPUExecutionProvider"]\n'
                    'onnx_provider_options = {CPUExecutionProvider = {}}\n')

    device.spawn("--config", str(toml), "install",
                 str(make_bundle(version="1.0.0", sequence=1))).ok()

    assert device.active() == ("1.0.0", 1)


@pytest.mark.parametrize("runner", [InProcessSmokeRunner, ChildSmokeRunner])
def test_the_smoke_test_runs_on_the_configured_providers(runner, models, tmp_path):
    """A smoke test honours the setting, in-process and in a child process alike: asked for a
    provider the device lacks, it fails saying so instead of passing on the CPU."""
    files = tmp_path / "files"
    manifest = _unpacked(models["onnx"], files)

    on_cpu = runner(AgentConfig()).run(manifest, files)
    elsewhere = runner(AgentConfig(onnx_providers=(MISSING,))).run(manifest, files)

    assert on_cpu.passed, on_cpu.failures
    assert not elsewhere.passed
    assert f"{MISSING} is not available on this device" in elsewhere.failures[0]


def test_the_server_loads_models_on_the_providers_of_the_settings(device):
    config = AgentConfig(onnx_providers=(MISSING, "CPUExecutionProvider"), tflite_xnnpack=False)

    service = AgentService(device.state_dir, listen=None, config=config)

    assert service.server_config.acceleration == Acceleration.of(config)
    assert AgentService(device.state_dir, listen=None).server_config.acceleration == CPU


def test_tflite_runs_without_xnnpack_when_the_settings_turn_it_off(models):
    model = get_runtime("tflite").load(models["tflite"].path,
                                       acceleration=Acceleration(tflite_xnnpack=False))

    assert model.default_delegates is False
    assert model.run({"input": models["tflite"].inputs["input"][:1]})["logits"].shape == (1, 4)


def test_a_tflite_delegate_that_is_not_there_is_refused_naming_it(models, tmp_path):
    missing = tmp_path / "libvendor_delegate.so"
    acceleration = Acceleration(tflite_delegates=(Delegate(str(missing)),))

    with pytest.raises(RuntimeUnavailableError) as refused:
        get_runtime("tflite").load(models["tflite"].path, acceleration=acceleration)

    assert str(refused.value) == f"tflite_delegates: cannot load {missing}: no such file"


def test_a_tflite_delegate_that_does_not_load_is_refused_at_install(device, make_bundle,
                                                                   tmp_path: Path):
    not_a_library = tmp_path / "libbroken.so"
    not_a_library.write_bytes(b"not an ELF file")
    tree = device.tree()

    line = device.spawn(
        "install", str(make_bundle(version="1.0.0", sequence=1)),
        env={"SATCHEL_AGENT_TFLITE_DELEGATES": f'[{{path = "{not_a_library}"}}]'},
    ).refusal()

    assert line.startswith(f"error: tflite_delegates: cannot load {not_a_library}: ")
    assert device.tree() == tree
