"""Serving the manager in production: waitress threads, optionally in several processes.

`app` is the WSGI application for external servers (`manager.wsgi:app`), configured from the
environment. `serve()` binds the listening socket once, then runs `workers` processes that
each accept on it with `threads` request threads (one process cannot use more than one core
under the GIL). The parent restarts a worker that dies and stops them all on SIGTERM/SIGINT.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from manager.config import ManagerConfig
from manager.db import make_engine, require_head

RESTART_DELAY_S = 1.0  # seconds before a dead worker is replaced
STOP_GRACE_S = 10.0  # seconds workers get to finish after SIGTERM


def __getattr__(name: str) -> Any:
    if name == "app":  # built on first use so that importing this module is cheap
        from manager.app import create_app

        globals()["app"] = create_app()
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
    import logging

    import waitress

    from manager.app import create_app

    # "Task queue depth" warnings only say that all threads are busy, which under load they are
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)

    app = create_app(_as_overrides(config))
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


def serve(config: ManagerConfig, announce: Callable[[str], None] = print) -> None:
    """Serve until SIGTERM/SIGINT. Raises DatabaseNotReadyError before binding anything when
    the database is not at the head revision; OSError when the address is taken."""
    engine = make_engine(config)
    try:
        if config.check_schema:
            require_head(engine)
    finally:
        engine.dispose()
    sock = _bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    announce(
        f"satchel manager listening on http://{host}:{port} "
        f"({config.workers} worker(s) x {config.threads} threads, database "
        f"{'postgresql' if config.database_url.startswith('postgres') else 'sqlite'})"
    )
    sys.stdout.flush()
    if config.workers == 1:
        _run_worker(config, sock)
        return
    _supervise(config, sock)


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
