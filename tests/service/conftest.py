"""Fixtures of the agent service tests: real devices (initialised state dirs, real
installer, real ONNX models), a real manager (the Flask app over HTTP on 127.0.0.1, SQLite),
and a TCP proxy that cuts connections, for the network's bad days."""

from __future__ import annotations

import contextlib
import shutil
import socket
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

from satchel.agent.config import AgentConfig
from satchel.agent.provision import init_device
from satchel.bundles.keys import SigningKey
from satchel.bundles.manifest import (
    HealthPolicy,
)
from tests.factory import Keyring, make_keys, smoke_tested_bundle
from tests.models import make_mlp_weights, onnx_mlp, sample_inputs

IN_DIM, HIDDEN, OUT_DIM = 8, 16, 3
CHANNEL = "vision"
DEVICE_CLASS = "edge-box"
AGENT = Path(sys.executable).with_name("satchel-agent")
# Quick tries for tests: no long waits between retries, short timeouts.
FAST = AgentConfig(
    connect_timeout_s=2.0, read_timeout_s=5.0, retry_attempts=3, backoff_base_s=0.01,
    backoff_max_s=0.05, poll_interval_s=0.2, download_stalls=4, progress_log_s=0.0,
    usb_scan_interval_s=0.1,
)
SHORT = HealthPolicy(probation_s=0.0, min_samples=5)  # judged at once: no probation


# --- models and bundles -------------------------------------------------------------------


@dataclass(frozen=True)
class Models:
    good: Path
    other: Path
    big: Path  # a few MB, so a download can be cut in the middle


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    d = tmp_path_factory.mktemp("service-models")
    return Models(
        good=onnx_mlp(make_mlp_weights(IN_DIM, HIDDEN, OUT_DIM, seed=1), d / "good.onnx"),
        other=onnx_mlp(make_mlp_weights(IN_DIM, HIDDEN, OUT_DIM, seed=2), d / "other.onnx"),
        big=onnx_mlp(make_mlp_weights(IN_DIM, 65536, OUT_DIM, seed=3), d / "big.onnx"),
    )


def positive_inputs(n: int, seed: int = 0) -> np.ndarray:
    x = sample_inputs(IN_DIM, n, seed)
    x[:, 0] = np.abs(x[:, 0]) + 0.1
    return x


def build_bundle(
    out: Path,
    keys: Keyring,
    model_file: Path,
    *,
    version: str,
    sequence: int,
    channel: str = CHANNEL,
    policy: HealthPolicy = SHORT,
    signer: SigningKey | None = None,
    wrong_reference: bool = False,
) -> Path:
    """A signed bundle of `model_file` with a smoke test it passes on positive inputs (unless
    `wrong_reference`, which ships reference outputs it cannot match)."""
    return smoke_tested_bundle(
        out, signer or keys.signing, model_file, positive_inputs(4, seed=sequence),
        channel=channel, version=version, sequence=sequence, policy=policy,
        wrong_reference=wrong_reference,
    )


# --- devices ------------------------------------------------------------------------------


@pytest.fixture
def keys(tmp_path: Path) -> Keyring:
    return make_keys(tmp_path)


@dataclass
class Device:
    state_dir: Path
    device_id: str
    keys: Keyring
    work: Path

    def bundle(self, model: Path, version: str, sequence: int, **kwargs: Any) -> Path:
        return build_bundle(self.work / f"{version}-{sequence}.satchel", self.keys, model,
                            version=version, sequence=sequence, **kwargs)

    def cli(self, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
        """Run `satchel-agent --state-dir STATE ARGS...` for real."""
        done = subprocess.run(
            [str(AGENT), "--state-dir", str(self.state_dir), *args],
            capture_output=True, text=True, timeout=120, check=False,
            env={**_clean_env(), **env},
        )
        if check:
            assert done.returncode == 0, done.stderr
        return done


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("SATCHEL_AGENT_")}


def make_device(tmp_path: Path, keys: Keyring, device_id: str = "dev-1") -> Device:
    state_dir = tmp_path / device_id / "state"
    init_device(state_dir, keys.root_json, device_id, DEVICE_CLASS)
    work = tmp_path / device_id / "work"
    work.mkdir(parents=True)
    return Device(state_dir, device_id, keys, work)


