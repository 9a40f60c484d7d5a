"""HTTP/1.1 plumbing of the inference server: routing, bodies, JSON errors; stdlib only.

One handler class serves a threaded TCP server (loopback) and a threaded Unix-socket server,
one thread per connection, at most `max_connections` of them over both (`ConnectionSlots`).
A connection waiting for a request longer than `idle_timeout_s` is closed.
Every error is answered as `{"error": "..."}` with its status; a request that breaks the
handler gets a 500 and the connection is closed, the server goes on.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import socketserver
import stat
import threading
import zlib
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from satchel.agent.server.config import ServerConfig
from satchel.agent.server.connections import ConnectionSlots
from satchel.agent.server.errors import (
    BadRequestError,
    ListenAddressError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    RequestError,
    ServerError,
)
from satchel.agent.server.inference import InferenceService
from satchel.agent.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from satchel.agent.server.protocol import HEADER_LENGTH

log = logging.getLogger(__name__)

JSON = "application/json"
_MODEL = r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?"
_ROUTES: list[tuple[re.Pattern[str], str, str]] = [
    (re.compile(r"/v2/?"), "GET", "server_metadata"),
    (re.compile(r"/v2/health/live"), "GET", "live"),
    (re.compile(r"/v2/health/ready"), "GET", "ready"),
    (re.compile(_MODEL), "GET", "model_metadata"),
    (re.compile(_MODEL + r"/ready"), "GET", "model_ready"),
    (re.compile(_MODEL + r"/infer"), "POST", "infer"),
    (re.compile(r"/metrics"), "GET", "metrics"),
]


def parse_listen(listen: str) -> tuple[str, int]:
    """"HOST:PORT" or "[V6HOST]:PORT" as (host, port). Raises ListenAddressError."""
    match = re.fullmatch(r"\[(?P<v6>[^\]]+)\]:(?P<p6>\d+)|(?P<host>[^:]+):(?P<port>\d+)", listen)
    if not match:
        raise ListenAddressError(f"listen address {listen!r} is not HOST:PORT")
    host = match["v6"] or match["host"]
    port = int(match["p6"] or match["port"])
    if port > 65535:
        raise ListenAddressError(f"listen address {listen!r}: port {port} is out of range")
    return host, port


class _Response:
    __slots__ = ("status", "body", "content_type", "headers")

    def __init__(
        self, status: int, body: bytes, content_type: str = JSON,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers or {}


def _json(status: int, doc: Any) -> _Response:
    return _Response(status, json.dumps(doc, separators=(",", ":")).encode("utf-8"))


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> _Response:
    response = _json(status, {"error": message})
    response.headers.update(headers or {})
    return response


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "satchel-agent"
    server: _ServingMixin  # type: ignore[assignment]

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.config.idle_timeout_s)
        if self.connection.family in (socket.AF_INET, socket.AF_INET6):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle_one_request(self) -> None:
        """Wait for the next request as an idle connection (which a newcomer may close to
        take its slot, and which ends after idle_timeout_s), then serve it as a busy one."""
        slots = self.server.slots
        slots.idle(self.connection)
        assert isinstance(self.rfile, io.BufferedReader)  # StreamRequestHandler's rbufsize -1
        try:
            waiting = self.rfile.peek(1)
        except OSError:  # idle too long (TimeoutError), reset by the client, or closed
            waiting = b""
        if not waiting or not slots.busy(self.connection):
            self.close_connection = True
            return
        super().handle_one_request()

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib's name)
        log.debug("%s", format % args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib calls this for requests it cannot parse: answer JSON, then close."""
        self.close_connection = True
        text = message or HTTPStatus(code).phrase
        self._send(_error(code, text))

    def _handle(self, method: str) -> None:
        if method not in ("POST", "PUT"):  # no body: the request has fully arrived
            self.server.slots.working(self.connection)
        service = self.server.service
        endpoint = "other"
        try:
            path = urlsplit(self.path).path
            endpoint, params = self._route(method, path)
            response = self._dispatch(endpoint, params)
        except RequestError as e:
            response = _error(e.status, str(e), e.headers)
            if isinstance(e, PayloadTooLargeError):
                self.close_connection = True
        except Exception as e:  # a bug must cost one request, never the server
            log.exception("request %s %s failed", method, self.path[:200])
            response = _error(500, f"internal error: {type(e).__name__}")
            self.close_connection = True
        service.requests.add(endpoint, response.status)
        self._send(response, head_only=method == "HEAD")

    def _route(self, method: str, path: str) -> tuple[str, dict[str, str | None]]:
        allowed = []
        for pattern, route_method, endpoint in _ROUTES:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            if route_method == method or (method == "HEAD" and route_method == "GET"):
                groups = match.groupdict().items()
                return endpoint, {k: unquote(v) if v else None for k, v in groups}
            allowed.append(route_method)
        if allowed:
            raise MethodNotAllowedError(
                f"{method} is not allowed on {path}", {"Allow": ", ".join(sorted(set(allowed)))}
            )
        raise NotFoundError(f"no endpoint {path}")

    def _dispatch(self, endpoint: str, params: dict[str, str | None]) -> _Response:
        service = self.server.service
        name, version = params.get("name"), params.get("version")
        if endpoint == "live":
            return _json(200, {"live": True})
        if endpoint == "ready":
            ready = service.is_ready()
            return _json(200 if ready else 503, {"ready": ready})
        if endpoint == "server_metadata":
            return _json(200, service.server_metadata())
        if endpoint == "metrics":
            return _Response(200, service.metrics_text().encode("utf-8"), METRICS_CONTENT_TYPE)
        assert name is not None
        if endpoint == "model_metadata":
            return _json(200, service.model_metadata(name, version))
        if endpoint == "model_ready":
            return _json(200, service.model_ready(name, version))
        body = self._read_body()
        header_length = self._header_length()
        data, json_length = service.infer(name, version, body, header_length)
        if json_length is None:
            return _Response(200, data)
        return _Response(
            200, data, "application/octet-stream", {HEADER_LENGTH: str(json_length)}
        )

    def _header_length(self) -> int | None:
        value = self.headers.get(HEADER_LENGTH)
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            raise BadRequestError(f"{HEADER_LENGTH} must be an integer") from None

    def _read_body(self) -> bytes:
        limit = self.server.config.max_body_bytes
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise BadRequestError("chunked request bodies are not supported; send Content-Length")
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            self.close_connection = True
            raise BadRequestError("Content-Length must be an integer") from None
        if length < 0:
            self.close_connection = True
            raise BadRequestError("Content-Length must not be negative")
        if length > limit:
            raise PayloadTooLargeError(f"request body of {length} bytes is over {limit}")
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            raise BadRequestError("the request body ended early")
        self.server.slots.working(self.connection)
        return self._decoded(body, limit)

    def _decoded(self, body: bytes, limit: int) -> bytes:
        encoding = (self.headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding == "identity":
            return body
        wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding)
        if wbits is None:
            raise BadRequestError(f"Content-Encoding {encoding[:20]!r} is not supported")
        decompressor = zlib.decompressobj(wbits)
        try:
            data = decompressor.decompress(body, limit + 1)
        except zlib.error as e:
            raise BadRequestError(f"request body is not valid {encoding}: {e}") from None
        if len(data) > limit:
            raise PayloadTooLargeError(f"decompressed request body is over {limit} bytes")
        return data

    def _send(self, response: _Response, *, head_only: bool = False) -> None:
        status = HTTPStatus(response.status)
        head = [
            f"HTTP/1.1 {status.value} {status.phrase}",
            f"Server: {self.server_version}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
        ]
        head.extend(f"{k}: {v}" for k, v in response.headers.items())
        if self.close_connection:
            head.append("Connection: close")
        self.log_request(status.value, len(response.body))
        # One write: headers and body in separate segments would meet Nagle's delay.
        body = b"" if head_only else response.body
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)


