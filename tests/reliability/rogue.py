"""A compromised manager, or a LAN mirror in an attacker's hands, on 127.0.0.1.

It speaks the agent's side of docs/API.md (enrollment, check-in, trust roots by version,
downloads) but answers whatever the test sets: offers of forged or replayed bundles, old trust
roots, bytes that are not what it announced, answers that never end or come a byte at a time.
It counts what it sent, so a test can tell where the device stopped reading.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.reliability.kit import sha256_of

WHOLE, ENDLESS, TRICKLE, SILENT = "whole", "endless", "trickle", "silent"
ENDLESS_CAP_BYTES = 512 * 1024 * 1024  # bytes: the server gives up on its own past this
CHUNK_BYTES = 64 * 1024  # bytes per write of an endless answer


@dataclass
class Served:
    """How one URL answers: `data` then `extra` (more than announced); ENDLESS keeps sending
    zeros after them; TRICKLE sends one byte every `trickle_s`; SILENT never answers."""

    data: bytes
    mode: str = WHOLE
    extra: bytes = b""
    trickle_s: float = 0.05  # seconds between two bytes


class RogueManager:
    """The server; `offer()` what to install, set `roots` / `trust_version`, read `events()`."""

    def __init__(self) -> None:
        self.offers: list[dict[str, Any]] = []
        self.files: dict[str, Served] = {}
        self.roots: dict[int, bytes | Served] = {}  # trust root documents by version
        self.trust_version: int | None = None
        self.version_url = "/mirror/roots/{version}.json"
        self.checkins: list[dict[str, Any]] = []
        self.sent: dict[str, int] = defaultdict(int)  # bytes of body sent, per path
        self.closed = threading.Event()
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.closed.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

    def offer(self, channel: str, version: str, sequence: int, data: bytes, *,
              sha256: str | None = None, size: int | None = None,
              served: Served | None = None, deployment_id: int = 7) -> str:
        """Offer `data` as the given release (the announced sha256 and size default to the
        truth); it is served as `served` says. Replaces earlier offers. Returns the URL path."""
        path = f"/mirror/bundles/{len(self.files)}.satchel"
        self.files[path] = served or Served(data)
        self.offers = [{
            "channel": channel, "version": version, "sequence": sequence,
            "bundle_sha256": sha256 or sha256_of(data),
            "size": len(data) if size is None else size, "url": path,
            "deployment_id": deployment_id,
        }]
        return path

    def events(self) -> list[dict[str, Any]]:
        """Every event the device delivered, in order."""
        with self._lock:
            return [e for body in self.checkins for e in body.get("events") or []]

    def trust(self) -> dict[str, Any]:
        return {"version": self.trust_version, "root_url": "/mirror/root.json",
                "version_url": self.version_url}

    def record(self, body: dict[str, Any]) -> None:
        with self._lock:
            self.checkins.append(body)


def _handler(rogue: RogueManager) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one answer per connection; the end is the close

        def log_message(self, *args: object) -> None:
            pass

        def _json(self, status: int, doc: dict[str, Any]) -> None:
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            return dict(json.loads(self.rfile.read(length) or b"{}"))

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            if self.path == "/api/v1/enroll":
                body = self._body()
                device = body["device_id"]
                self._json(201, {"device_id": device, "token": "sat_dev_rogue",
                                 "checkin_url": f"/api/v1/devices/{device}/checkin",
                                 "poll_interval_s": 0.2, "trust": rogue.trust()})
            elif self.path.endswith("/checkin"):
                body = self._body()
                rogue.record(body)
                self._json(200, {"install": rogue.offers, "trust": rogue.trust(),
                                 "poll_interval_s": 0.2,
                                 "events": {"recorded": len(body.get("events") or []),
                                            "duplicate": 0}})
            else:
                self._json(404, {"error": {"code": "not_found", "message": "no"}})

        def do_GET(self) -> None:  # noqa: N802
            root = next((v for v in rogue.roots
                         if rogue.version_url.format(version=v) == self.path), None)
            if root is not None:
                document = rogue.roots[root]
                if isinstance(document, Served):
                    self._serve(self.path, document)
                else:
                    self._send_whole(self.path, document)
            elif self.path in rogue.files:
                self._serve(self.path, rogue.files[self.path])
            else:
                self._json(404, {"error": {"code": "not_found", "message": "no"}})

        def _send_whole(self, path: str, data: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            rogue.sent[path] += len(data)

        def _serve(self, path: str, served: Served) -> None:
            try:
                if served.mode == SILENT:
                    rogue.closed.wait(60)
                    return
                self.send_response(200)
                if served.mode in (WHOLE, TRICKLE):
                    self.send_header("Content-Length", str(len(served.data) + len(served.extra)))
                self.end_headers()
                if served.mode == TRICKLE:
                    self._trickle(path, served)
                    return
                self._write(path, served.data + served.extra)
                while served.mode == ENDLESS and rogue.sent[path] < ENDLESS_CAP_BYTES:
                    self._write(path, bytes(CHUNK_BYTES))
            except OSError:
                pass  # the device hung up: what we wanted to see

        def _write(self, path: str, data: bytes) -> None:
            self.wfile.write(data)
            self.wfile.flush()
            rogue.sent[path] += len(data)

        def _trickle(self, path: str, served: Served) -> None:
            for i in range(len(served.data)):
                if rogue.closed.is_set():
                    return
                self._write(path, served.data[i : i + 1])
                time.sleep(served.trickle_s)

    return Handler