@pytest.fixture
def device(tmp_path: Path, keys: Keyring) -> Device:
    return make_device(tmp_path, keys)


# --- a real manager -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from satchel.manager import db as database
    from satchel.manager.config import load_config

    data_dir = tmp_path_factory.mktemp("service-db")
    database.upgrade(load_config(data_dir=data_dir, database_url=""))
    return data_dir / "satchel.db"


class Manager:
    """The manager app served over HTTP on 127.0.0.1, driven through its REST API."""

    def __init__(self, data_dir: Path, keys: Keyring) -> None:
        from werkzeug.serving import make_server

        from satchel.manager.app import create_app
        from satchel.manager.services import tokens, trust

        self.app = create_app({"data_dir": data_dir, "database_url": "",
                               "log_requests": False, "poll_interval_s": 0.2,
                               "poll_jitter": 0.0, "TESTING": True})
        db = self.app.extensions["satchel"].db
        db.run(lambda s: trust.import_roots(s, [keys.root_json]))
        self.admin = {"Authorization": "Bearer "
                      + db.run(lambda s: tokens.create_admin_token(s, "tests")).token}
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.http = requests.Session()
        self._thread = threading.Thread(
            target=lambda: self.server.serve_forever(poll_interval=0.05), daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self._thread.join(10)
        self.server.server_close()
        self.http.close()
        self.app.extensions["satchel"].db.dispose()

    def call(self, method: str, path: str, expect: int = 200, **kwargs: Any) -> Any:
        r = self.http.request(method, self.url + path, headers=self.admin, timeout=30,
                              **kwargs)
        assert r.status_code == expect, f"{method} {path}: {r.status_code} {r.text}"
        return r.json() if r.content else None

    def add_bundle(self, path: Path) -> str:
        return str(self.call("POST", "/api/v1/bundles", 201, data=path.read_bytes())["sha256"])

    def enroll_token(self) -> str:
        return str(self.call("POST", "/api/v1/tokens", 201, json={"kind": "enroll"})["token"])

    def deploy(self, bundle: str, devices: list[str], waves: str = "100%") -> int:
        body = {"bundle": bundle, "devices": devices, "waves": waves}
        return int(self.call("POST", "/api/v1/deployments", 201, json=body)["id"])

    def deployment(self, deployment_id: int) -> dict[str, Any]:
        return dict(self.call("GET", f"/api/v1/deployments/{deployment_id}"))

    def events(self, device_id: str) -> list[dict[str, Any]]:
        return list(self.call("GET", f"/api/v1/devices/{device_id}/events?limit=1000")["events"])

    def device(self, device_id: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/api/v1/devices/{device_id}"))

    def import_root(self, data: bytes) -> None:
        self.call("POST", "/api/v1/trust", data=data)


@pytest.fixture
def manager(tmp_path: Path, keys: Keyring, migrated_db: Path) -> Iterator[Manager]:
    data_dir = tmp_path / "manager"
    data_dir.mkdir()
    shutil.copyfile(migrated_db, data_dir / "satchel.db")
    m = Manager(data_dir, keys)
    yield m
    m.close()


# --- network faults -----------------------------------------------------------------------


class DropProxy:
    """A TCP proxy on 127.0.0.1 that cuts the first `drops` connections whose answer grows
    past `after_bytes` (a download), in the middle of the answer; the rest pass through."""

    def __init__(self, target_port: int, after_bytes: int, drops: int) -> None:
        self.target_port = target_port
        self.after_bytes = after_bytes
        self.drops_left = drops
        self.cut = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:
            client.close()
            return
        threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
        self._pump(upstream, client, True)

    def _pump(self, source: socket.socket, sink: socket.socket, answer: bool) -> None:
        sent = 0
        try:
            while chunk := source.recv(65536):
                if answer and sent + len(chunk) > self.after_bytes and self._take_drop():
                    sink.sendall(chunk[: max(0, self.after_bytes - sent)])
                    break
                sink.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def _take_drop(self) -> bool:
        with self._lock:
            if self.drops_left <= 0:
                return False
            self.drops_left -= 1
            self.cut += 1
            return True


def wait_for(condition: Callable[[], Any], timeout_s: float = 20.0, what: str = "") -> Any:
    """Poll `condition` until it returns something true; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s} s: {what or condition}")
        time.sleep(0.05)
