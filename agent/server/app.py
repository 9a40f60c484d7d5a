"""The device's inference server, assembled: `AgentServer` for tests and `serve` for the
`satchel-agent run` command.

Threads: the HTTP event loop (both listeners and every connection, at most
`max_connections`), the inference pool (one thread per core by default; it batches requests
that wait together), a watcher that polls the device state's generation and hot-swaps, and
the health monitor that judges probation, rolls back and writes the health history.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from satchel.agent import sdnotify
from satchel.agent.config import AgentConfig
from satchel.agent.health.stats import HealthBook
from satchel.agent.health.store import HEALTH_DIR, HealthStore
from satchel.agent.server.config import DEFAULT_CONFIG, DEFAULT_LISTEN, SOCKET_NAME, ServerConfig
from satchel.agent.server.connections import ConnectionSlots
from satchel.agent.server.crashloop import record_clean_stop
from satchel.agent.server.endpoints import Endpoints
from satchel.agent.server.events import EventSink, MemoryEventSink
from satchel.agent.server.inference import InferenceService
from satchel.agent.server.listeners import Listener, tcp_listener, unix_listener
from satchel.agent.server.loop import HttpLoop
from satchel.agent.server.monitor import HealthMonitor, RollbackFn
from satchel.agent.server.registry import ModelLoader, ModelRegistry, StateView, load_model
from satchel.agent.staging.stager import Stager
from satchel.agent.variants.serving import VariantWatcher

log = logging.getLogger(__name__)


def default_socket_path(state_dir: Path) -> Path:
    return Path(state_dir) / SOCKET_NAME


def _default_state(state_dir: Path) -> StateView:
    from satchel.agent.state import DeviceState

    return DeviceState(state_dir)


def _default_rollback() -> RollbackFn:
    from satchel.agent.install.installer import rollback

    return rollback


class AgentServer:
    """The inference server over one state dir. `start()` binds, loads every channel's
    active release and serves in background threads; `stop()` ends it all.

    `state` and `rollback` default to `agent.state.DeviceState(state_dir)` and
    `agent.install.installer.rollback`.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        listen: str | None = DEFAULT_LISTEN,
        unix_socket: Path | None = None,
        event_sink: EventSink | None = None,
        config: ServerConfig = DEFAULT_CONFIG,
        state: StateView | None = None,
        rollback: RollbackFn | None = None,
        loader: ModelLoader = load_model,
        clock: Callable[[], float] = time.time,
        agent_config: AgentConfig | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.config = config
        self.events: EventSink = event_sink if event_sink is not None else MemoryEventSink()
        self.history = HealthStore(
            self.state_dir / HEALTH_DIR,
            retention_s=config.health_retention_s,
            segment_s=config.health_segment_s,
            max_buckets_per_segment=config.health_max_buckets_per_segment,
        )
        self.book = HealthBook(clock)
        self.registry = ModelRegistry(
            state if state is not None else _default_state(self.state_dir),
            config=config, book=self.book, events=self.events, history=self.history,
            loader=loader, clock=clock,
        )
        self.monitor = HealthMonitor(
            self.state_dir, self.registry, self.book,
            rollback=rollback if rollback is not None else _default_rollback(),
            events=self.events, config=config, history=self.history, clock=clock,
        )
        # releases judged in shadow and ramp before they activate (agent.staging)
        self.stager = Stager(self.state_dir, self.events, config=agent_config or AgentConfig(),
                             on_activated=self.reload_now, clock=clock)
        self.registry.stager = self.stager
        # which variant of a release answers, by the device's state (agent.variants)
        self.variants = VariantWatcher(self.registry, config.variants, clock=clock)
        self.service = InferenceService(
            self.registry, self.book, on_probation_inference=self.monitor.poke,
            config=config, clock=clock,
        )
        # shared by both listeners
        self.connections = ConnectionSlots(config.max_connections, config.read_deadline_s)
        self._listen = listen
        self._unix_socket = Path(unix_socket) if unix_socket is not None else None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._tcp: Listener | None = None
        self._unix: Listener | None = None
        self._loop: HttpLoop | None = None

    @property
    def url(self) -> str:
        """The base URL of the TCP listener, e.g. http://127.0.0.1:8401."""
        if self._tcp is None:
            raise RuntimeError("the server has no TCP listener")
        return self._tcp.url

    @property
    def unix_socket(self) -> Path | None:
        return self._unix.path if self._unix is not None else None

    @property
    def inference_workers(self) -> int:
        """Threads of the inference pool: as configured, else one per core (at most 4)."""
        return self.config.inference_workers or max(1, min(4, os.cpu_count() or 1))

    def start(self) -> AgentServer:
        """Bind the listeners, load what the state says is active, start serving.

        Raises ListenAddressError, ServerError (socket in use); the state's errors when it
        cannot be read at all.
        """
        config = self.config
        try:
            if self._listen is not None:
                self._tcp = tcp_listener(self._listen, config.listen_backlog)
            if self._unix_socket is not None:
                self._unix = unix_listener(
                    self._unix_socket, config.listen_backlog, config.socket_mode
                )
            listeners = [x for x in (self._tcp, self._unix) if x is not None]
            endpoints = Endpoints(self.service)
            self._loop = HttpLoop(
                listeners, endpoints, config, self.connections, self.inference_workers
            )
            self._loop.pool.start()
            self._threads.extend(self._loop.pool.threads)
            self._spawn("http", self._loop.run)
            self.registry.reload_now()
        except BaseException:
            self.stop()
            raise
        # What start-up allocated (modules, models) lives as long as the server: out of the
        # collector's sight, a full collection no longer stalls requests for tens of ms.
        gc.collect()
        gc.freeze()
        if config.gil_switch_interval_s is not None:
            sys.setswitchinterval(config.gil_switch_interval_s)
        self.monitor.check()
        self._spawn("state-watcher", self._watch_state)
        self._spawn("staging", lambda: self.stager.run(self._stop))
        self._spawn("health-monitor", lambda: self.monitor.run(self._stop))
        self._spawn("variants", lambda: self.variants.run(self._stop))
        return self

    def reload_now(self) -> None:
        """Swap in whatever the state says is active now, without waiting for the poll."""
        self.registry.reload_now()
        self.monitor.poke()

    def healthy(self) -> bool:
        """True while every thread of the server runs and no infer run, in the event loop or
        a pool worker, has gone past `inline_stall_s` (what the systemd watchdog checks)."""
        if self._loop is not None and self._loop.stalled(time.monotonic(),
                                                         self.config.inline_stall_s):
            return False
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def stop(self) -> None:
        """Stop serving, write the health history, record a clean stop. Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        self.monitor.poke()
        self.stager.wake()  # its worker may sleep while nothing is staged
        if self._loop is not None:
            self._loop.stop()
            self._loop.pool.stop(self.config.stop_timeout_s)
        for thread in self._threads:
            thread.join(self.config.stop_timeout_s)
        for listener in (self._tcp, self._unix):
            if listener is not None:
                listener.close()
        self.monitor.flush()
        record_clean_stop(self.state_dir, self.config)

    def __enter__(self) -> AgentServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, name: str, target: Callable[[], object]) -> None:
        thread = threading.Thread(target=target, name=f"satchel-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _watch_state(self) -> None:
        while not self._stop.wait(self.config.poll_interval_s):
            try:
                if self.registry.poll():
                    self.monitor.poke()
            except Exception:  # an unreadable state now is retried at the next poll
                log.exception("reading the device state failed")


def serve(
    state_dir: Path,
    listen: str = DEFAULT_LISTEN,
    *,
    unix_socket: Path | None,
    event_sink: EventSink | None,
    stop_event: threading.Event,
    config: ServerConfig = DEFAULT_CONFIG,
) -> None:
    """Serve until `stop_event` is set: TCP on `listen` and, unless None, the Unix socket
    (`default_socket_path(state_dir)` is the standard one). Tells systemd READY=1 once
    serving and pings its watchdog while every server thread is alive.

    Raises ListenAddressError, ServerError when the listeners cannot be set up.
    """
    server = AgentServer(
        state_dir, listen=listen, unix_socket=unix_socket, event_sink=event_sink, config=config
    ).start()
    where = server.url + (f" and {server.unix_socket}" if server.unix_socket else "")
    log.info("serving on %s", where)
    sdnotify.ready(f"serving on {where}")
    interval = sdnotify.watchdog_interval_s()
    try:
        warned = False
        while not stop_event.wait(interval or 1.0):
            if not interval:
                continue
            if server.healthy():
                sdnotify.watchdog()
                warned = False
            elif not warned:
                log.error("the server is not healthy (a thread ended, or one infer run has "
                          "gone on for over %g s): the systemd watchdog is no longer told "
                          "it is alive", server.config.inline_stall_s)
                warned = True
    finally:
        sdnotify.stopping()
        server.stop()
