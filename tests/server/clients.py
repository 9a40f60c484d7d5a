"""A client of the inference server: infer request bodies, raw HTTP over its Unix socket,
threads that keep it loaded, and its Prometheus metrics read back."""

from __future__ import annotations

import json
import re
import socket
import threading
from pathlib import Path
from typing import Any

import numpy as np
import requests


def infer_body(x: np.ndarray, *, name: str = "input", **extra: Any) -> bytes:
    doc = {
        "inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32",
                    "data": x.ravel().tolist()}],
        **extra,
    }
    return json.dumps(doc).encode()


def unix_request(
    path: Path, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request over a Unix socket, by hand: (status, headers, body)."""
    head = [f"{method} {target} HTTP/1.1", "Host: localhost", f"Content-Length: {len(body)}",
            "Connection: close"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    header_blob, _, payload = raw.partition(b"\r\n\r\n")
    lines = header_blob.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    parsed = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        parsed[key.strip().lower()] = value.strip()
    return status, parsed, payload


class LoadThreads:
    """Threads sending infer requests in a loop; counts successes and keeps failures."""

    def __init__(self, url: str, body: bytes, threads: int = 3) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.ok = 0
        self.failures: list[str] = []
        self.versions: set[str] = set()
        self._threads = [
            threading.Thread(target=self._loop, args=(requests.Session(), url, body), daemon=True)
            for _ in range(threads)
        ]

    def _loop(self, session: Any, url: str, body: bytes) -> None:
        while not self._stop.is_set():
            try:
                response = session.post(url, data=body, timeout=10)
                if response.status_code == 200:
                    version = response.json()["model_version"]
                    with self._lock:
                        self.ok += 1
                        self.versions.add(version)
                else:
                    with self._lock:
                        self.failures.append(f"{response.status_code} {response.text[:200]}")
            except Exception as e:  # noqa: BLE001 - any failure is what the test counts
                with self._lock:
                    self.failures.append(repr(e))

    def __enter__(self) -> LoadThreads:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text as {(name, labels): value}; asserts every sample line is
    `name{labels} value` (comments aside)."""
    sample = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)')
    label = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    parsed = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = sample.fullmatch(line)
        assert match, f"not a metrics sample line: {line!r}"
        labels = frozenset(label.findall(match[3] or ""))
        parsed[(match[1], labels)] = float(match[4])
    return parsed


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 when none)."""
    wanted = set(labels.items())
    return sum(
        value for (n, have), value in parse_metrics(text).items()
        if n == name and wanted <= have
    )