class _ServingMixin:
    """What the handler needs from its server."""

    service: InferenceService
    config: ServerConfig
    slots: ConnectionSlots


class _BoundedThreadingMixIn(socketserver.BaseServer):
    """socketserver's ThreadingMixIn with a bound: a daemon thread per connection, and no
    connection accepted past `slots` until one holding a slot closes (or makes room)."""

    slots: ConnectionSlots
    config: ServerConfig
    _stopping: threading.Event

    def process_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        assert isinstance(request, socket.socket)  # stream servers only
        if not self.slots.take(request, self._stopping, self.config.listener_poll_s):
            self.shutdown_request(request)
            return
        thread = threading.Thread(
            target=self._serve_connection, args=(request, client_address),
            name="satchel-http-connection", daemon=True,
        )
        try:
            thread.start()
        except BaseException:  # no thread to free it: free it here
            self.slots.release(request)
            raise

    def _serve_connection(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self.slots.release(request)

    def shutdown(self) -> None:
        self._stopping.set()  # a listener waiting for a slot gives up
        super().shutdown()

    def server_close(self) -> None:
        super().server_close()
        self.slots.close()


class TcpServer(_BoundedThreadingMixIn, _ServingMixin, socketserver.TCPServer):
    """`http.server.ThreadingHTTPServer` without its reverse DNS look-up at bind time, and
    with a bound on connections. `slots` may be shared with the Unix-socket listener."""

    allow_reuse_address = True

    def __init__(
        self, listen: str, service: InferenceService, config: ServerConfig,
        slots: ConnectionSlots | None = None,
    ) -> None:
        host, port = parse_listen(listen)
        self.service = service
        self.config = config
        self.slots = slots if slots is not None else ConnectionSlots(
            config.max_connections, config.read_deadline_s
        )
        self._stopping = threading.Event()
        self.request_queue_size = config.listen_backlog
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            super().__init__((host, port), _Handler)
        except OSError as e:
            raise ListenAddressError(f"cannot listen on {listen}: {e.strerror or e}") from e

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"


class UnixServer(_BoundedThreadingMixIn, _ServingMixin, socketserver.UnixStreamServer):
    def __init__(
        self, path: Path, service: InferenceService, config: ServerConfig,
        slots: ConnectionSlots | None = None,
    ) -> None:
        self.service = service
        self.config = config
        self.slots = slots if slots is not None else ConnectionSlots(
            config.max_connections, config.read_deadline_s
        )
        self._stopping = threading.Event()
        self.request_queue_size = config.listen_backlog
        self.path = Path(path)
        _clear_stale_socket(self.path)
        try:
            super().__init__(str(self.path), _Handler)
            os.chmod(self.path, config.socket_mode)
        except OSError as e:
            raise ListenAddressError(f"cannot listen on {self.path}: {e.strerror or e}") from e

    def server_close(self) -> None:
        super().server_close()
        try:
            if stat.S_ISSOCK(self.path.lstat().st_mode):
                self.path.unlink()
        except FileNotFoundError:
            pass


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

