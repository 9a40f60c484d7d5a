"""Running the inference server in tests: quick loops, a factory that starts servers on
127.0.0.1 and stops them all afterwards, and waiting for what its monitor reports."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from satchel.agent.server import AgentServer, Event, MemoryEventSink, ServerConfig
from tests.server.devices import Device

# Quick loops for tests: poll the state often, write health history at once.
FAST = ServerConfig(poll_interval_s=0.05, monitor_interval_s=0.2, health_flush_s=0.0)

ServerFactory = Callable[..., AgentServer]


@contextlib.contextmanager
def server_factory(device: Device, events: MemoryEventSink) -> Iterator[ServerFactory]:
    """Start AgentServers on `device`, on 127.0.0.1 (port 0) and a Unix socket, reporting to
    `events`; all stopped on exit."""
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

    try:
        yield start
    finally:
        for server in started:
            server.stop()


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll `condition` until true; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_s} s")
        time.sleep(0.01)


def one_event(events: MemoryEventSink, kind: str) -> Event:
    """The one event of `kind`, waiting for it: the monitor reports after it has swapped."""
    wait_for(lambda: bool(events.of_kind(kind)))
    (event,) = events.of_kind(kind)
    return event
