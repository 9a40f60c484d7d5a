"""A TCP proxy that cuts downloads in the middle, for the network's bad days."""

from __future__ import annotations

import contextlib
import socket
import threading


class DropProxy:
    """A TCP proxy on 127.0.0.1 that cuts the first `drops` connections whose answer grows
    past `after_bytes` (a download), in the middle of the answer; the rest pass through."""

    def __init__(self, target_port: int, after_bytes: int, drops: int) -> None:
        self.target_port = target_port
        self.after_bytes = after_bytes
        self.drops_left = drops
        self.cut = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._stop = threading.Event()
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
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:
            client.close()
            return
        threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
        self._pump(upstream, client, True)

    def _pump(self, source: socket.socket, sink: socket.socket, answer: bool) -> None:
        sent = 0
        try:
            while chunk := source.recv(65536):
                if answer and sent + len(chunk) > self.after_bytes and self._take_drop():
                    sink.sendall(chunk[: max(0, self.after_bytes - sent)])
                    break
                sink.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def _take_drop(self) -> bool:
        with self._lock:
            if self.drops_left <= 0:
                return False
            self.drops_left -= 1
            self.cut += 1
            return True
