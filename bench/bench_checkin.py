"""Check-in throughput of the real manager: `satchel serve` under load from another process.

    python -m bench.bench_checkin --db sqlite|postgres --devices N --seconds S

Sets up a throwaway data dir (and, for PostgreSQL, a private cluster unless
SATCHEL_BENCH_PG_URL is given), migrates it, registers N devices with credentials in bulk,
stores a bundle and deploys it to every device (so each check-in evaluates a deployment
target), starts `satchel serve` (several worker processes on PostgreSQL), then a separate
load-generator process keeps `--concurrency` keep-alive HTTP connections busy, each device
checking in with its status and health (a fraction with new events). Prints one JSON object:
check-ins/s, p50/p90/p99 latency, errors, and the setup.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

WARMUP_S = 2.0  # seconds of load before measuring
PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"


def _pg_cluster(tmp: Path) -> tuple[str, list[str]]:
    """Start a private PostgreSQL on a Unix socket in `tmp`; return (url, stop command)."""
    import glob

    bindir = Path(sorted(glob.glob(PG_BIN_GLOB))[-1])
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if os.geteuid() == 0:
        shutil.chown(tmp, "postgres", "postgres")
    data = tmp / "pg"
    subprocess.run(
        [
            *as_pg,
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
    )
    opts = f"-k {tmp} -c listen_addresses='' -c max_connections=300 -c shared_buffers=256MB"
    subprocess.run(
        [
            *as_pg,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(tmp / "pg.log"),
            "-o",
            opts,
            "-w",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    stop = [*as_pg, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]
    return f"postgresql+psycopg://postgres@/postgres?host={tmp}", stop


def _bundle(path: Path, key: Any) -> None:
    from bundles.manifest import Compatibility, Manifest, ModelEntry, TensorInfo
    from bundles.pack import Payload, write_bundle

    manifest = Manifest(
        name="vision",
        version="1.0.0",
        sequence=1,
        created=datetime.now(timezone.utc).replace(microsecond=0),
        files=(),
        models=(
            ModelEntry(
                "main",
                "onnxruntime",
                "model.onnx",
                (TensorInfo("x", "FP32", (1, 4)),),
                (TensorInfo("y", "FP32", (1, 2)),),
            ),
        ),
        smoke_tests=(),
        compatibility=Compatibility(device_classes=("edge-box",)),
    )
    with open(path, "wb") as f:
        write_bundle(f, manifest, [Payload("model.onnx", os.urandom(4096))], [key])


def setup(data_dir: Path, url: str, devices: int) -> list[tuple[str, str]]:
    """Migrate, trust, register `devices` devices, deploy a bundle to all; return
    [(device_id, token)]."""
    import sqlalchemy as sa

    from bundles.keys import SigningKey
    from bundles.trust import make_root, sign_root
    from manager import db as database
    from manager.auth import DEVICE, hash_token, new_token
    from manager.config import load_config
    from manager.models import Device
    from manager.services import bundles, deployments, trust
    from manager.services.deployments import Selectors
    from manager.store import BundleStore

    config = load_config(data_dir=data_dir, database_url=url)
    data_dir.mkdir(parents=True, exist_ok=True)
    database.upgrade(config)
    root_key, signing = SigningKey.generate(), SigningKey.generate()
    root_json = sign_root(make_root(1, [root_key.public], [signing.public]), [root_key])
    db = database.open_database(config)
    now = datetime.now(timezone.utc)
    db.run(lambda s: trust.import_roots(s, [root_json]))
    creds = [(f"dev-{i:06d}", new_token(DEVICE)) for i in range(devices)]
    pub = SigningKey.generate().public.raw.hex()
    rows = [
        {
            "id": d,
            "device_class": "edge-box",
            "arch": "x86_64",
            "agent_version": "0.1.0",
            "public_key": pub,
            "token_hash": hash_token(t),
            "enrolled_at": now,
        }
        for d, t in creds
    ]
    with db.transaction() as s:
        for i in range(0, len(rows), 5000):
            s.execute(sa.insert(Device), rows[i : i + 5000])
    bundle_path = data_dir / "b.satchel"
    _bundle(bundle_path, signing)
    store = BundleStore(config.store_dir)
    with db.transaction() as s, open(bundle_path, "rb") as f:
        bundles.add(s, store, f, now, config.max_bundle_bytes)
    db.run(lambda s: deployments.create(s, "vision:1.0.0", Selectors(), "100%", 0.95, 0.1, now).id)
    db.dispose()
    return creds


def _requests(host: str, port: int, creds: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """Per device: the HTTP request head (without Content-Length) and a body template."""
    out = []
    for device_id, token in creds:
        status = {
            "device_id": device_id,
            "device_class": "edge-box",
            "channels": {
                "vision": {
                    "active": {"version": "0.9.0", "sequence": 0},
                    "releases": [{"version": "0.9.0", "sequence": 0}],
                    "state": "active",
                }
            },
        }
        body = {
            "agent_version": "0.1.0",
            "trust_root_version": 1,
            "status": status,
            "health": {"vision": {"count": 1000, "errors": 0, "nan": 0, "p95_ms": 3.5}},
            "events": [],
        }
        head = (
            f"POST /api/v1/devices/{device_id}/checkin HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        )
        out.append((head.encode(), json.dumps(body).encode()))
    return out


async def _connection(
    host: str,
    port: int,
    reqs: list[tuple[bytes, bytes]],
    order: list[int],
    start: int,
    measure_from: float,
    deadline: float,
    event_ratio: float,
    lat: list[float],
    stats: dict[str, int],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    rng = random.Random(start)
    i = start
    while True:
        now = time.perf_counter()
        if now >= deadline:
            break
        head, body = reqs[order[i % len(order)]]
        i += 1
        if event_ratio and rng.random() < event_ratio:
            ev = {
                "id": f"bench-{start}-{i}",
                "kind": "heartbeat",
                "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
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
        t1 = time.perf_counter()
        if t0 >= measure_from:
            lat.append(t1 - t0)
            key = "ok" if status.split(b" ")[1] == b"200" else "errors"
            stats[key] = stats.get(key, 0) + 1
    writer.close()


def loadgen(
    host: str,
    port: int,
    creds: list[tuple[str, str]],
    seconds: float,
    concurrency: int,
    event_ratio: float,
    out: Any,
) -> None:
    """Run in its own process: drive check-ins, put {"latencies", "ok", "errors"} on `out`."""
    reqs = _requests(host, port, creds)
    order = list(range(len(reqs)))
    random.Random(1).shuffle(order)
    lat: list[float] = []
    stats: dict[str, int] = {}

    async def main() -> None:
        t = time.perf_counter()
        measure_from, deadline = t + WARMUP_S, t + WARMUP_S + seconds
        step = max(1, len(order) // concurrency)
        await asyncio.gather(
            *(
                _connection(
                    host,
                    port,
                    reqs,
                    order,
                    k * step,
                    measure_from,
                    deadline,
                    event_ratio,
                    lat,
                    stats,
                )
                for k in range(concurrency)
            )
        )

    asyncio.run(main())
    out.put({"latencies": lat, **stats})


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="satchel-bench-"))
    stop_pg: list[str] | None = None
    pgdir = tmp
    server: subprocess.Popen[str] | None = None
    try:
        url = ""
        if args.db == "postgres":
            url = os.environ.get("SATCHEL_BENCH_PG_URL", "")
            if not url:
                pgdir = Path(tempfile.mkdtemp(prefix="satchel-bench-pg-"))
                url, stop_pg = _pg_cluster(pgdir)
        data_dir = tmp / "data"
        creds = setup(data_dir, url, args.devices)
        workers = args.workers or (2 if args.db == "postgres" else 1)
        env = {
            **os.environ,
            "SATCHEL_DATABASE_URL": url,
            "SATCHEL_LOG_REQUESTS": "false",
            "SATCHEL_DB_POOL_SIZE": str(args.threads),
        }
        server = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("satchel")),
                "--data-dir",
                str(data_dir),
                "serve",
                "--port",
                "0",
                "--workers",
                str(workers),
                "--threads",
                str(args.threads),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        line = server.stdout.readline() if server.stdout else ""
        if "listening on" not in line:
            raise SystemExit(f"manager did not start: {line!r}")
        host, port = line.split("http://")[1].split()[0].rsplit(":", 1)
        time.sleep(1.0)  # let every worker import and open its pool
        queue: multiprocessing.Queue[Any] = multiprocessing.Queue()
        proc = multiprocessing.Process(
            target=loadgen,
            args=(host, int(port), creds, args.seconds, args.concurrency, args.event_ratio, queue),
        )
        proc.start()
        result = queue.get(timeout=args.seconds + 120)
        proc.join()
        lat = sorted(result["latencies"])
        ok, errors = result.get("ok", 0), result.get("errors", 0)
        return {
            "db": args.db,
            "devices": args.devices,
            "seconds": args.seconds,
            "workers": workers,
            "threads": args.threads,
            "concurrency": args.concurrency,
            "event_ratio": args.event_ratio,
            "cores": os.cpu_count(),
            "checkins": ok,
            "errors": errors,
            "checkins_per_s": round(ok / args.seconds, 1),
            "p50_ms": round(_percentile(lat, 0.50) * 1000, 2),
            "p90_ms": round(_percentile(lat, 0.90) * 1000, 2),
            "p99_ms": round(_percentile(lat, 0.99) * 1000, 2),
            "max_ms": round((lat[-1] if lat else float("nan")) * 1000, 2),
        }
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
        if stop_pg:
            subprocess.run(stop_pg, capture_output=True)
            shutil.rmtree(pgdir, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="server processes (default: 2 on PostgreSQL, 1 on SQLite)",
    )
    parser.add_argument("--threads", type=int, default=8, help="threads per server process")
    parser.add_argument("--concurrency", type=int, default=32, help="open connections")
    parser.add_argument(
        "--event-ratio",
        type=float,
        default=0.1,
        help="fraction of check-ins carrying one new event",
    )
    print(json.dumps(run(parser.parse_args()), indent=2))


if __name__ == "__main__":
    main()
