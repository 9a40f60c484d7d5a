"""Attacks on the device's inference server from a local client on 127.0.0.1: a real
`AgentServer` over a real device state with real ONNX models, driven over real sockets.

A client must not be able to roll back a good release by what it feeds the model, nor to
exhaust the server's threads by holding connections open; and clients within the bound keep
being served while it tries.
"""

from __future__ import annotations

import contextlib
import math
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import requests

from satchel.agent.health.stats import ReleaseKey
from satchel.agent.server import AgentServer, MemoryEventSink
from satchel.bundles.events import ROLLED_BACK
from satchel.bundles.manifest import HealthPolicy
from tests.factory.keys import Keyring
from tests.factory.model_makers import make_mlp_weights, onnx_mlp
from tests.factory.trees import tree_snapshot
from tests.reliability.figures import Recorder
from tests.server.clients import infer_body
from tests.server.devices import (
    CHANNEL,
    HIDDEN,
    IN_DIM,
    OUT_DIM,
    Device,
    make_device,
    negative_inputs,
    positive_inputs,
)
from tests.server.servers import FAST, ServerFactory, one_event, server_factory, wait_for

AREA = "inference server"
STRICT = HealthPolicy(probation_s=600.0, min_samples=16, max_error_rate=0.0, max_nan_rate=0.0)
# What serving may change in a state dir: the health history and the service's own files.
SERVING_FILES = ("health", "agent.sock", "service-starts.json", "lock")


@pytest.fixture(scope="module")
def mlps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inference-models")
    return {
        "good": onnx_mlp(make_mlp_weights(IN_DIM, HIDDEN, OUT_DIM, seed=1), d / "good.onnx"),
        "other": onnx_mlp(make_mlp_weights(IN_DIM, HIDDEN, OUT_DIM, seed=2), d / "other.onnx"),
        "nan": onnx_mlp(make_mlp_weights(IN_DIM, HIDDEN, OUT_DIM, seed=2), d / "nan.onnx",
                        nan_for_negative_first_feature=True),
    }


# The inference server's fixtures, as tests/server has them: a real device state with `keys`'
# trust root, and real servers on 127.0.0.1 reporting to `events`.
@pytest.fixture
def device(tmp_path: Path, keys: Keyring) -> Device:
    return make_device(tmp_path, keys)


@pytest.fixture
def events() -> MemoryEventSink:
    return MemoryEventSink()


@pytest.fixture
def start_server(device: Device, events: MemoryEventSink) -> Iterator[ServerFactory]:
    with server_factory(device, events) as start:
        yield start


def _infer(server: AgentServer, x: np.ndarray) -> requests.Response:
    return requests.post(f"{server.url}/v2/models/{CHANNEL}/infer", data=infer_body(x),
                         timeout=10)


def _nan_inputs(n: int, seed: int) -> np.ndarray:
    x = positive_inputs(n, seed)
    x[:, seed % IN_DIM] = np.nan
    return x


def _state_files(device: Device) -> dict[str, tuple[str, int, bytes]]:
    return {
        path: entry for path, entry in tree_snapshot(device.state_dir).items()
        if not path.startswith(SERVING_FILES)
    }


# --- NaN in, NaN out: the client's fault, not the model's -----------------------------------


