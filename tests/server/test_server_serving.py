"""The event-loop server and its inference pool: HTTP/1.1 as clients use it (pipelining,
100-continue, HTTP/1.0, oversized heads), and batching that answers each request what it
would get alone and counts each in its release's health."""

from __future__ import annotations

import json
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
import requests

from satchel.agent.health.stats import ReleaseKey
from satchel.agent.runtimes.base import TensorSpec
from satchel.agent.server import AgentServer
from satchel.agent.server.inference import InferCall, batchable
from satchel.agent.server.registry import ServingModel
from tests.factory.model_makers import make_mlp_weights, mlp_forward
from tests.server.clients import infer_body
from tests.server.devices import CHANNEL, HIDDEN, IN_DIM, OUT_DIM, Device, Models, positive_inputs
from tests.server.servers import FAST, ServerFactory, wait_for

WEIGHTS_1 = make_mlp_weights(IN_DIM, HIDDEN, OUT_DIM, seed=1)
INFER = f"/v2/models/{CHANNEL}/infer"
COUNTERS = ("count", "errors", "nonfinite", "nonfinite_inputs")


@pytest.fixture
def server(device: Device, models: Models, start_server: ServerFactory) -> AgentServer:
    device.install(models.good, version="1.0.0", sequence=1)
    return start_server()


def _connect(server: AgentServer) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.settimeout(10)
    return sock


