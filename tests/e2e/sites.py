"""A real site for the end-to-end tests: `satchel serve` as a process, and devices that are
`satchel-agent init`ed, enrolled and `run`."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from tests.e2e.commands import AGENT, AGENT_ENV, POLL_S, SATCHEL, run, satchel_env
from tests.e2e.kit import DEVICE_CLASS, Kit
from tests.service.procs import AgentProcess


class ManagerProcess:
    """`satchel serve` on 127.0.0.1 over its own data dir; stop and start it again on the
    same port to take it away from the fleet for a while."""

    def __init__(self, data_dir: Path, kit: Kit, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.kit = kit
        self.env = env or {}  # settings of every command and of the server (an S3 store)
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
        return run(SATCHEL, "--data-dir", self.data_dir, *args, check=check, env=self.env)

    def start(self) -> None:
        with open(self.data_dir / "serve.log", "ab") as log:
            self.proc = subprocess.Popen(
                [str(SATCHEL), "--data-dir", str(self.data_dir), "serve", "--port",
                 str(self.port)],
                stdout=subprocess.PIPE, stderr=log, text=True,
                env=satchel_env({"SATCHEL_POLL_INTERVAL_S": POLL_S, **self.env}),
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
