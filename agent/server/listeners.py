"""The inference server's listening sockets: TCP (loopback, as a rule) and a Unix socket,
both non-blocking, served by one event loop."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from pathlib import Path

from satchel.agent.server.errors import ListenAddressError, ServerError
from satchel.agent.server.http import parse_listen


class Listener:
    """A bound, listening, non-blocking socket."""

    def __init__(self, sock: socket.socket, path: Path | None = None) -> None:
        self.sock = sock
        self.path = path  # the Unix socket's file, removed on close
        self.is_tcp = sock.family in (socket.AF_INET, socket.AF_INET6)

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"

    def close(self) -> None:
        self.sock.close()
        if self.path is None:
            return
        try:
            if stat.S_ISSOCK(self.path.lstat().st_mode):
                self.path.unlink()
        except FileNotFoundError:
            pass


def tcp_listener(listen: str, backlog: int) -> Listener:
    """Listen on "HOST:PORT". Raises ListenAddressError."""
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise ListenAddressError(f"cannot listen on {listen}: {e.strerror or e}") from e
    return Listener(sock)


def unix_listener(path: Path, backlog: int, mode: int) -> Listener:
    """Listen on a Unix socket at `path` with permissions `mode`, replacing a stale socket
    file. Raises ListenAddressError, ServerError (something else at `path`, or a live
    server on it)."""
    path = Path(path)
    _clear_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, mode)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()
        raise ListenAddressError(f"cannot listen on {path}: {e.strerror or e}") from e
    return Listener(sock, path)


def _clear_stale_socket(path: Path) -> None:
    """Remove a socket file left by a dead server. Raises ServerError when something else
    is there, or when a live server still answers on it."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ServerError(f"{path} exists and is not a socket; not replacing it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()
            return
    raise ServerError(f"another server is already listening on {path}")
