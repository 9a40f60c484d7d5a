"""A slow model's smoke test: its timed latency runs are bounded in time as well as count
(issue 14), every sample feed is still checked, and the report says how many timed runs were
made and why they stopped. The bounds here are tiny or huge, never a timing to assert on."""

from __future__ import annotations

import json

import pytest

from satchel.agent.config import AgentConfig
from satchel.agent.install.smoketest import (
    STOPPED_AT_COUNT,
    STOPPED_AT_TIME,
    ChildSmokeRunner,
    InProcessSmokeRunner,
    run_all,
)
from tests.agent.bundle_maker import HIDDEN, IN_DIM, OUT_DIM, SAMPLES, Model
from tests.agent.test_agent_smoketest import unpacked
from tests.factory.model_makers import (
    INPUT_NAME,
    OUTPUT_NAME,
    make_mlp_weights,
    mlp_forward,
    sample_inputs,
)
from tests.factory.variants import slow_onnx

TINY_S = 1e-9  # passed after the first timed run, however fast the machine
HUGE_S = 1e9


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Model:
    """The agent suite's MLP with 20 256x256 MatMuls chained in (same outputs, a few ms)."""
    weights = make_mlp_weights(IN_DIM, HIDDEN, OUT_DIM, seed=3)
    x = sample_inputs(IN_DIM, SAMPLES, seed=5)
    path = slow_onnx(weights, tmp_path_factory.mktemp("slow") / "slow.onnx", steps=20)
    return Model(path, {INPUT_NAME: x}, {OUTPUT_NAME: mlp_forward(weights, x)})


SMOKE = {"max_abs_error": 1e-3, "warmup_runs": 1, "latency_runs": 40}


def test_time_bound_stops_a_slow_models_latency_runs_at_the_minimum_count(tmp_path, slow_model):
    manifest, files = unpacked(tmp_path, slow_model, SMOKE)

    test = run_all(manifest, files, bound=(TINY_S, 5)).tests[0]

    assert test["passed"], test["failures"]
    latency = test["latency_ms"]
    assert latency["runs"] == 5 and latency["runs_asked"] == 40
    assert latency["stopped"] == STOPPED_AT_TIME
    assert latency["time_bound_s"] == TINY_S and latency["min_runs"] == 5
    assert 0 < latency["p50"] <= latency["p95"]
    # every sample row was still run and compared, not only the timed repetitions
    assert test["agreement"]["outputs"][0]["values"] == SAMPLES * OUT_DIM


def test_runs_stop_at_the_count_asked_when_the_time_bound_is_not_reached(tmp_path, slow_model):
    manifest, files = unpacked(tmp_path, slow_model, SMOKE)

    latency = run_all(manifest, files, bound=(HUGE_S, 5)).tests[0]["latency_ms"]

    assert latency["runs"] == 40 and latency["stopped"] == STOPPED_AT_COUNT


def test_a_test_asking_fewer_runs_than_the_minimum_gets_exactly_those(tmp_path, slow_model):
    manifest, files = unpacked(tmp_path, slow_model, {**SMOKE, "latency_runs": 3})

    latency = run_all(manifest, files, bound=(TINY_S, 5)).tests[0]["latency_ms"]

    assert latency["runs"] == 3 and latency["stopped"] == STOPPED_AT_COUNT


def test_a_wrong_answer_still_fails_when_the_latency_runs_are_cut_short(tmp_path, slow_model):
    wrong = Model(slow_model.path, slow_model.inputs,
                  {OUTPUT_NAME: slow_model.reference[OUTPUT_NAME] + 1.0})
    manifest, files = unpacked(tmp_path, wrong, SMOKE)

    report = run_all(manifest, files, bound=(TINY_S, 5))

    assert not report.passed and "max abs error" in report.failures[0]
    assert report.tests[0]["latency_ms"]["stopped"] == STOPPED_AT_TIME


@pytest.mark.parametrize("runner", [InProcessSmokeRunner, ChildSmokeRunner],
                         ids=["in-process", "child"])
def test_the_devices_settings_set_the_bound(tmp_path, slow_model, runner):
    config = AgentConfig(smoke_latency_s=TINY_S, smoke_min_latency_runs=2)
    manifest, files = unpacked(tmp_path, slow_model, SMOKE)

    report = runner(config).run(manifest, files)

    assert report.passed, report.failures
    latency = report.tests[0]["latency_ms"]
    assert latency["runs"] == 2 and latency["stopped"] == STOPPED_AT_TIME
    assert latency["min_runs"] == 2


def test_default_settings_bound_the_runs_as_the_build_does():
    config = AgentConfig()

    assert config.smoke_latency_s == 0.25 and config.smoke_min_latency_runs == 5


def test_install_reports_its_latency_run_count_and_stop_reason(device, make_bundle):
    env = {"SATCHEL_AGENT_SMOKE_LATENCY_S": str(TINY_S),
           "SATCHEL_AGENT_SMOKE_MIN_LATENCY_RUNS": "1"}

    result = json.loads(device.spawn("install", "--json", str(make_bundle()), env=env)
                        .ok().stdout)

    latency = result["report"]["tests"][0]["latency_ms"]
    assert latency["runs"] == 1 and latency["stopped"] == STOPPED_AT_TIME
