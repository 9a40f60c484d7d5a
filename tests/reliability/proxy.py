"""A TCP proxy on 127.0.0.1 in front of a real manager, whose behaviour a test switches while
devices talk through it: pass everything, refuse (the manager is down), hold connections
silent (a manager that hangs), or pass answers slowly."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter

PASS, DOWN, SILENT, SLOW = "pass", "down", "silent", "slow"


class SwitchProxy:
    """Forwards to `target_port`; `mode` decides what each new connection meets."""

    def __init__(self, target_port: int, *, slow_delay_s: float = 0.5) -> None:
        self.target_port = target_port
        self.mode = PASS
        self.slow_delay_s = slow_delay_s  # seconds before each forwarded chunk, in SLOW
        self.connections: Counter[str] = Counter()  # per mode met
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
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
            mode = self.mode
            self.connections[mode] += 1
            threading.Thread(target=self._serve, args=(client, mode), daemon=True).start()

    def _serve(self, client: socket.socket, mode: str) -> None:
        if mode == DOWN:
            _close(client)
            return
        if mode == SILENT:
            while self.mode == SILENT and not self._stop.wait(0.05):
                pass
            _close(client)
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:
            _close(client)
            return
        threading.Thread(target=self._pump, args=(client, upstream, 0.0), daemon=True).start()
        self._pump(upstream, client, self.slow_delay_s if mode == SLOW else 0.0)

    def _pump(self, source: socket.socket, sink: socket.socket, delay_s: float) -> None:
        try:
            while chunk := source.recv(65536):
                if delay_s:
                    time.sleep(delay_s)
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            _close(source)
            _close(sink)


def _close(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    s.close()
