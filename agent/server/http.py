"""HTTP/1.1 as bytes in, objects out, for the inference server's event loop: request heads
parsed, bodies framed by Content-Length, responses encoded; no I/O.

What the server speaks: keep-alive (HTTP/1.1 by default, HTTP/1.0 when asked), pipelined
requests answered in order, `Expect: 100-continue`, bodies by Content-Length only (chunked
request bodies are refused: every Open Inference Protocol client sends a length).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote, urlsplit

from satchel.agent.server.errors import (
    BadRequestError,
    ListenAddressError,
    PayloadTooLargeError,
)

JSON = "application/json"
SERVER_NAME = "satchel-agent"
HEAD_END = b"\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


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


@dataclass(frozen=True)
class RequestHead:
    method: str
    target: str
    version: str  # "HTTP/1.1" or "HTTP/1.0"
    headers: dict[str, str]  # names in lower case; a repeated header keeps its last value
    body_length: int

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection

    @property
    def expects_continue(self) -> bool:
        return self.headers.get("expect", "").lower() == "100-continue" and self.body_length > 0


def find_head_end(buffer: bytes | bytearray, start: int = 0) -> int:
    """Index just past the blank line ending a request head in `buffer`, or -1."""
    at = buffer.find(HEAD_END, start)
    return -1 if at < 0 else at + len(HEAD_END)


def parse_head(raw: bytes, *, max_body_bytes: int) -> RequestHead:
    """Parse a request head (request line and headers, up to and including the blank line).

    Raises BadRequestError for anything that is not an HTTP/1.x request head, and
    PayloadTooLargeError when the declared body is longer than `max_body_bytes`.
    """
    try:
        text = raw.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise BadRequestError("the request head is not text") from None
    lines = text.split("\r\n")
    while lines and lines[0] == "":  # robustness: blank lines before a request are skipped
        lines.pop(0)
    parts = lines[0].split(" ") if lines else []
    if len(parts) != 3 or parts[0] not in _METHODS or not parts[2].startswith("HTTP/1."):
        raise BadRequestError(f"bad request line {lines[0][:60]!r}" if lines else "empty request")
    method, target, version = parts
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise BadRequestError(f"unsupported HTTP version {version[:20]!r}")
    if not target.startswith("/"):
        raise BadRequestError("the request target must be a path")
    headers: dict[str, str] = {}
    lengths: set[str] = set()
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            raise BadRequestError(f"bad header line {line[:60]!r}")
        key = name.lower()
        headers[key] = value.strip()
        if key == "content-length":
            lengths.add(value.strip())
    if "transfer-encoding" in headers:
        raise BadRequestError("chunked request bodies are not supported; send Content-Length")
    if len(lengths) > 1:
        raise BadRequestError("conflicting Content-Length headers")
    body_length = _content_length(headers.get("content-length", "0"))
    if body_length > max_body_bytes:
        raise PayloadTooLargeError(
            f"request body of {body_length} bytes is over {max_body_bytes}"
        )
    return RequestHead(method, target, version, headers, body_length)


def _content_length(value: str) -> int:
    if not value.isdigit():  # refuses signs, spaces and non-ASCII digits alike
        raise BadRequestError("Content-Length must be a non-negative integer")
    return int(value)


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)
    close: bool = False  # close the connection once this response is written
    request_id: str | None = None  # the id the request carried (infer's `id`), for the log


def json_response(status: int, doc: Any) -> Response:
    return Response(status, json.dumps(doc, separators=(",", ":")).encode("utf-8"))


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None, *, close: bool = False
) -> Response:
    response = json_response(status, {"error": message})
    response.headers.update(headers or {})
    response.close = close
    return response


def encode_response(
    response: Response, *, head_only: bool = False, keep_alive_1_0: bool = False
) -> bytes:
    """Status line, headers and body in one buffer (one write: headers and body in separate
    segments would meet Nagle's delay)."""
    first = _first_lines.get(response.status)
    if first is None:
        status = HTTPStatus(response.status)
        first = _first_lines[response.status] = (
            f"HTTP/1.1 {status.value} {status.phrase}\r\nServer: {SERVER_NAME}\r\n")
    head = [first, "Content-Type: ", response.content_type,
            "\r\nContent-Length: ", str(len(response.body)), "\r\n"]
    for k, v in response.headers.items():
        head += (k, ": ", v, "\r\n")
    if response.close:
        head.append("Connection: close\r\n")
    elif keep_alive_1_0:
        head.append("Connection: keep-alive\r\n")
    head.append("\r\n")
    encoded = "".join(head).encode("latin-1")
    return encoded if head_only else encoded + response.body


_first_lines: dict[int, str] = {}  # status -> its status line and the Server header


def route_params(groups: dict[str, str | None]) -> dict[str, str | None]:
    """Route parameters with their percent escapes undone."""
    return {k: unquote(v) if v else None for k, v in groups.items()}