def test_nan_inputs_during_probation_do_not_roll_back_a_good_release(
    device: Device, mlps: dict[str, Path], start_server: ServerFactory,
    events: MemoryEventSink, measured: Recorder,
) -> None:
    device.install(mlps["good"], version="1.0.0", sequence=1, policy=STRICT)
    device.install(mlps["other"], version="2.0.0", sequence=2, policy=STRICT)
    server = start_server(unix_socket=None)  # a socket file cannot be hashed
    before = _state_files(device)
    attacks = 50
    for i in range(attacks):
        response = _infer(server, _nan_inputs(1, seed=i))
        assert response.status_code == 200  # NaN in, NaN out: an answer, not an error
        assert not all(math.isfinite(v) for v in response.json()["outputs"][0]["data"])
    time.sleep(FAST.judge_batch_s * 4)  # let the poked monitor judge, as it would
    assert server.monitor.check() == []
    assert events.of_kind(ROLLED_BACK) == []
    active = device.active()
    assert active is not None and (active.version, active.sequence) == ("2.0.0", 2)
    assert _state_files(device) == before  # no release touched, no sequence burnt
    totals = server.book.totals(ReleaseKey(CHANNEL, "2.0.0", 2))
    assert (totals.count, totals.nonfinite, totals.nonfinite_inputs) == (attacks, 0, attacks)
    figures = totals.figures()
    assert (figures.nan, figures.nonfinite_inputs) == (0, attacks)
    assert _infer(server, positive_inputs(1)).json()["model_version"] == "2.0.0"
    measured.row(AREA, "NaN inputs from a local client during probation",
                 attacks, "survived: release kept, counted as nonfinite_inputs",
                 nonfinite_inputs=totals.nonfinite_inputs)


def test_nan_inputs_do_not_hide_a_model_that_turns_finite_inputs_into_nan(
    device: Device, mlps: dict[str, Path], start_server: ServerFactory,
    events: MemoryEventSink, measured: Recorder,
) -> None:
    device.install(mlps["good"], version="1.0.0", sequence=1, policy=STRICT)
    device.install(mlps["nan"], version="2.0.0", sequence=2, policy=STRICT)
    server = start_server()
    for i in range(50):  # the client's NaN first: neither blamed nor diluting the blame
        _infer(server, _nan_inputs(1, seed=i))
    for i in range(STRICT.min_samples):
        assert _infer(server, negative_inputs(1, seed=i)).status_code == 200
    rolled = one_event(events, ROLLED_BACK)
    assert rolled.reason.startswith("health: nan rate ")
    assert (rolled.version, rolled.details["to_version"]) == ("2.0.0", "1.0.0")
    assert rolled.details["stats"]["nonfinite_inputs"] == 50
    assert rolled.details["stats"]["nonfinite"] >= 1
    active = device.active()
    assert active is not None and active.version == "1.0.0"
    measured.row(AREA, "model turning finite inputs into NaN, behind 50 NaN-input requests",
                 66, "rolled back: nan rate breach", reason=rolled.reason)


# --- holding connections open ---------------------------------------------------------------


def _connect(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address, timeout=10)
    sock.settimeout(10)
    return sock


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


@pytest.fixture
def held() -> Iterator[list[socket.socket]]:
    """Client sockets a test opens; all closed at teardown."""
    socks: list[socket.socket] = []
    yield socks
    for sock in socks:
        sock.close()


def test_idle_connections_cannot_exhaust_the_servers_threads(
    device: Device, mlps: dict[str, Path], start_server: ServerFactory,
    held: list[socket.socket], measured: Recorder,
) -> None:
    device.install(mlps["good"], version="1.0.0", sequence=1)
    bound, idle_s, attacks = 32, 1.0, 500
    server = start_server(config=replace(FAST, max_connections=bound, idle_timeout_s=idle_s))
    host, port = server.url.removeprefix("http://").split(":")
    baseline = threading.active_count()
    peak = baseline
    for _ in range(attacks):
        held.append(_connect((host, int(port))))
        peak = max(peak, threading.active_count())
    time.sleep(0.2)  # let the listener take the last ones
    peak = max(peak, threading.active_count())
    assert server.connections.held <= bound
    assert peak <= baseline + bound + 2
    started = time.perf_counter()
    response = _infer(server, positive_inputs(1))
    latency_s = time.perf_counter() - started
    assert response.status_code == 200 and response.json()["model_version"] == "1.0.0"
    assert latency_s < 2.0
    wait_for(lambda: server.connections.held == 0, timeout_s=idle_s + 5)
    assert all(_closed_by_server(sock) for sock in held)
    wait_for(lambda: threading.active_count() <= baseline, timeout_s=5)
    measured.row(AREA, f"{attacks} idle connections on 127.0.0.1 (bound {bound})", attacks,
                 f"survived: peak {peak - baseline} extra threads, a request answered in "
                 f"{latency_s * 1000:.0f} ms", extra_threads=peak - baseline,
                 latency_ms=round(latency_s * 1000, 1))


