"""The bound on connections: shared by the TCP and the Unix-socket listener, and no obstacle
to stopping the server while every slot is held."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from satchel.agent.health.stats import HealthStats
from tests.server.clients import unix_request
from tests.server.devices import Device
from tests.server.servers import FAST, ServerFactory, wait_for


@pytest.fixture
def held() -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    yield socks
    for sock in socks:
        sock.close()


def _tcp(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _unix(device: Device) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(device.state_dir / "agent.sock"))
    return sock


def test_tcp_and_unix_connections_share_one_bound(
    device: Device, start_server: ServerFactory, held: list[socket.socket]
) -> None:
    bound = 4
    server = start_server(config=replace(FAST, max_connections=bound))
    baseline = threading.active_count()
    for i in range(bound * 5):
        held.append(_tcp(server.url) if i % 2 else _unix(device))
    time.sleep(0.2)
    assert server.connections.held <= bound
    assert threading.active_count() <= baseline + bound + 1
    status, _, body = unix_request(device.state_dir / "agent.sock", "GET", "/v2/health/live")
    assert (status, body) == (200, b'{"live":true}')


def test_server_stops_promptly_while_every_slot_is_busy(
    start_server: ServerFactory, held: list[socket.socket]
) -> None:
    bound = 2
    server = start_server(config=replace(FAST, max_connections=bound, idle_timeout_s=30.0))
    for _ in range(bound + 3):  # half-sent requests: busy for idle_timeout_s
        sock = _tcp(server.url)
        sock.sendall(b"G")
        held.append(sock)
    wait_for(lambda: server.connections.held == bound)
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 2.0


def test_health_history_written_before_inputs_were_counted_still_reads() -> None:
    stored = HealthStats(3, 1, 1, 3.0, [3] + [0] * 16).to_dict()
    del stored["nonfinite_inputs"]
    assert HealthStats.from_dict(stored) == HealthStats(3, 1, 1, 3.0, [3] + [0] * 16, 0)
