"""End-to-end fixtures: everything a real site runs, as real processes on 127.0.0.1.

A manager started with `satchel serve` (fresh data dir, `db upgrade`, `trust import`, an
admin token), bundles made by `satchel bundle build` from models of `manager/modelgen.py`,
and devices that are `satchel-agent init`ed, enrolled and `run`. Check-ins every half
second (SATCHEL_POLL_INTERVAL_S on the manager, SATCHEL_AGENT_POLL_S on the agents) and
short probation windows keep the whole suite within a couple of minutes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from tests.models import INPUT_NAME, make_mlp_weights, onnx_mlp, sample_inputs
from tests.service.procs import AgentProcess

BIN = Path(sys.executable).parent
SATCHEL, AGENT = BIN / "satchel", BIN / "satchel-agent"
IN_DIM, HIDDEN, OUT_DIM = 8, 16, 3
DEVICE_CLASS = "edge-box"
POLL_S = "0.5"  # seconds between check-ins, both sides
AGENT_ENV = {"SATCHEL_AGENT_POLL_S": POLL_S, "SATCHEL_AGENT_BACKOFF_BASE_S": "0.2",
             "SATCHEL_AGENT_BACKOFF_MAX_S": "1", "SATCHEL_AGENT_CONNECT_TIMEOUT_S": "2",
             "SATCHEL_AGENT_READ_TIMEOUT_S": "10"}


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SATCHEL_")}
    env.update(extra or {})
    return env


def run(*args: str | Path, check: bool = True, env: dict[str, str] | None = None,
        ) -> subprocess.CompletedProcess[str]:
    """Run a command for real; with `check`, fail the test (showing stderr) unless it
    exits 0."""
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                          timeout=180, check=False, env=_env(env))
    if check:
        assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str,
             every_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s} s: {what}")
        time.sleep(every_s)


# --- keys, models, bundles ----------------------------------------------------------------


@dataclass(frozen=True)
class Kit:
    """What the admin made once for the whole suite."""

    root: Path  # session directory
    keydir: Path
    good: Path  # ONNX models
    newer: Path
    nan: Path
    big: Path
    v1: Path  # bundles: vision 1.0.0 (sequence 100), good, probation 1 s
    v1_1: Path  # vision 1.1.0 (150), another good model
    bad: Path  # vision 2.0.0 (200): NaN for a negative first feature; probation 120 s
    big_bundle: Path  # vision 3.0.0 (300), a few MB

    def bundle(self, name: str) -> Path:
        return {"v1": self.v1, "v1_1": self.v1_1, "bad": self.bad,
                "big": self.big_bundle}[name]


def positive(n: int, seed: int) -> np.ndarray:
    x = sample_inputs(IN_DIM, n, seed)
    x[:, 0] = np.abs(x[:, 0]) + 0.1
    return x


def negative(n: int, seed: int) -> np.ndarray:
    x = sample_inputs(IN_DIM, n, seed)
    x[:, 0] = -np.abs(x[:, 0]) - 0.1
    return x


def _build(kit_dir: Path, keydir: Path, model: Path, samples: Path, version: str,
           sequence: int, probation_s: float) -> Path:
    out = kit_dir / f"vision-{version}.satchel"
    run(SATCHEL, "bundle", "build", "--name", "vision", "--version", version, "--model", model,
        "--samples", samples, "--sequence", str(sequence), "--device-class", DEVICE_CLASS,
        "--probation-s", str(probation_s), "--min-samples", "5", "--max-nan-rate", "0",
        "--key", keydir / "signing.key", "-o", out)
    return out


@pytest.fixture(scope="session")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    d = tmp_path_factory.mktemp("e2e-kit")
    keydir = d / "keys"
    run(SATCHEL, "keys", "init", keydir)
    w1 = make_mlp_weights(IN_DIM, HIDDEN, OUT_DIM, seed=1)
    w2 = make_mlp_weights(IN_DIM, HIDDEN, OUT_DIM, seed=2)
    good, newer = onnx_mlp(w1, d / "good.onnx"), onnx_mlp(w2, d / "newer.onnx")
    nan = onnx_mlp(w2, d / "nan.onnx", nan_for_negative_first_feature=True)
    big = onnx_mlp(make_mlp_weights(IN_DIM, 65536, OUT_DIM, seed=3), d / "big.onnx")
    samples = d / "samples.npz"
    # the NaN model passes its smoke test on these: their first feature is positive
    np.savez(samples, **{INPUT_NAME: positive(16, seed=0)})  # type: ignore[arg-type]
    return Kit(
        root=d, keydir=keydir, good=good, newer=newer, nan=nan, big=big,
        v1=_build(d, keydir, good, samples, "1.0.0", 100, 1.0),
        v1_1=_build(d, keydir, newer, samples, "1.1.0", 150, 1.0),
        bad=_build(d, keydir, nan, samples, "2.0.0", 200, 120.0),
        big_bundle=_build(d, keydir, big, samples, "3.0.0", 300, 1.0),
    )


def expected_outputs(model: Path, x: np.ndarray) -> np.ndarray:
    """What the model itself predicts, run in this process."""
    from satchel.agent.runtimes import get_runtime

    loaded = get_runtime("onnxruntime").load(model)
    (out,) = loaded.run({loaded.inputs[0].name: x.astype(np.float32)}).values()
    return np.asarray(out)


# --- the manager --------------------------------------------------------------------------


class ManagerProcess:
    """`satchel serve` on 127.0.0.1 over its own data dir; stop and start it again on the
    same port to take it away from the fleet for a while."""

    def __init__(self, data_dir: Path, kit: Kit) -> None:
        self.data_dir = data_dir
        self.kit = kit
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self.cli("db", "upgrade")
        self.cli("trust", "import", kit.keydir / "root.json")
        self.admin = self.cli("token", "create", "--admin").stdout.strip().splitlines()[-1]
        self.added: set[str] = set()
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(SATCHEL, "--data-dir", self.data_dir, *args, check=check)

    def start(self) -> None:
        with open(self.data_dir / "serve.log", "ab") as log:
            self.proc = subprocess.Popen(
                [str(SATCHEL), "--data-dir", str(self.data_dir), "serve", "--port",
                 str(self.port)],
                stdout=subprocess.PIPE, stderr=log, text=True,
                env=_env({"SATCHEL_POLL_INTERVAL_S": POLL_S}),
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert "listening on" in line, f"satchel serve did not start: {line!r}"
        self.port = int(line.split("listening on ")[1].split()[0].rsplit(":", 1)[1])
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # keep it drained

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def api(self, path: str) -> Any:
        r = requests.get(self.url + path, headers={"Authorization": f"Bearer {self.admin}"},
                         timeout=30)
        assert r.status_code == 200, f"{path}: {r.status_code} {r.text}"
        return r.json()

    def add(self, bundle: str) -> None:
        if bundle not in self.added:
            self.cli("bundle", "add", self.kit.bundle(bundle))
            self.added.add(bundle)

    def deploy(self, ref: str, devices: list[str], waves: str) -> int:
        args = ["deploy", "create", "--bundle", ref, "--waves", waves]
        for d in devices:
            args += ["--device", d]
        return int(self.cli(*args).stdout.strip().splitlines()[-1])

    def deployment(self, deployment_id: int) -> dict[str, Any]:
        return dict(json.loads(self.cli("deploy", "status", str(deployment_id),
                                        "--json").stdout))

    def events(self, device_id: str) -> list[dict[str, Any]]:
        return list(self.api(f"/api/v1/devices/{device_id}/events?limit=1000")["events"])

    def device(self, device_id: str) -> dict[str, Any]:
        return dict(json.loads(self.cli("device", "show", device_id, "--json").stdout))


@pytest.fixture(scope="session")
def manager(kit: Kit, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagerProcess]:
    m = ManagerProcess(tmp_path_factory.mktemp("e2e-manager"), kit)
    yield m
    m.stop()


# --- devices ------------------------------------------------------------------------------


@dataclass
class Site:
    """Devices of one test: initialised, enrolled, running; all stopped at the end."""

    root: Path
    kit: Kit
    agents: list[AgentProcess]

    def init(self, device_id: str) -> Path:
        state = self.root / device_id
        run(AGENT, "--state-dir", state, "init", "--trust", self.kit.keydir / "root.json",
            "--device-id", device_id, "--device-class", DEVICE_CLASS)
        return state

    def enroll(self, state: Path, manager: ManagerProcess, url: str | None = None) -> None:
        token = manager.cli("token", "create", "--enroll").stdout.strip().splitlines()[-1]
        run(AGENT, "--state-dir", state, "enroll", "--manager", url or manager.url,
            "--token", token, env=AGENT_ENV)

    def start(self, state: Path, *args: str) -> AgentProcess:
        agent = AgentProcess(state, *args, env=AGENT_ENV)
        self.agents.append(agent)
        return agent

    def device(self, device_id: str, manager: ManagerProcess,
               url: str | None = None) -> AgentProcess:
        state = self.init(device_id)
        self.enroll(state, manager, url)
        return self.start(state)

    def agent_cli(self, state: Path, *args: str | Path,
                  check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(AGENT, "--state-dir", state, *args, check=check, env=AGENT_ENV)


@pytest.fixture
def site(tmp_path: Path, kit: Kit) -> Iterator[Site]:
    s = Site(tmp_path, kit, [])
    yield s
    for agent in s.agents:
        code = agent.stop()
        assert code == 0, f"agent exited with {code}:\n{agent.log}"
        assert "Traceback" not in agent.log, agent.log