def test_connections_past_the_bound_wait_while_every_slot_is_busy(
    start_server: ServerFactory, held: list[socket.socket], measured: Recorder,
) -> None:
    bound, idle_s = 8, 1.0
    server = start_server(config=replace(FAST, max_connections=bound, idle_timeout_s=idle_s))
    host, port = server.url.removeprefix("http://").split(":")
    baseline = threading.active_count()
    for _ in range(bound * 4):  # each starts a request and never finishes it: busy, not idle
        sock = _connect((host, int(port)))
        sock.sendall(b"G")
        held.append(sock)
    time.sleep(0.2)
    assert server.connections.held == bound
    assert threading.active_count() <= baseline + bound + 2
    started = time.perf_counter()
    response = requests.get(f"{server.url}/v2/health/live", timeout=30)
    waited_s = time.perf_counter() - started
    assert response.status_code == 200
    # The half-sent requests time out after idle_s; the backlog (3 rounds of 8) then the
    # request are served in turn, never more than `bound` at once.
    assert waited_s < 4 * idle_s + 3
    assert threading.active_count() <= baseline + bound + 2
    measured.row(AREA, f"{bound * 4} half-sent requests holding every slot (bound {bound})",
                 bound * 4, f"survived: a request waited {waited_s:.1f} s in the backlog",
                 waited_s=round(waited_s, 2))


def test_idle_keep_alive_connection_is_closed_after_the_idle_timeout(
    start_server: ServerFactory, held: list[socket.socket], measured: Recorder,
) -> None:
    idle_s = 0.5
    server = start_server(config=replace(FAST, idle_timeout_s=idle_s))
    host, port = server.url.removeprefix("http://").split(":")
    silent = _connect((host, int(port)))
    kept = _connect((host, int(port)))
    held.extend([silent, kept])
    kept.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    assert kept.recv(4096).startswith(b"HTTP/1.1 200")
    started = time.perf_counter()
    assert _closed_by_server(kept)
    kept_s = time.perf_counter() - started
    assert _closed_by_server(silent)
    assert idle_s * 0.8 <= kept_s < idle_s + 2
    wait_for(lambda: server.connections.held == 0)
    measured.row(AREA, "idle keep-alive and silent connections", 2,
                 f"closed after {kept_s:.2f} s (idle timeout {idle_s} s)",
                 closed_after_s=round(kept_s, 2))


def test_slow_loris_requests_cannot_hold_every_slot_past_the_read_deadline(
    start_server: ServerFactory, held: list[socket.socket], measured: Recorder,
) -> None:
    bound, deadline_s = 4, 1.0
    server = start_server(config=replace(FAST, max_connections=bound, idle_timeout_s=5.0,
                                         read_deadline_s=deadline_s))
    host, port = server.url.removeprefix("http://").split(":")
    for _ in range(bound):  # each sends a header line, then trickles a byte within idle time
        sock = _connect((host, int(port)))
        sock.sendall(b"POST /v2/models/kws/infer HTTP/1.1\r\nHost: x\r\n")
        held.append(sock)
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(0.3):
            for sock in held:
                with contextlib.suppress(OSError):  # closed by the server: as intended
                    sock.sendall(b"X")

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        time.sleep(0.3)
        assert server.connections.held == bound
        started = time.perf_counter()
        response = requests.get(f"{server.url}/v2/health/live", timeout=30)
        waited_s = time.perf_counter() - started
    finally:
        stop.set()
        trickler.join(5)
    assert response.status_code == 200
    assert waited_s < deadline_s + 3  # without the deadline: until the client gives up
    measured.row(AREA, f"{bound} slow-loris requests trickling a byte every 0.3 s (bound "
                 f"{bound})", bound, f"survived: a request waited {waited_s:.1f} s "
                 f"(read deadline {deadline_s} s)", waited_s=round(waited_s, 2))
