"""A fleet, end to end: a real manager and real agents on 127.0.0.1 roll a release out in
waves and serve it; a bad release rolls back on its canary by itself and halts the rollout."""

from __future__ import annotations

import numpy as np

from tests.e2e.commands import wait_for
from tests.e2e.kit import Kit, expected_outputs, negative, positive
from tests.e2e.sites import ManagerProcess, Site


def test_rollout_in_waves_serves_the_model_then_a_bad_release_rolls_back_and_halts(
    site: Site, manager: ManagerProcess, kit: Kit
) -> None:
    names = ["fleet-1", "fleet-2", "fleet-3"]
    agents = {name: site.device(name, manager) for name in names}
    manager.add("v1")

    rollout = manager.deploy("vision:1.0.0", names, "1,50%,100%")
    done = wait_for(lambda: manager.deployment(rollout)["state"] == "completed", 60,
                    "the rollout completes")

    assert done
    status = manager.deployment(rollout)
    assert [w["size"] for w in status["waves"]] == [1, 1, 1]
    assert {t["state"] for t in status["targets"]} == {"succeeded"}
    x = positive(5, seed=11)
    want = expected_outputs(kit.good, x)
    for name, agent in agents.items():
        assert agent.serving_version("vision") == "1.0.0", name
        np.testing.assert_allclose(agent.infer("vision", x), want, rtol=1e-5, atol=1e-6)
    health = wait_for(
        lambda: (h := manager.device("fleet-2")["health"].get("vision")) and h["count"] and h,
        20, "the health summary reaches the manager")
    assert (health["count"], health["errors"], health["nan"]) == (1, 0, 0)

    # a release that passes its smoke test (positive samples) but returns NaN in the field
    manager.add("bad")
    halting = manager.deploy("vision:2.0.0", names, "1,50%,100%")
    canary = agents["fleet-1"]
    wait_for(lambda: canary.serving_version("vision") == "2.0.0", 30, "the canary installs")
    for seed in range(8):  # live requests with a negative first feature: NaN outputs
        canary.http.post(f"{canary.url}/v2/models/vision/infer", timeout=10, json={
            "inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32",
                        "data": negative(1, seed).ravel().tolist()}]})

    wait_for(lambda: canary.serving_version("vision") == "1.0.0", 10,
             "the canary rolls back by itself")
    halted = wait_for(lambda: (d := manager.deployment(halting))["state"] == "halted" and d,
                      30, "the deployment halts")
    rolled = [e for e in manager.events("fleet-1") if e["kind"] == "rolled_back"]
    assert len(rolled) == 1 and rolled[0]["version"] == "2.0.0"
    assert "nan" in rolled[0]["reason"].lower()
    assert "canary" in halted["reason"]
    assert {t["device_id"]: t["state"] for t in halted["targets"]} == {
        "fleet-1": "failed", "fleet-2": "pending", "fleet-3": "pending"}
    for name in ("fleet-2", "fleet-3"):
        assert agents[name].serving_version("vision") == "1.0.0"
    np.testing.assert_allclose(canary.infer("vision", x), want, rtol=1e-5, atol=1e-6)
    shown = manager.device("fleet-1")["channels"]["vision"]
    assert shown["active"]["version"] == "1.0.0"
