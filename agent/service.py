"""`satchel-agent run`: the service on every device.

Start-up, in order: finish or undo an install cut short (`recover`), roll back a release that
keeps crashing the service (`check_crash_loop`), start the inference server (loopback TCP
and STATE/agent.sock; it hot-swaps whatever the installer activates, and its health monitor
rolls back a release that breaches its policy during probation), then the check-in loop and
the USB watcher in threads. systemd hears READY=1 once the server serves, and WATCHDOG=1
while every thread is alive. SIGTERM or SIGINT stop it cleanly (the caller sets `stop`).

Every event, the server's rollbacks included, goes into the durable `EventQueue`; a
rollback also wakes the check-in loop so the manager hears of it at once.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from satchel.agent import sdnotify
from satchel.agent.config import DEFAULT_CONFIG, AgentConfig
from satchel.agent.event_queue import EventQueue
from satchel.agent.health.samples import HealthSampler
from satchel.agent.install.handoff import close_handoff, open_handoff, taking_over
from satchel.agent.install.installer import recover
from satchel.agent.runtimes.accel import Acceleration
from satchel.agent.server import DEFAULT_CONFIG as DEFAULT_SERVER_CONFIG
from satchel.agent.server import (
    DEFAULT_LISTEN,
    AgentServer,
    ServerConfig,
    check_crash_loop,
    default_socket_path,
)
from satchel.agent.server.registry import load_model
from satchel.agent.state import DeviceState
from satchel.agent.sync.checkin import CheckinLoop
from satchel.agent.sync.usb import UsbWatcher

log = logging.getLogger(__name__)


class _WakingSink:
    """The server's event sink: queue durably, then wake the check-in loop."""

    def __init__(self, events: EventQueue) -> None:
        self.events = events
        self.on_event: Callable[[], None] = lambda: None

    def emit(self, event: Any) -> None:
        self.events.emit(event)
        self.on_event()


class AgentService:
    """The whole agent over one state dir. `start()` brings everything up; `stop()` ends
    it; `run(stop)` is both around the systemd notifications."""

    def __init__(
        self,
        state_dir: Path,
        *,
        listen: str | None = DEFAULT_LISTEN,
        unix_socket: Path | None = None,
        manager_url: str | None = None,
        usb_roots: Iterable[Path] = (),
        config: AgentConfig = DEFAULT_CONFIG,
        server_config: ServerConfig = DEFAULT_SERVER_CONFIG,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.listen = listen
        self.unix_socket = unix_socket
        self.manager_url = manager_url
        self.usb_roots = [Path(r) for r in usb_roots]
        self.config = config
        # the server loads models on the providers the smoke test ran them on
        # with the threads it measured them with, so a smoke-tested session is served as is
        self.server_config = dataclasses.replace(server_config,
                                                 acceleration=Acceleration.of(config),
                                                 runtime_threads=config.runtime_threads,
                                                 variants=config.variants)
        self.stopping = threading.Event()
        self.events = EventQueue(self.state_dir, config)
        self.server: AgentServer | None = None
        self.checkin: CheckinLoop | None = None
        self.usb: UsbWatcher | None = None
        self._threads: list[threading.Thread] = []

    def start(self) -> AgentService:
        """Recover, judge crash loops, serve, check in, watch for sticks.

        Raises NotInitializedError, StateCorruptError, LockBusyError; the server's
        ListenAddressError / ServerError when it cannot listen; OSError.
        """
        identity = DeviceState(self.state_dir).identity()
        log.info("satchel-agent starting for device %s (class %s) in %s",
                 identity.device_id, identity.device_class, self.state_dir)
        for line in recover(self.state_dir, config=self.config):
            log.warning("start-up recovery: %s", line)
        sink = _WakingSink(self.events)
        for reason in check_crash_loop(self.state_dir, events=sink):
            log.warning("crash loop: %s", reason)
        # installs in this process leave their smoke-tested session for the server to serve
        self.server = AgentServer(
            self.state_dir, listen=self.listen, unix_socket=self.unix_socket,
            event_sink=sink, config=self.server_config,
            loader=taking_over(open_handoff(), load_model), agent_config=self.config,
        ).start()
        try:
            self._start_loops(sink, self.server)
        except BaseException:
            self.stop()
            raise
        log.info("serving on %s", self.where())
        return self

    def _start_loops(self, sink: _WakingSink, server: AgentServer) -> None:
        self.checkin = CheckinLoop(
            self.state_dir, self.events, server.book.totals, self.stopping,
            config=self.config, manager_url=self.manager_url,
        )
        sink.on_event = self.checkin.wake
        self._spawn("checkin", self.checkin.run)
        sampler = HealthSampler(server.book.all_totals, self.events)
        self._spawn("health-samples", lambda: sampler.run(
            self.config.health_sample_interval_s, self.stopping))
        if self.usb_roots:
            self.usb = UsbWatcher(self.state_dir, self.usb_roots, self.events,
                                  server.book.totals, self.stopping, config=self.config)
            self._spawn("usb-watcher", self.usb.run)
            log.info("watching for USB sticks under %s",
                     ", ".join(str(r) for r in self.usb_roots))

    def where(self) -> str:
        """Where the inference server listens, for logs."""
        if self.server is None:
            return "nothing (not started)"
        places = []
        if self.listen is not None:
            places.append(self.server.url)
        if self.server.unix_socket is not None:
            places.append(str(self.server.unix_socket))
        return " and ".join(places)

    def healthy(self) -> bool:
        """True while the server's and the service's threads all run (watchdog check)."""
        return (self.server is not None and self.server.healthy()
                and all(t.is_alive() for t in self._threads))

    def stop(self) -> None:
        """Stop the loops, then the server (which writes health history and records a
        clean stop). Idempotent."""
        self.stopping.set()
        if self.checkin is not None:
            self.checkin.wake()
        for thread in self._threads:
            thread.join(self.server_config.stop_timeout_s)
        if self.server is not None:
            self.server.stop()
        close_handoff()

    def run(self, stop: threading.Event) -> None:
        """Start, tell systemd READY=1, ping its watchdog while healthy, until `stop` is set;
        then stop cleanly. Raises as `start`."""
        self.start()
        try:
            sdnotify.ready(f"serving on {self.where()}")
            interval = sdnotify.watchdog_interval_s() or self.config.watchdog_fallback_s
            unhealthy_logged = False
            while not stop.wait(interval):
                if self.healthy():
                    sdnotify.watchdog()
                    unhealthy_logged = False
                elif not unhealthy_logged:
                    log.error("a service thread died; no watchdog ping (systemd restarts us)")
                    unhealthy_logged = True
        finally:
            log.info("stopping")
            sdnotify.stopping()
            self.stop()
            log.info("stopped")

    def _spawn(self, name: str, target: Callable[[], object]) -> None:
        thread = threading.Thread(target=target, name=f"satchel-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)


def socket_for(state_dir: Path, socket: Path | None, no_socket: bool) -> Path | None:
    """The Unix socket to serve on: `socket`, else STATE/agent.sock, or None."""
    if no_socket:
        return None
    return socket if socket is not None else default_socket_path(state_dir)