def _request(method: str, target: str, body: bytes = b"", *extra: str,
             version: str = "HTTP/1.1") -> bytes:
    head = [f"{method} {target} {version}", "Host: x", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class _Reader:
    """Reads HTTP/1.1 responses (framed by Content-Length) off one socket, in order."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            assert self._fill(), "connection closed before a response"
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip()
                   for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            assert self._fill(), "connection closed inside a response body"
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(lines[0].split()[1]), headers, body

    def closed(self) -> bool:
        try:
            return not self._fill()
        except ConnectionResetError:
            return True


def _logits(body: bytes, rows: int) -> np.ndarray:
    (out,) = json.loads(body)["outputs"]
    return np.array(out["data"], np.float32).reshape(rows, OUT_DIM)


# --- HTTP/1.1 as clients speak it -------------------------------------------------------------


def test_pipelined_requests_are_answered_in_order_on_one_connection(
    server: AgentServer,
) -> None:
    x = positive_inputs(2, seed=3)
    with _connect(server) as sock:
        sock.sendall(_request("GET", "/v2/health/live")
                     + _request("POST", INFER, infer_body(x))
                     + _request("GET", "/v2/nothing")
                     + _request("POST", INFER, infer_body(x[:1])))
        reader = _Reader(sock)
        assert reader.response()[::2] == (200, b'{"live":true}')
        status, _, body = reader.response()
        assert status == 200
        np.testing.assert_allclose(_logits(body, 2), mlp_forward(WEIGHTS_1, x), atol=1e-4)
        assert reader.response()[0] == 404
        status, _, body = reader.response()
        assert status == 200 and _logits(body, 1).shape == (1, OUT_DIM)


def test_expect_100_continue_is_answered_before_the_body_is_sent(server: AgentServer) -> None:
    body = infer_body(positive_inputs(1))
    with _connect(server) as sock:
        head = _request("POST", INFER, body, "Expect: 100-continue")[: -len(body)]
        sock.sendall(head)
        reader = _Reader(sock)
        assert reader.response()[0] == 100
        sock.sendall(body)
        assert reader.response()[0] == 200


def test_http_1_0_without_keep_alive_is_closed_after_its_answer(server: AgentServer) -> None:
    with _connect(server) as sock:
        sock.sendall(_request("GET", "/v2/health/live", version="HTTP/1.0"))
        reader = _Reader(sock)
        status, headers, _ = reader.response()
        assert status == 200 and headers["connection"] == "close"
        assert reader.closed()


def test_a_head_past_the_limit_gets_431_and_the_server_goes_on(
    device: Device, models: Models, start_server: ServerFactory,
) -> None:
    device.install(models.good, version="1.0.0", sequence=1)
    server = start_server(config=replace(FAST, max_head_bytes=1024))
    with _connect(server) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nX-Padding: " + b"a" * 4096)
        reader = _Reader(sock)
        status, headers, body = reader.response()
        assert status == 431 and "error" in json.loads(body)
        assert headers["connection"] == "close" and reader.closed()
    assert requests.get(f"{server.url}/v2/health/live", timeout=10).status_code == 200


# --- batching: each request answered and counted as if alone -----------------------------------


def test_concurrent_clients_each_get_the_answer_to_their_own_inputs(
    server: AgentServer,
) -> None:
    clients, rounds = 8, 25
    wrong: list[str] = []

    def client(seed: int) -> None:
        session = requests.Session()
        for i in range(rounds):
            x = positive_inputs(1 + (seed + i) % 3, seed=seed * 1000 + i)
            response = session.post(f"{server.url}{INFER}", data=infer_body(x), timeout=30)
            got = _logits(response.content, len(x))
            if not np.allclose(got, mlp_forward(WEIGHTS_1, x), atol=1e-4):
                wrong.append(f"client {seed} round {i}")

    threads = [threading.Thread(target=client, args=(s,)) for s in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert wrong == []
    totals = server.book.totals(ReleaseKey(CHANNEL, "1.0.0", 1))
    assert (totals.count, totals.errors) == (clients * rounds, 0)


def test_a_batch_answers_and_counts_what_running_each_request_alone_does(
    device: Device, models: Models, start_server: ServerFactory,
) -> None:
    device.install(models.good, version="1.0.0", sequence=1)
    key = ReleaseKey(CHANNEL, "1.0.0", 1)
    inputs = [positive_inputs(n, seed=n) for n in (1, 3, 2)]
    nan = positive_inputs(1, seed=9)
    nan[0, 0] = np.nan
    calls = [InferCall(CHANNEL, None, infer_body(x, id=f"r{i}"), None)
             for i, x in enumerate([*inputs, nan])]
    calls.append(InferCall(CHANNEL, None, b"{not json", None))
    calls.append(InferCall(CHANNEL, None, infer_body(positive_inputs(1), name="wrong"), None))

    alone = start_server(unix_socket=None)
    one_by_one = [alone.service.infer_many([call])[0] for call in calls]
    alone_totals = alone.book.totals(key)
    alone.stop()
    batched = start_server(unix_socket=None).service
    seeded = batched.book.totals(key)  # what the first server's health history holds
    together = batched.infer_many(calls)

    for single, joint in zip(one_by_one, together, strict=True):
        assert type(single) is type(joint)
        if isinstance(single, tuple):
            assert isinstance(joint, tuple)
            a, b = json.loads(single[0]), json.loads(joint[0])
            assert a["id"] == b["id"] and a["outputs"][0]["shape"] == b["outputs"][0]["shape"]
            np.testing.assert_allclose(
                np.array(b["outputs"][0]["data"], np.float32),
                np.array(a["outputs"][0]["data"], np.float32), atol=1e-5)
        else:
            assert str(single) == str(joint)
    totals = batched.book.totals(key)
    counted = [getattr(totals, f) - getattr(seeded, f) for f in COUNTERS]
    assert counted == [getattr(alone_totals, f) for f in COUNTERS] == [4, 0, 0, 1]


def _serving(inputs: list[tuple[int, ...]], outputs: list[tuple[int, ...]],
             flexible_batch: bool = False) -> ServingModel:
    model = SimpleNamespace(
        inputs=[TensorSpec(f"i{n}", "FP32", shape) for n, shape in enumerate(inputs)],
        outputs=[TensorSpec(f"o{n}", "FP32", shape) for n, shape in enumerate(outputs)],
    )
    return cast(ServingModel, SimpleNamespace(model=model, flexible_batch=flexible_batch))


@pytest.mark.parametrize(
    ("inputs", "outputs", "flexible", "expected"),
    [
        ([(-1, 8)], [(-1, 3)], False, True),
        ([(-1, 8), (-1, 2, 2)], [(-1, 3)], False, True),
        ([(1, 8)], [(1, 3)], False, False),  # a fixed batch of one
        ([(-1, 8), ()], [(-1, 3)], False, False),  # a scalar input (a sample rate)
        ([(-1, 8)], [(3, -1)], False, False),  # an output without a leading batch axis
        ([(-1, 8)], [(-1, 3)], True, False),  # TFLite resizes per call
    ],
)
def test_only_models_with_a_free_leading_axis_everywhere_are_batched(
    inputs: list[tuple[int, ...]], outputs: list[tuple[int, ...]], flexible: bool,
    expected: bool,
) -> None:
    assert batchable(_serving(inputs, outputs, flexible)) is expected


def test_a_batch_whose_outputs_lose_the_batch_axis_is_rerun_one_by_one(
    server: AgentServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    serving = server.registry.get(CHANNEL)
    assert serving is not None
    real_run = serving.model.run
    batch_sizes: list[int] = []

    def run(feeds: dict[str, Any]) -> dict[str, Any]:
        rows = len(next(iter(feeds.values())))
        batch_sizes.append(rows)
        produced = real_run(feeds)
        return {k: v.sum(axis=0, keepdims=True) if rows > 2 else v for k, v in produced.items()}

    monkeypatch.setattr(serving.model, "run", run)
    xs = [positive_inputs(1, seed=s) for s in range(3)]
    outcomes = server.service.infer_many([InferCall(CHANNEL, None, infer_body(x), None)
                                          for x in xs])
    assert batch_sizes == [3, 1, 1, 1]
    for x, outcome in zip(xs, outcomes, strict=True):
        assert isinstance(outcome, tuple)
        np.testing.assert_allclose(_logits(outcome[0], 1), mlp_forward(WEIGHTS_1, x), atol=1e-4)


# --- where infer requests run: the loop itself for a lone client, else the pool ----------------


def _threads_running(server: AgentServer, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of the thread each model run of the served release happens on, from now on."""
    serving = server.registry.get(CHANNEL)
    assert serving is not None
    real_run = serving.model.run
    threads: list[str] = []

    def run(feeds: dict[str, Any]) -> dict[str, Any]:
        threads.append(threading.current_thread().name)
        return real_run(feeds)

    monkeypatch.setattr(serving.model, "run", run)
    return threads


def test_a_lone_client_is_answered_by_the_loop_without_the_pool(
    server: AgentServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads = _threads_running(server, monkeypatch)
    with _connect(server) as sock:
        reader = _Reader(sock)
        for seed in range(5):
            x = positive_inputs(1 + seed % 2, seed=seed)
            sock.sendall(_request("POST", INFER, infer_body(x)))
            status, _, body = reader.response()
            assert status == 200
            np.testing.assert_allclose(_logits(body, len(x)), mlp_forward(WEIGHTS_1, x),
                                       atol=1e-4)
    assert threads == ["satchel-http"] * 5
    stats = requests.get(f"{server.url}/v2/models/{CHANNEL}/stats", timeout=10).json()
    (model,) = stats["model_stats"]
    assert model["inference_stats"]["queue"]["count"] == 5


def test_a_model_that_holds_the_loop_too_long_twice_runs_in_the_pool_for_a_while(
    server: AgentServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from satchel.agent.server import loop

    monkeypatch.setattr(loop, "INLINE_MAX_S", 0.0)  # every run is too long for the loop
    monkeypatch.setattr(loop, "INLINE_PAUSE_REQUESTS", 3)
    threads = _threads_running(server, monkeypatch)
    session = requests.Session()
    for seed in range(8):
        x = positive_inputs(1, seed=seed)
        response = session.post(f"{server.url}{INFER}", data=infer_body(x), timeout=30)
        assert response.status_code == 200
        np.testing.assert_allclose(_logits(response.content, 1), mlp_forward(WEIGHTS_1, x),
                                   atol=1e-4)
    on_loop = [name == "satchel-http" for name in threads]
    # two in a row over the limit (one may be a preempted thread), then three in the pool
    assert on_loop == [True, True, False, False, False, True, True, False]
    assert all(name.startswith("satchel-inference-") for name in threads if name != "satchel-http")


def _hang_one_request(device: Device, models: Models, start_server: ServerFactory) -> str:
    """One infer request to a model stuck in its runtime: the server stays healthy while
    the run is within `inline_stall_s` (0.3 s), turns unhealthy past it (systemd stops being
    told it is alive), and healthy again once the run ends and is answered. The name of
    the thread the run was on."""
    device.install(models.good, version="1.0.0", sequence=1)
    server = start_server(config=replace(FAST, inline_stall_s=0.3))
    serving = server.registry.get(CHANNEL)
    assert serving is not None
    real_run, release, entered = serving.model.run, threading.Event(), threading.Event()
    ran_on: list[str] = []

    def hanging_run(feeds: dict[str, Any]) -> dict[str, Any]:
        ran_on.append(threading.current_thread().name)
        entered.set()
        release.wait(30)  # a model stuck in its runtime, until the test lets it go
        return real_run(feeds)

    serving.model.run = hanging_run  # type: ignore[method-assign]
    x = positive_inputs(1, seed=3)
    answers: list[int] = []
    client = threading.Thread(target=lambda: answers.append(requests.post(
        f"{server.url}{INFER}", data=infer_body(x), timeout=60).status_code))
    client.start()
    try:
        assert entered.wait(10)
        assert server.healthy()  # held, but not yet past the limit
        wait_for(lambda: not server.healthy(), 5)  # past it: systemd stops being told alive
    finally:
        release.set()
        client.join(30)
    assert answers == [200]
    wait_for(server.healthy, 5)  # the run is over: healthy
    return ran_on[0]


def test_a_model_that_hangs_in_the_loop_makes_the_server_unhealthy_for_the_watchdog(
    device: Device, models: Models, start_server: ServerFactory,
) -> None:
    assert _hang_one_request(device, models, start_server) == "satchel-http"


def test_a_model_that_hangs_in_a_pool_worker_makes_the_server_unhealthy_for_the_watchdog(
    device: Device, models: Models, start_server: ServerFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from satchel.agent.server import loop

    monkeypatch.setattr(loop, "INLINE_MAX_BODY_BYTES", 0)  # every request goes to the pool
    assert _hang_one_request(device, models, start_server).startswith("satchel-inference-")


def _selects(monkeypatch: pytest.MonkeyPatch) -> list[float | None]:
    """The timeout of every `select` the event loop's thread makes, from now on."""
    real = selectors.EpollSelector.select
    timeouts: list[float | None] = []

    def select(self: selectors.EpollSelector, timeout: float | None = None) -> Any:
        if threading.current_thread().name == "satchel-http":
            timeouts.append(timeout)
        return real(self, timeout)

    monkeypatch.setattr(selectors.EpollSelector, "select", select)
    return timeouts


def _infer_in_a_row(server: AgentServer, count: int,
                    answered: Callable[[int], object] = lambda _: None) -> None:
    """`count` infer requests on one kept-alive connection, each sent once the last is
    answered; `answered(i)` runs once the i-th is, the connection still open."""
    with _connect(server) as sock:
        reader = _Reader(sock)
        for seed in range(count):
            sock.sendall(_request("POST", INFER, infer_body(positive_inputs(1, seed=seed))))
            assert reader.response()[0] == 200
            answered(seed)


@pytest.fixture
def watched(
    device: Device, models: Models, start_server: ServerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[[float], tuple[AgentServer, list[float | None]]]:
    """A server with `busy_poll_s` set, and the timeouts of its loop's selects."""
    device.install(models.good, version="1.0.0", sequence=1)

    def start(busy_poll_s: float) -> tuple[AgentServer, list[float | None]]:
        server = start_server(config=replace(FAST, busy_poll_s=busy_poll_s))
        return server, _selects(monkeypatch)

    return start


def test_after_answering_the_loop_reads_the_next_request_without_sleeping(
    watched: Callable[[float], tuple[AgentServer, list[float | None]]],
) -> None:
    server, timeouts = watched(0.5)
    seen: list[float | None] = []

    def answered(i: int) -> None:
        if i == 0:
            timeouts.clear()  # from the first answer on
        elif i == 3:
            seen.extend(timeouts)

    _infer_in_a_row(server, 4, answered)

    # every request after the first was found by a look that did not sleep
    assert seen and set(seen) == {0}
    time.sleep(0.8)  # idle, past busy_poll_s: the loop sleeps between its timer ticks
    idle_from = len(timeouts)
    time.sleep(0.3)
    idle = timeouts[idle_from:]
    assert idle and 0 not in idle


def test_with_busy_polling_off_the_loop_sleeps_between_requests(
    watched: Callable[[float], tuple[AgentServer, list[float | None]]],
) -> None:
    server, timeouts = watched(0.0)

    _infer_in_a_row(server, 3)

    assert timeouts and 0 not in timeouts
