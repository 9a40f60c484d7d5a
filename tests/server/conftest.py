"""Fixtures for the inference server: a real device state (initialised, bundles installed by
the real installer with real smoke tests), real models, and a real server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from satchel.agent.install.installer import install
from satchel.agent.provision import init_device
from satchel.agent.server import AgentServer, Event, MemoryEventSink, ServerConfig
from satchel.agent.state import DeviceState, Release
from satchel.bundles.manifest import (
    HealthPolicy,
)
from tests.factory import Keyring, make_keys, smoke_tested_bundle
from tests.models import make_mlp_weights, onnx_mlp, sample_inputs, tflite_mlp

IN_DIM, HIDDEN, OUT_DIM = 8, 16, 3
CHANNEL = "vision"
# Quick loops for tests: poll the state often, write health history at once.
FAST = ServerConfig(poll_interval_s=0.05, monitor_interval_s=0.2, health_flush_s=0.0)
LENIENT = HealthPolicy(probation_s=600.0, min_samples=16, max_error_rate=0.5, max_nan_rate=0.0)


@dataclass(frozen=True)
class Models:
    good: Path  # ONNX MLP
    other: Path  # ONNX MLP, different weights (a newer release)
    nan: Path  # ONNX MLP whose outputs are NaN when the first feature is negative
    tflite: Path  # TFLite MLP, float32


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    d = tmp_path_factory.mktemp("models")
    w1 = make_mlp_weights(IN_DIM, HIDDEN, OUT_DIM, seed=1)
    w2 = make_mlp_weights(IN_DIM, HIDDEN, OUT_DIM, seed=2)
    return Models(
        good=onnx_mlp(w1, d / "good.onnx"),
        other=onnx_mlp(w2, d / "other.onnx"),
        nan=onnx_mlp(w2, d / "nan.onnx", nan_for_negative_first_feature=True),
        tflite=tflite_mlp(w1, d / "good.tflite"),
    )


def positive_inputs(n: int, seed: int = 0) -> np.ndarray:
    """Sample rows whose first feature is positive (the NaN model stays finite on them)."""
    x = sample_inputs(IN_DIM, n, seed)
    x[:, 0] = np.abs(x[:, 0]) + 0.1
    return x


def negative_inputs(n: int, seed: int = 0) -> np.ndarray:
    x = sample_inputs(IN_DIM, n, seed)
    x[:, 0] = -np.abs(x[:, 0]) - 0.1
    return x


def build_bundle(
    out: Path,
    keys: Keyring,
    model_file: Path,
    *,
    version: str,
    sequence: int,
    channel: str = CHANNEL,
    policy: HealthPolicy = LENIENT,
) -> Path:
    """A signed bundle of `model_file` with a smoke test it passes (positive inputs)."""
    return smoke_tested_bundle(
        out, keys.signing, model_file, positive_inputs(4, seed=sequence),
        channel=channel, version=version, sequence=sequence, policy=policy,
    )


@dataclass
class Device:
    """A real, initialised device state and a way to install releases on it."""

    state_dir: Path
    keys: Keyring
    work: Path

    @property
    def state(self) -> DeviceState:
        return DeviceState(self.state_dir)

    def install(
        self,
        model_file: Path,
        *,
        version: str,
        sequence: int,
        channel: str = CHANNEL,
        policy: HealthPolicy = LENIENT,
    ) -> Release:
        bundle = build_bundle(
            self.work / f"{channel}-{sequence}.satchel", self.keys, model_file,
            version=version, sequence=sequence, channel=channel, policy=policy,
        )
        return install(self.state_dir, bundle).release

    def active(self, channel: str = CHANNEL) -> Release | None:
        return self.state.active_release(channel)


@pytest.fixture
def device(tmp_path: Path) -> Device:
    keys = make_keys(tmp_path)
    state_dir = tmp_path / "state"
    init_device(state_dir, keys.root_json, "dev-1", "edge-box")
    work = tmp_path / "work"
    work.mkdir()
    return Device(state_dir, keys, work)


@pytest.fixture
def events() -> MemoryEventSink:
    return MemoryEventSink()


ServerFactory = Callable[..., AgentServer]


@pytest.fixture
def start_server(device: Device, events: MemoryEventSink) -> Iterator[ServerFactory]:
    """Start an AgentServer on 127.0.0.1 (port 0) and a Unix socket; stopped at teardown."""
    started: list[AgentServer] = []

    def start(**kwargs: Any) -> AgentServer:
        options: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "unix_socket": device.state_dir / "agent.sock",
            "event_sink": events,
            "config": FAST,
        }
        options.update(kwargs)
        server = AgentServer(device.state_dir, **options).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll `condition` until true; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_s} s")
        time.sleep(0.01)


def infer_body(x: np.ndarray, *, name: str = "input", **extra: Any) -> bytes:
    doc = {
        "inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32",
                    "data": x.ravel().tolist()}],
        **extra,
    }
    return json.dumps(doc).encode()


def unix_request(
    path: Path, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request over a Unix socket, by hand: (status, headers, body)."""
    head = [f"{method} {target} HTTP/1.1", "Host: localhost", f"Content-Length: {len(body)}",
            "Connection: close"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    header_blob, _, payload = raw.partition(b"\r\n\r\n")
    lines = header_blob.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    parsed = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        parsed[key.strip().lower()] = value.strip()
    return status, parsed, payload


class LoadThreads:
    """Threads sending infer requests in a loop; counts successes and keeps failures."""

    def __init__(self, url: str, body: bytes, threads: int = 3) -> None:
        import requests

        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.ok = 0
        self.failures: list[str] = []
        self.versions: set[str] = set()
        self._threads = [
            threading.Thread(target=self._loop, args=(requests.Session(), url, body), daemon=True)
            for _ in range(threads)
        ]

    def _loop(self, session: Any, url: str, body: bytes) -> None:
        while not self._stop.is_set():
            try:
                response = session.post(url, data=body, timeout=10)
                if response.status_code == 200:
                    version = response.json()["model_version"]
                    with self._lock:
                        self.ok += 1
                        self.versions.add(version)
                else:
                    with self._lock:
                        self.failures.append(f"{response.status_code} {response.text[:200]}")
            except Exception as e:  # noqa: BLE001 - any failure is what the test counts
                with self._lock:
                    self.failures.append(repr(e))

    def __enter__(self) -> LoadThreads:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text as {(name, labels): value}; asserts every sample line is
    `name{labels} value` (comments aside)."""
    import re

    sample = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)')
    label = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    parsed = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = sample.fullmatch(line)
        assert match, f"not a metrics sample line: {line!r}"
        labels = frozenset(label.findall(match[3] or ""))
        parsed[(match[1], labels)] = float(match[4])
    return parsed


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 when none)."""
    wanted = set(labels.items())
    return sum(
        value for (n, have), value in parse_metrics(text).items()
        if n == name and wanted <= have
    )


def one_event(events: MemoryEventSink, kind: str) -> Event:
    """The one event of `kind`, waiting for it: the monitor reports after it has swapped."""
    wait_for(lambda: bool(events.of_kind(kind)))
    (event,) = events.of_kind(kind)
    return event
