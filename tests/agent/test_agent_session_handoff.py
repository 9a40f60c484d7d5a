"""One load per release inside the service (issue 14): the smoke test's passing session is the
one the server serves, and the memory it is judged on is measured honestly in-process."""

from __future__ import annotations

import gc
import shutil
import time

import numpy as np

from satchel.agent.config import AgentConfig
from satchel.agent.install.handoff import SessionHandoff, taking_over
from satchel.agent.install.smoketest import ChildSmokeRunner, InProcessSmokeRunner
from satchel.agent.runtimes import get_runtime
from tests.agent.bundle_maker import Model
from tests.agent.test_agent_smoketest import unpacked
from tests.factory.model_makers import INPUT_NAME, make_mlp_weights, mlp_forward, onnx_mlp

KEY = ("kws", "1", 1)  # the release `unpacked` describes: channel, version, sequence


class _Release:
    """What the server knows of an active release (agent.state.Release's fields it reads)."""

    def __init__(self, channel: str, version: str, sequence: int) -> None:
        self.channel, self.version, self.sequence = channel, version, sequence


class _ServerConfig:
    runtime_threads: int | None = AgentConfig().runtime_threads  # the service passes the agent's


def test_a_passing_session_is_kept_for_the_server_and_served_once(tmp_path, models):
    manifest, files = unpacked(tmp_path, models["onnx"], {"max_abs_error": 0.1})
    handoff = SessionHandoff()

    report = InProcessSmokeRunner(AgentConfig(), handoff).run(manifest, files)
    fresh_loads: list[object] = []
    loader = taking_over(handoff, lambda release, config: fresh_loads.append(release))
    served = loader(_Release(*KEY), _ServerConfig())

    assert report.passed and fresh_loads == []
    x = models["onnx"].inputs[INPUT_NAME][:1]
    assert np.allclose(served.run({INPUT_NAME: x})[served.outputs[0].name],
                       models["onnx"].reference[served.outputs[0].name][:1], atol=1e-4)
    assert len(handoff) == 0  # taken, so a later load of the same release loads afresh
    loader(_Release(*KEY), _ServerConfig())
    assert len(fresh_loads) == 1
    served.close()


def test_a_failing_session_is_never_handed_over(tmp_path, models):
    manifest, files = unpacked(tmp_path, models["onnx-nan"], {"min_cosine": 0.99})
    handoff = SessionHandoff()

    report = InProcessSmokeRunner(AgentConfig(), handoff).run(manifest, files)

    assert not report.passed and len(handoff) == 0


def test_a_session_of_another_release_or_thread_count_is_not_served(tmp_path, models):
    manifest, files = unpacked(tmp_path, models["onnx"], {})
    handoff = SessionHandoff()
    InProcessSmokeRunner(AgentConfig(), handoff).run(manifest, files)

    assert handoff.take(("kws", "1", 2), None) is None
    assert handoff.take(KEY, 2) is None
    assert handoff.take(KEY, AgentConfig().runtime_threads) is not None


def test_memory_freed_earlier_in_the_process_does_not_hide_a_models_growth(tmp_path):
    """A long-running agent has loaded and dropped models before; the allocator keeps that
    memory and would hand it out again unseen (it hid about one copy of the weights).
    onnxruntime holds the weights twice while it builds a session (the parsed file and the
    tensors): the in-process figure must show it, near what a fresh child process shows
    (whose figure also holds the runtime's own first-use set-up)."""
    weights = make_mlp_weights(256, 8000, 4, seed=1)  # ~8 MB of random float32 weights
    x = np.random.default_rng(2).standard_normal((4, 256)).astype(np.float32)
    path = onnx_mlp(weights, tmp_path / "big.onnx")
    model_mb = path.stat().st_size / 2**20
    model = Model(path, {INPUT_NAME: x}, {"logits": mlp_forward(weights, x)})
    manifest, files = unpacked(tmp_path, model, {"max_memory_mb": 1024.0, "max_abs_error": 0.1})
    earlier = get_runtime("onnxruntime").load(files / "model.onnx")
    earlier.run({INPUT_NAME: x[:1]})
    earlier.close()
    del earlier
    gc.collect()

    in_process = InProcessSmokeRunner().run(manifest, files).tests[0]["memory_mb"]
    child = ChildSmokeRunner().run(manifest, files).tests[0]["memory_mb"]

    assert in_process["free_memory_returned"]
    assert in_process["peak_growth"] >= 1.5 * model_mb, (model_mb, in_process)
    assert in_process["peak_growth"] >= 0.5 * child["peak_growth"], (in_process, child)
    shutil.rmtree(files)


def test_a_bundle_without_smoke_test_is_loaded_but_not_kept(tmp_path, models):
    manifest, files = unpacked(tmp_path, models["onnx"], None)
    handoff = SessionHandoff()

    assert InProcessSmokeRunner(AgentConfig(), handoff).run(manifest, files).passed
    assert len(handoff) == 0  # never run, so not warmed up: the server loads it itself



def test_an_install_inside_the_service_is_served_by_its_smoke_tested_session(
    device, make_bundle
):
    """The service's own installs (check-in, USB stick) run the installer in its process:
    the release it activates is served by the very session its smoke test loaded."""
    from satchel.agent.install.handoff import current_handoff
    from satchel.agent.install.installer import install
    from satchel.agent.service import AgentService

    service = AgentService(device.state_dir, listen=None, unix_socket=None).start()
    try:
        handoff = current_handoff()
        assert handoff is not None
        kept: list[object] = []
        keep = handoff.keep
        handoff.keep = lambda release, threads, model: (kept.append(model),
                                                        keep(release, threads, model))

        install(device.state_dir, make_bundle())
        deadline = time.monotonic() + 10
        while service.server.registry.get("kws") is None and time.monotonic() < deadline:
            time.sleep(0.05)

        serving = service.server.registry.get("kws")
        assert serving is not None and len(kept) == 1
        assert serving.model is kept[0] and len(handoff) == 0
    finally:
        service.stop()
    assert current_handoff() is None
