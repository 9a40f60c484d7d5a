"""Field-aware activation end to end (issue 18), a real manager and real agents on 127.0.0.1: a
release that passes its lab smoke test but gives NaN on field inputs is refused in its shadow
stage without answering a client, the deployment halts, the field input it tripped on reaches
the manager and is exported as the `--samples` of the next build; that next release ramps to
100% and only then counts as healthy in its wave."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tests.e2e.commands import SATCHEL, run, wait_for
from tests.e2e.kit import DEVICE_CLASS, Kit, negative, positive
from tests.e2e.sites import ManagerProcess, Site
from tests.service.procs import AgentProcess


def _build(kit: Kit, model: Path, samples: Path, version: str, sequence: int,
           *staged: str) -> Path:
    out = kit.root / f"staged-{version}.satchel"
    run(SATCHEL, "bundle", "build", "--name", "staged", "--version", version, "--model", model,
        "--samples", samples, "--sequence", str(sequence), "--device-class", DEVICE_CLASS,
        "--probation-s", "1", "--min-samples", "5", "--key", kit.keydir / "signing.key",
        "-o", out, *staged)
    return out


def _answer(agent: AgentProcess, x: np.ndarray) -> str:
    """One client request; the release that answered it (`model_version`)."""
    r = agent.http.post(f"{agent.url}/v2/models/staged/infer", timeout=10, json={
        "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                    "data": x.ravel().tolist()}]})
    assert r.status_code == 200, r.text
    out = r.json()
    assert np.all(np.isfinite(np.asarray(out["outputs"][0]["data"], dtype=np.float64)))
    return str(out["model_version"])


def _candidate(manager: ManagerProcess, device_id: str) -> dict[str, Any] | None:
    channel = manager.api(f"/api/v1/devices/{device_id}?events=0")["channels"].get("staged")
    return (channel or {}).get("candidate")


def _deployment(manager: ManagerProcess, deployment_id: int) -> dict[str, Any]:
    """The deployment's status through the API (a poll: no process per look)."""
    return dict(manager.api(f"/api/v1/deployments/{deployment_id}"))


def test_bad_release_is_refused_in_shadow_and_its_field_input_builds_the_next(
    site: Site, manager: ManagerProcess, kit: Kit, tmp_path: Path
) -> None:
    lab = tmp_path / "lab.npz"
    np.savez(lab, input=positive(16, seed=0))
    names = ["staged-1", "staged-2"]
    agents = {name: site.device(name, manager) for name in names}
    # 1.0.0 is the NaN model's healthy twin (same weights): they agree wherever it is finite
    first = _build(kit, kit.newer, lab, "1.0.0", 1)
    manager.cli("bundle", "add", first)
    first_rollout = manager.deploy("staged:1.0.0", names, "100%")
    wait_for(lambda: _deployment(manager, first_rollout)["state"] == "completed", 60,
             "1.0.0 everywhere")

    bad = _build(kit, kit.nan, lab, "2.0.0", 2, "--shadow-requests", "20",
                 "--shadow-fraction", "1", "--capture", "disagreement,nonfinite")
    manager.cli("bundle", "add", bad)
    halting = manager.deploy("staged:2.0.0", names, "1,100%")
    canary = agents["staged-1"]
    wait_for(lambda: (_candidate(manager, "staged-1") or {}).get("stage") == "shadow", 30,
             "the canary runs 2.0.0 in shadow")
    # The manager's view of the candidate comes from the device's state; the agent's server
    # loads it on its own next look at that state. Requests sent before then are not
    # copied to the shadow, so clients keep asking until the deployment halts.
    answered: list[str] = []
    rounds = iter(range(1, 10_000))

    def halts() -> dict[str, Any] | bool:
        seed = next(rounds)
        for x in np.concatenate([positive(1, seed=seed), negative(1, seed=seed + 1)]):
            answered.append(_answer(canary, x[None, :]))
        d = _deployment(manager, halting)
        return d["state"] == "halted" and d

    halted = wait_for(halts, 30, "the deployment halts")

    assert set(answered) == {"1.0.0"}  # no client ever got an answer from 2.0.0
    assert "shadow failed" in halted["reason"]
    assert {t["device_id"]: t["state"] for t in halted["targets"]} == {
        "staged-1": "failed", "staged-2": "pending"}
    failed = [e for e in manager.events("staged-1") if e["kind"] == "shadow_failed"]
    assert len(failed) == 1 and failed[0]["figures"]["client_answers"] == 0
    assert canary.serving_version("staged") == "1.0.0"

    listed = wait_for(lambda: manager.api("/api/v1/samples?channel=staged")["samples"], 30,
                      "the captured field input reaches the manager")
    assert {(s["device_id"], s["version"]) for s in listed} == {("staged-1", "2.0.0")}
    field = tmp_path / "field.npz"
    manager.cli("samples", "export", "staged", "2.0.0", "-o", field)
    with np.load(field, allow_pickle=False) as npz:
        feeds = npz["input"]
    assert feeds.shape[1:] == (1, 8) and np.all(feeds[:, 0, 0] < 0)  # the NaN trigger
    meta = json.loads(field.with_suffix(".json").read_text())
    assert {r["reason"] for r in meta["rows"]} <= {"nonfinite", "disagreement"}

    # the next release (the healthy model rebuilt): smoke-tested on the field inputs, shadow,
    # then a ramp to 100%
    good = _build(kit, kit.newer, field, "3.0.0", 3, "--shadow-requests", "5",
                  "--shadow-fraction", "1", "--ramp", "10,50,100", "--ramp-step-requests", "3")
    manager.cli("bundle", "add", good)
    rollout = manager.deploy("staged:3.0.0", names, "1,100%")
    stages: set[str] = set()

    def ramped() -> bool:
        for agent in agents.values():
            for x in positive(10, seed=3):
                _answer(agent, x[None, :])
        # the deployment first: a check-in between the two reads may switch the candidate in
        # and release the next wave, never the other way round
        status = _deployment(manager, rollout)
        cand = _candidate(manager, "staged-1") or {}
        stages.add(str(cand.get("stage")))
        if cand.get("stage") in ("shadow", "ramp"):
            assert status["current_wave"] == 0  # a candidate is not healthy in its wave
        return status["state"] == "completed"

    wait_for(ramped, 120, "3.0.0 ramps to 100% on both devices")
    assert {a.serving_version("staged") for a in agents.values()} == {"3.0.0"}
