"""Serving the manager in production: granian or waitress, in several processes.

`app` is the WSGI application for external servers (`manager.wsgi:app`), configured from the
environment. `serve()` runs `workers` processes (one process cannot use more than one core
under the GIL), each with `threads` request threads:
- granian (`server = "granian"`, the default when installed): HTTP parsed in Rust, about a
  third of waitress's CPU per request (bench/bench_checkin.py); it forks the workers, restarts
  one that dies and stops them all on SIGTERM/SIGINT.
- waitress (`server = "waitress"`, pure Python): the listening socket is bound once, then the
  workers forked here accept on it; the parent restarts a worker that dies and stops them all
  on SIGTERM/SIGINT.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from satchel.bundles.logsetup import configure as configure_logs
from satchel.manager.config import ManagerConfig
from satchel.manager.db import make_engine, require_head
from satchel.manager.metrics.multiproc import prepare as prepare_metrics_dir

RESTART_DELAY_S = 1.0  # seconds before a dead worker is replaced
STOP_GRACE_S = 10.0  # seconds workers get to finish after SIGTERM
READY_POLL_S = 0.05  # seconds between probes of granian's port before announcing it
READY_TIMEOUT_S = 60.0  # seconds granian's workers get to start listening
GRANIAN, WAITRESS = "granian", "waitress"


def __getattr__(name: str) -> Any:
    if name == "app":  # built on first use so that importing this module is cheap
        from satchel.manager.app import create_app  # Flask and every blueprint: see _create_app
        from satchel.manager.services.retention import start_pruner

        globals()["app"] = create_app()
        state = globals()["app"].extensions["satchel"]
        _configure_logs(state.config)
        start_pruner(state.db, state.config)  # retention, if set, as under `satchel serve`
        return globals()["app"]
    raise AttributeError(name)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _run_worker(config: ManagerConfig, sock: socket.socket) -> None:
    import waitress  # only the server in use is loaded (every `satchel` command imports this)

    # "Task queue depth" warnings only say that all threads are busy, which under load they are
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)

    app = _create_app(config)
    waitress.serve(
        app,
        sockets=[sock],
        threads=config.threads,
        connection_limit=max(100, config.threads * 64),
        channel_timeout=120,
        ident="satchel",
        _quiet=True,
    )


def _as_overrides(config: ManagerConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


def server_name(config: ManagerConfig) -> str:
    """The HTTP server `config` asks for ("auto": granian when installed, else waitress)."""
    if config.server != "auto":
        return config.server
    return GRANIAN if importlib.util.find_spec(GRANIAN) is not None else WAITRESS


def serve(config: ManagerConfig, announce: Callable[[str], None] = print) -> None:
    """Serve until SIGTERM/SIGINT. Raises DatabaseNotReadyError before binding anything when
    the database is not at the head revision; OSError when the address is taken."""
    engine = make_engine(config)
    try:
        if config.check_schema:
            require_head(engine)
    finally:
        engine.dispose()
    _configure_logs(config)
    prepare_metrics_dir()  # before any worker starts, before prometheus_client is imported
    server = server_name(config)
    database = "postgresql" if config.database_url.startswith("postgres") else "sqlite"

    def ready(host: str, port: int) -> None:
        announce(
            f"satchel manager listening on http://{host}:{port} ({config.workers} worker(s) "
            f"x {config.threads} threads, {server}, database {database})"
        )
        sys.stdout.flush()

    if server == GRANIAN:
        _serve_granian(config, ready)
        return
    sock = _bind(config.host, config.port)
    ready(*sock.getsockname()[:2])
    if config.workers == 1:
        _run_worker(config, sock)
        return
    _supervise(config, sock)


def _serve_granian(config: ManagerConfig, ready: Callable[[str, int], None]) -> None:
    # granian is optional (`server = "auto"` falls back to waitress without it)
    from granian.constants import Interfaces
    from granian.log import LogLevels
    from granian.server import Server

    port = config.port or _free_port(config.host)
    server = Server(
        "manager.wsgi:app",  # a name for granian's logs; the loader below builds the app
        address=config.host,
        port=port,
        interface=Interfaces.WSGI,
        workers=config.workers,
        blocking_threads=config.threads,
        backlog=1024,
        respawn_failed_workers=True,
        respawn_interval=RESTART_DELAY_S,
        workers_kill_timeout=int(STOP_GRACE_S),
        log_level=LogLevels.warning,
        log_dictconfig=_GRANIAN_LOGS_TO_STDERR,
    )
    _announce_when_listening(config.workers, config.host, port, ready)
    # forked workers (Linux) build their own app, with their own database pools
    server.serve(target_loader=lambda: _create_app(config), wrap_loader=False)


# stdout carries only the announcement (scripts read it); granian's own lines go to the
# root logger, in the format and at the level of `--log-format` and `--log-level`, on stderr
_GRANIAN_LOGS_TO_STDERR = {
    "handlers": {},
    "loggers": {
        name: {"handlers": [], "propagate": True} for name in ("_granian", "granian.access")
    },
}


def _create_app(config: ManagerConfig) -> Any:
    # Imported by the serving processes only: `satchel` imports this module for every command
    # (through `manager.commands.serve`), and Flask with every blueprint would slow them all.
    from satchel.manager.app import create_app
    from satchel.manager.services.retention import start_pruner

    _configure_logs(config)  # a spawned (not forked) worker starts with no handler
    app = create_app(_as_overrides(config))
    start_pruner(app.extensions["satchel"].db, config)  # retention, if set: every process
    return app


def _configure_logs(config: ManagerConfig) -> None:
    configure_logs(config.log_level, config.log_format)


def _free_port(host: str) -> int:
    """A port free on `host` now (for `--port 0`; granian binds by number)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _announce_when_listening(
    workers: int, host: str, port: int, ready: Callable[[str, int], None]
) -> None:
    """Call `ready` once a worker accepts connections, so that whoever reads the announcement
    can connect at once. The probing thread starts only after the `workers` forks: a thread
    running during a fork can leave a lock (the import lock, say) held forever in the child."""
    forks = 0

    def after_fork() -> None:
        nonlocal forks
        forks += 1
        if forks == workers:
            threading.Thread(target=wait, name="announce", daemon=True).start()

    def wait() -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                socket.create_connection((host, port), timeout=1.0).close()
            except OSError:
                time.sleep(READY_POLL_S)
                continue
            ready(host, port)
            return

    os.register_at_fork(after_in_parent=after_fork)


def _spawn(config: ManagerConfig, sock: socket.socket) -> int:
    pid = os.fork()
    if pid == 0:  # the worker
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        try:
            _run_worker(config, sock)
        finally:
            os._exit(0)
    return pid


def _supervise(config: ManagerConfig, sock: socket.socket) -> None:
    stopping = False

    def stop(_signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    workers = {_spawn(config, sock) for _ in range(config.workers)}
    while not stopping:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pid = 0
        if pid and pid in workers:
            workers.discard(pid)
            time.sleep(RESTART_DELAY_S)
            if not stopping:
                workers.add(_spawn(config, sock))
        time.sleep(0.2)
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while workers and time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        workers.discard(pid)
        time.sleep(0.05)
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
