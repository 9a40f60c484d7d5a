"""Traffic ramp on a real device and server: after its shadow stage a release answers a
growing share of the requests, each step judged by its own health policy; a breach sends
every request back to the previous release at once, which stayed loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from satchel.bundles.activation import build_policy
from satchel.bundles.events import ACTIVATED, RAMP_COMPLETED, RAMP_FAILED, RAMP_STEP
from tests.agent.staged import StagedModels, field_inputs, make_models, rig, shadow
from tests.factory.keys import Keyring
from tests.server.devices import negative_inputs, positive_inputs
from tests.server.servers import wait_for


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> StagedModels:
    return make_models(tmp_path_factory.mktemp("ramp-models"))


def test_good_release_ramps_to_every_request_then_is_on_probation(
    tmp_path: Path, keys: Keyring, models: StagedModels
) -> None:
    with rig(tmp_path, keys, models) as r:
        r.install(models.good, version="1.0.0", sequence=1)
        r.start()
        r.install(models.twin, version="2.0.0", sequence=2,
                  activation=shadow(5, ramp="10,50,100", step_requests=5))
        wait_for(lambda: r.server is not None and r.server.registry.candidate("vision")
                 is not None)
        answers: list[str] = []
        for x in field_inputs(400, seed=3):
            answers.append(r.infer(x)["model_version"])
            if r.events.of_kind(ACTIVATED):
                break
        wait_for(lambda: bool(r.events.of_kind(ACTIVATED)))
        steps = [e.details["ramp"]["percent"] for e in r.events.of_kind(RAMP_STEP)]
        assert steps == [10, 50, 100]
        (completed,) = r.events.of_kind(RAMP_COMPLETED)
        assert completed.details["client_answers"] >= 15
        assert "2.0.0" in answers and "1.0.0" in answers  # both answered during the ramp
        wait_for(lambda: r.infer(positive_inputs(1))["model_version"] == "2.0.0")
        status = r.status()
        assert status["active"]["version"] == "2.0.0" and status["stage"] == "probation"
        kinds = [k for k in r.kinds() if k in ("shadow_passed", "ramp_step", "ramp_completed",
                                               "activated")]
        assert kinds == ["shadow_passed", "ramp_step", "ramp_step", "ramp_step",
                         "ramp_completed", "activated"]


def test_ramp_share_is_what_the_step_says(
    tmp_path: Path, keys: Keyring, models: StagedModels
) -> None:
    policy = build_policy(ramp="10,100", ramp_step_requests=1000)
    with rig(tmp_path, keys, models) as r:
        r.install(models.good, version="1.0.0", sequence=1)
        r.start()
        r.install(models.twin, version="2.0.0", sequence=2, activation=policy)
        wait_for(lambda: r.server is not None and r.server.registry.candidate("vision")
                 is not None)
        answers = [r.infer(x)["model_version"] for x in field_inputs(100, seed=5)]
        assert answers.count("2.0.0") == 10
        ramp = r.server.registry.candidate("vision").figures()["ramp"]
        assert ramp["percent"] == 10 and ramp["answered"] == 10


def test_breach_during_the_ramp_sends_every_request_back_at_once(
    tmp_path: Path, keys: Keyring, models: StagedModels
) -> None:
    policy = build_policy(ramp="50,100", ramp_step_requests=1000)
    with rig(tmp_path, keys, models) as r:
        r.install(models.good, version="1.0.0", sequence=1)
        r.start()
        r.install(models.nan, version="2.0.0", sequence=2, activation=policy)
        wait_for(lambda: r.server is not None and r.server.registry.candidate("vision")
                 is not None)
        nan_answers = 0
        first_bad = None
        for i in range(20):
            answer = r.infer(negative_inputs(1, seed=i))
            data = answer["outputs"][0]["data"]
            if answer["model_version"] == "2.0.0" and any(v != v or v is None for v in data):
                nan_answers += 1
                first_bad = first_bad if first_bad is not None else i
        assert nan_answers == 1  # the very next request after the breach went back
        wait_for(lambda: bool(r.events.of_kind(RAMP_FAILED)))
        (failed,) = r.events.of_kind(RAMP_FAILED)
        assert "NaN" in failed.reason and failed.details["ramp"]["percent"] == 50
        wait_for(lambda: r.status()["candidate"] is None)
        assert r.status()["active"]["version"] == "1.0.0"
        assert all(r.infer(x)["model_version"] == "1.0.0" for x in field_inputs(10))
