"""Staged activation with a real `satchel-agent run`: a technician's `install` of a release
that disagrees on field inputs is refused in shadow, 0 client answers; and a service killed
(SIGKILL, as a power cut) mid-shadow comes back serving the previous release with the
candidate judged again from the beginning."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from satchel.agent.provision import init_device
from tests.agent.staged import StagedModels, field_inputs, make_models, shadow, staged_bundle
from tests.factory.keys import Keyring
from tests.service.procs import AGENT, AgentProcess
from tests.service.waiting import wait_for


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> StagedModels:
    return make_models(tmp_path_factory.mktemp("run-models"))


def _cli(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(AGENT), "--state-dir", str(state_dir), *args],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done


def _status(state_dir: Path) -> dict[str, Any]:
    channels: dict[str, Any] = json.loads(_cli(state_dir, "status", "--json").stdout)["channels"]
    return dict(channels["vision"])


def _version(agent: AgentProcess, x: Any) -> str:
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.ravel().tolist()}]}
    r = agent.http.post(f"{agent.url}/v2/models/vision/infer", data=json.dumps(body),
                        timeout=10)
    assert r.status_code == 200, r.text
    return str(r.json()["model_version"])


def _device(tmp_path: Path, keys: Keyring, models: StagedModels) -> Path:
    state_dir = tmp_path / "state"
    init_device(state_dir, keys.root_json, "dev-1", "edge-box")
    one = staged_bundle(tmp_path / "one.satchel", keys, models.good, version="1.0.0",
                        sequence=1, activation=None)
    _cli(state_dir, "install", str(one))
    return state_dir


def test_release_refused_in_shadow_under_a_real_service_answers_no_client(
    tmp_path: Path, keys: Keyring, models: StagedModels
) -> None:
    state_dir = _device(tmp_path, keys, models)
    agent = AgentProcess(state_dir)
    try:
        two = staged_bundle(tmp_path / "two.satchel", keys, models.other, version="2.0.0",
                            sequence=2, activation=shadow(20, ramp="50,100"))
        out = _cli(state_dir, "install", str(two)).stdout
        assert "staged vision 2.0.0" in out and "shadow" in out
        assert _status(state_dir)["stage"] == "shadow"
        versions = set()
        for x in field_inputs(2000):
            versions.add(_version(agent, x))
            if _status(state_dir)["candidate"] is None:
                break
        wait_for(lambda: _status(state_dir)["candidate"] is None, what="the refusal")
        assert versions == {"1.0.0"}
        status = _status(state_dir)
        assert status["active"]["version"] == "1.0.0" and status["stage"] in ("active",
                                                                               "probation")
        history = json.loads(_cli(state_dir, "history", "--json").stdout)
        refused = [e for e in history if e.get("version") == "2.0.0"
                   and e["event"] == "refused"]
        assert refused and "agreement" in refused[-1]["reason"]
        assert refused[-1]["figures"]["client_answers"] == 0
    finally:
        agent.stop()


def test_service_killed_mid_shadow_comes_back_on_the_previous_release(
    tmp_path: Path, keys: Keyring, models: StagedModels
) -> None:
    state_dir = _device(tmp_path, keys, models)
    agent = AgentProcess(state_dir)
    try:
        two = staged_bundle(tmp_path / "two.satchel", keys, models.twin, version="2.0.0",
                            sequence=2, activation=shadow(10**6, ramp="50,100"))
        _cli(state_dir, "install", str(two))
        for x in field_inputs(2000):
            assert _version(agent, x) == "1.0.0"
            shadow_figures = _status(state_dir)["candidate"]["shadow"] or {}
            if shadow_figures.get("compared", 0) >= 5:
                break
        agent.stop(signal.SIGKILL)
        status = _status(state_dir)  # recovery runs first: nothing to undo
        assert status["active"]["version"] == "1.0.0"
        assert status["candidate"]["version"] == "2.0.0"
        agent = AgentProcess(state_dir)
        wait_for(lambda: (_status(state_dir)["candidate"]["shadow"] or {}).get("compared")
                 == 0, what="the shadow stage starting over")
        assert _status(state_dir)["candidate"]["stage"] == "shadow"
        assert _version(agent, field_inputs(1)[0]) == "1.0.0"
        text = _cli(state_dir, "status").stdout
        assert "vision: 1.0.0 (sequence 1)" in text
        assert "candidate 2.0.0 (sequence 2) in shadow:" in text
    finally:
        agent.stop()
