"""The latency tail of a server at one client, as the server makes it, and the host's floor.

At one client, wrk's latencies hold wrk's own wake-ups: between requests its thread sleeps in
epoll, and on a VM an idle vCPU woken by the server's answer takes from tens of
microseconds to over a millisecond to run again. That lands in the tail of any server, the
one below (`serve`) that answers a canned response without reading what it is sent included:
on a 2-vCPU VM it shows p99/p50 of 4-15 under wrk. So the tail at one client is measured
here by a client that never sleeps: one keep-alive connection, a non-blocking socket read
in a loop until the whole answer is in, timed with perf_counter_ns. What remains in its tail
is the server's doing (and the host's preemptions, which the canned server measures).

`python -m bench.tail_probe serve PORT`: the canned server (the floor), until killed.
`python -m bench.tail_probe probe PORT PATH BODY_FILE SECONDS`: one JSON line, latencies in ms.
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import sys
import time
from pathlib import Path
from typing import Any

WARMUP_REQUESTS = 200
CANNED_BODY = (b'{"model_name":"bench","model_version":"1.0.1","outputs":[{"name":"output",'
               b'"datatype":"FP32","shape":[1,10],"data":[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,'
               b'0.9,1.0]}]}')
CANNED = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
          + str(len(CANNED_BODY)).encode() + b"\r\n\r\n" + CANNED_BODY)


class ProbeError(Exception):
    pass


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    raise ProbeError("an answer without Content-Length (the probe reads no chunked bodies)")


def _split(buffer: bytes) -> tuple[bytes, bytes] | None:
    """(one whole HTTP message, what follows it) from `buffer`, or None if incomplete."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    total = end + 4 + _content_length(buffer[:end])
    if len(buffer) < total:
        return None
    return buffer[:total], buffer[total:]


def serve(port: int) -> None:
    """Answer every request on 127.0.0.1:`port` with CANNED, reading only its framing."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    listener.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, None)
    pending: dict[socket.socket, bytes] = {}
    while True:
        for key, _ in selector.select():
            if key.data is None:
                conn, _ = listener.accept()
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                selector.register(conn, selectors.EVENT_READ, True)
                pending[conn] = b""
                continue
            conn = key.fileobj  # type: ignore[assignment]
            try:
                data = conn.recv(1 << 16)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                selector.unregister(conn)
                conn.close()
                pending.pop(conn, None)
                continue
            buffer = pending[conn] + data
            while (parts := _split(buffer)) is not None:
                buffer = parts[1]
                conn.sendall(CANNED)
            pending[conn] = buffer


def probe(port: int, path: str, body: bytes, seconds: float) -> dict[str, Any]:
    """Latencies of back-to-back POSTs of `body` to `path` on one keep-alive connection,
    for `seconds` after a warm-up, read without ever sleeping."""
    request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
               ).encode() + body
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    clock = time.perf_counter_ns
    leftover = b""

    def once() -> int:
        nonlocal leftover
        started = clock()
        sock.sendall(request)
        buffer = leftover
        while (parts := _split(buffer)) is None:
            try:
                data = sock.recv(1 << 16)
            except BlockingIOError:
                continue
            if not data:
                raise ProbeError("the server closed the connection")
            buffer += data
        took = clock() - started
        answer, leftover = parts
        if not answer.startswith(b"HTTP/1.1 200"):
            raise ProbeError(f"the server answered {answer[:40]!r}")
        return took

    for _ in range(WARMUP_REQUESTS):
        once()
    times: list[int] = []
    deadline = clock() + int(seconds * 1e9)
    while clock() < deadline:
        times.append(once())
    sock.close()
    times.sort()

    def quantile(q: float) -> float:
        return times[min(len(times) - 1, int(q * len(times)))] / 1e6

    p50 = quantile(0.50)
    return {"requests": len(times), "p50_ms": round(p50, 4), "p90_ms": round(quantile(0.9), 4),
            "p99_ms": round(quantile(0.99), 4), "max_ms": round(times[-1] / 1e6, 4),
            "p99_over_p50": round(quantile(0.99) / p50, 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("port", type=int)
    p = sub.add_parser("probe")
    p.add_argument("port", type=int)
    p.add_argument("path")
    p.add_argument("body_file", type=Path)
    p.add_argument("seconds", type=float)
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.port)
        return
    try:
        print(json.dumps(probe(args.port, args.path, args.body_file.read_bytes(), args.seconds)))
    except (OSError, ProbeError) as e:
        raise SystemExit(f"tail probe: {e}") from None


if __name__ == "__main__":
    sys.exit(main())
