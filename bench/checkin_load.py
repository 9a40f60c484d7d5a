"""Load generators for bench/bench_checkin.py, and the CPU accounting around them.

`wrk` (a C load generator; Debian package `wrk`) drives the check-ins with `checkin.lua`,
rotating over every device's credential and body; it needs a small fraction of a core, which
matters on a 2-core machine shared with the server and the database. Without wrk, a Python
asyncio generator does the same work at about twice wrk's CPU per request.
Both report: requests, non-2xx answers, socket errors and latency percentiles in microseconds.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import random
import shutil
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

LUA_SCRIPT = Path(__file__).with_name("checkin.lua")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def write_requests(path: Path, checkins: list[tuple[str, str, dict[str, Any]]]) -> None:
    """One "path<TAB>token<TAB>body" line per (device_id, token, body), for checkin.lua."""
    with open(path, "w", encoding="utf-8") as f:
        for device_id, token, body in checkins:
            f.write(f"/api/v1/devices/{device_id}/checkin\t{token}\t{json.dumps(body)}\n")


def run_wrk(
    url: str,
    requests_file: Path,
    seconds: float,
    connections: int,
    event_ratio: float,
    tag: str,
    threads: int = 1,
) -> dict[str, Any]:
    """Drive check-ins with wrk for `seconds`; return checkin.lua's summary."""
    cmd = [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA_SCRIPT),
        url,
        "--",
        str(requests_file),
        str(event_ratio),
        tag,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 60)
    summary: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return summary


# --- the Python fallback ------------------------------------------------------------------


async def _connection(
    host: str,
    port: int,
    reqs: list[tuple[bytes, bytes]],
    start: int,
    deadline: float,
    event_ratio: float,
    tag: str,
    lat: list[float],
    stats: dict[str, int],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    rng = random.Random(start)
    i = start
    while time.perf_counter() < deadline:
        head, body = reqs[i % len(reqs)]
        i += 1
        if event_ratio and rng.random() < event_ratio:
            ev = {
                "id": f"bench-{tag}-{start}-{i}",
                "kind": "health",
                "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "channel": "vision",
                "sequence": 0,
                "figures": {"count": 60, "errors": 0, "nan": 0, "p95_ms": 3.5},
            }
            body = body.replace(b'"events": []', b'"events": [' + json.dumps(ev).encode() + b"]")
        t0 = time.perf_counter()
        writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        status = await reader.readline()
        length = 0
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await reader.readexactly(length)
        lat.append(time.perf_counter() - t0)
        key = "ok" if status.split(b" ")[1] == b"200" else "non2xx"
        stats[key] = stats.get(key, 0) + 1
    writer.close()


def _python_loadgen(
    host: str,
    port: int,
    checkins: list[tuple[str, str, dict[str, Any]]],
    seconds: float,
    connections: int,
    event_ratio: float,
    tag: str,
    out: Any,
) -> None:
    reqs = []
    for device_id, token, body in checkins:
        head = (
            f"POST /api/v1/devices/{device_id}/checkin HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        )
        reqs.append((head.encode(), json.dumps(body).encode()))
    random.Random(1).shuffle(reqs)
    lat: list[float] = []
    stats: dict[str, int] = {}

    async def main() -> None:
        deadline = time.perf_counter() + seconds
        step = max(1, len(reqs) // connections)
        await asyncio.gather(
            *(
                _connection(host, port, reqs, k * step, deadline, event_ratio, tag, lat, stats)
                for k in range(connections)
            )
        )

    t0 = time.perf_counter()
    asyncio.run(main())
    elapsed = time.perf_counter() - t0
    lat.sort()

    def pct(q: float) -> int:
        return int(lat[min(len(lat) - 1, int(q * len(lat)))] * 1e6) if lat else 0

    out.put(
        {
            "requests": len(lat),
            "duration_us": int(elapsed * 1e6),
            "non2xx": stats.get("non2xx", 0),
            "socket_errors": 0,
            "p50_us": pct(0.50),
            "p90_us": pct(0.90),
            "p99_us": pct(0.99),
            "max_us": int(lat[-1] * 1e6) if lat else 0,
        }
    )


def run_python(
    host: str,
    port: int,
    checkins: list[tuple[str, str, dict[str, Any]]],
    seconds: float,
    connections: int,
    event_ratio: float,
    tag: str,
) -> dict[str, Any]:
    """The same load as `run_wrk`, from a Python asyncio process."""
    queue: multiprocessing.Queue[Any] = multiprocessing.Queue()
    proc = multiprocessing.Process(
        target=_python_loadgen,
        args=(host, port, checkins, seconds, connections, event_ratio, tag, queue),
    )
    proc.start()
    result: dict[str, Any] = queue.get(timeout=seconds + 120)
    proc.join()
    return result


# --- CPU accounting ------------------------------------------------------------------------


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) used so far by the live processes under `root`."""
    parents: dict[int, int] = {}
    used: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
        used[int(entry)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += used.get(pid, 0.0)
        todo += children.get(pid, [])
    return total


def children_cpu_s() -> float:
    """CPU seconds of this process's finished children (the load generator)."""
    t = os.times()
    return t.children_user + t.children_system
