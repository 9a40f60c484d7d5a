"""Check-in throughput of the real manager: `satchel serve` under load from another process.

    python -m bench.bench_checkin --db sqlite|postgres [--devices N] [--seconds S] [--json]

Sets up a throwaway data dir (and, for PostgreSQL, a private cluster with default durability
by `tests/pgcluster.py`, the suite's, unless SATCHEL_BENCH_PG_URL is given), migrates it,
registers N devices with credentials in bulk as a settled fleet (each has checked in before),
stores a bundle and deploys it to every device (so each check-in evaluates a deployment target
and is offered the bundle), starts `satchel serve`, then a separate load generator (wrk when
installed: `apt-get install wrk`; else Python asyncio) keeps `--concurrency` keep-alive
connections busy, each device checking in with its status and health, a fraction with a new
health event. Prints one JSON object: check-ins/s, p50/p90/p99 latency, errors, the CPU each
part used per check-in, and the setup.

The machine-independent figure is the server's CPU per check-in (`server_cpu_s_per_checkin`:
the CPU time of every `satchel serve` process, read from /proc, over the check-ins answered);
rate and latency depend on the cores and on who else uses them. Every run records the share of
the machine that was idle and the share other processes took (`machine`, bench/machine.py):
the server and PostgreSQL trees are counted as ours from /proc (they are not children the bench
reaps), the load generator as a reaped child. When others took more than `--max-others`, the
measurement is repeated (`--attempts`, each after waiting for the neighbours to calm down);
when every attempt was noisy, the result says `refused` with the shares and gives no figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import checkin_load as load
from bench.machine import DEFAULT_MAX_OTHERS, NoisyMachine, Quiet, require_quiet, wait_for_quiet
from tests import pgcluster  # the one PostgreSQL bootstrap, shared with the manager's tests

WARMUP_S = 3.0  # seconds of load before measuring
START_TIMEOUT_S = 60.0  # seconds the manager gets to start listening
QUIET_TIMEOUT_S = 60.0  # seconds to wait for the neighbours to calm down before an attempt


def _pg_cluster(synchronous_commit: str) -> contextlib.AbstractContextManager[pgcluster.Cluster]:
    """A private PostgreSQL sized for the load, with its default durability (fsync on) unless
    `synchronous_commit` is "off"."""
    bindir = pgcluster.find_bindir()
    if bindir is None:
        raise SystemExit("no PostgreSQL binaries found: install PostgreSQL or set "
                         "SATCHEL_BENCH_PG_URL")
    settings = {"max_connections": "300", "shared_buffers": "256MB",
                "synchronous_commit": synchronous_commit}
    return pgcluster.private_cluster(bindir, settings, prefix="satchel-bench-pg-")


def tiny_bundle(path: Path, key: Any, version: str = "1.0.0", sequence: int = 1,
                device_classes: tuple[str, ...] = ("edge-box",)) -> None:
    """A signed bundle of 4 KiB of random bytes as its model: what the manager stores and
    offers, for benchmarks that never run the model."""
    from satchel.bundles.manifest import Compatibility, Manifest, ModelEntry, TensorInfo
    from satchel.bundles.pack import Payload, write_bundle

    manifest = Manifest(
        name="vision",
        version=version,
        sequence=sequence,
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
        compatibility=Compatibility(device_classes=device_classes),
    )
    with open(path, "wb") as f:
        write_bundle(f, manifest, [Payload("model.onnx", os.urandom(4096))], [key])


def setup(data_dir: Path, url: str, devices: int) -> list[tuple[str, str]]:
    """Migrate, trust, register `devices` devices, deploy a bundle to all; return
    [(device_id, token)]."""
    import sqlalchemy as sa

    from satchel.bundles.keys import SigningKey
    from satchel.bundles.trust import make_root, sign_root
    from satchel.manager import db as database
    from satchel.manager.checkin.parse import parse_report
    from satchel.manager.config import load_config
    from satchel.manager.models import Device, DeviceChannel
    from satchel.manager.services import bundles, deployments, trust
    from satchel.manager.services.credentials import DEVICE, hash_token, new_token
    from satchel.manager.services.deployments import Selectors
    from satchel.manager.store import BundleStore

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
    rows, channels = [], []
    for d, t in creds:
        # a settled fleet: each device has checked in before with the state it sends now
        report = parse_report(checkin_body(d), d, 1)
        rows.append(
            {
                "id": d,
                "device_class": "edge-box",
                "arch": "x86_64",
                "agent_version": "0.1.0",
                "public_key": pub,
                "token_hash": hash_token(t),
                "enrolled_at": now,
                "last_seen_at": now,
                "last_via": "lan",
                "state_at": now,
                "status": report.status,
                "health": report.health,
                "trust_root_version": 1,
                "state_digest": report.state_digest,
            }
        )
        channels += [
            {
                "device_id": d,
                "channel": name,
                "active_version": ch.active_version,
                "active_sequence": ch.active_sequence,
                "state": ch.state,
                "updated_at": now,
            }
            for name, ch in report.channels.items()
        ]
    with db.transaction() as s:
        for i in range(0, len(rows), 5000):
            s.execute(sa.insert(Device), rows[i : i + 5000])
        for i in range(0, len(channels), 5000):
            s.execute(sa.insert(DeviceChannel), channels[i : i + 5000])
    bundle_path = data_dir / "b.satchel"
    tiny_bundle(bundle_path, signing)
    store = BundleStore(config.store_dir)
    with db.transaction() as s, open(bundle_path, "rb") as f:
        bundles.add(s, store, f, now, config.max_bundle_bytes)
    db.run(lambda s: deployments.create(s, "vision:1.0.0", Selectors(), "100%", 0.95, 0.1, now).id)
    db.dispose()
    return creds


def checkin_body(device_id: str) -> dict[str, Any]:
    """What a settled device sends: an older release of the channel being deployed, healthy."""
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
    return {
        "agent_version": "0.1.0",
        "trust_root_version": 1,
        "status": status,
        "health": {"vision": {"count": 1000, "errors": 0, "nan": 0, "p95_ms": 3.5}},
        "events": [],
    }


def _start_server(
    data_dir: Path, url: str, args: argparse.Namespace, workers: int
) -> tuple[subprocess.Popen[str], str, str]:
    """`satchel serve` on a free port of 127.0.0.1; return (process, base URL, server name)."""
    env = {
        **os.environ,
        "SATCHEL_DATABASE_URL": url,
        "SATCHEL_LOG_REQUESTS": "false",
        "SATCHEL_SERVER": args.server,
        "SATCHEL_DB_POOL_SIZE": str(args.threads),
    }
    cmd = [
        str(Path(sys.executable).with_name("satchel")),
        "--data-dir",
        str(data_dir),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--workers",
        str(workers),
        "--threads",
        str(args.threads),
    ]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    line = server.stdout.readline() if server.stdout else ""
    found = re.search(r"listening on (http://[\d.]+:\d+) .*?, (\w+), database", line)
    if found is None:
        server.kill()
        raise SystemExit(f"manager did not start: {line!r}")
    return server, found.group(1), found.group(2)


def _drive(
    base_url: str,
    requests_file: Path,
    checkins: list[tuple[str, str, dict[str, Any]]],
    args: argparse.Namespace,
    seconds: float,
    tag: str,
) -> dict[str, Any]:
    if args.loadgen == "wrk":
        return load.run_wrk(
            base_url, requests_file, seconds, args.concurrency, args.event_ratio, tag
        )
    host, port = base_url.split("//")[1].rsplit(":", 1)
    return load.run_python(
        host, int(port), checkins, seconds, args.concurrency, args.event_ratio, tag
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.loadgen == "auto":
        args.loadgen = "wrk" if load.wrk_available() else "python"
    with contextlib.ExitStack() as cleanup:
        # unwound last in, first out: the server stops, then PostgreSQL, then the temp dir goes
        tmp = Path(tempfile.mkdtemp(prefix="satchel-bench-"))
        cleanup.callback(shutil.rmtree, tmp, ignore_errors=True)
        cluster: pgcluster.Cluster | None = None
        url = ""
        if args.db == "postgres":
            url = os.environ.get("SATCHEL_BENCH_PG_URL", "")
            if not url:
                cluster = cleanup.enter_context(_pg_cluster(args.pg_synchronous_commit))
                url = cluster.url
        data_dir = tmp / "data"
        creds = setup(data_dir, url, args.devices)
        checkins = [(d, t, checkin_body(d)) for d, t in creds]
        requests_file = tmp / "checkins.tsv"
        load.write_requests(requests_file, checkins)
        # SQLite takes one writer at a time: a second process only queues on its lock
        workers = args.workers or (2 if args.db == "postgres" else 1)
        server, base_url, args.server = _start_server(data_dir, url, args, workers)
        cleanup.callback(_stop_server, server)
        _drive(base_url, requests_file, checkins, args, WARMUP_S, "warmup")
        postmaster = cluster.postmaster_pid() if cluster else 0
        shares: list[dict[str, Any]] = []  # the machine's shares of every attempt
        refusal = ""
        for _attempt in range(max(1, args.attempts)):
            wait_for_quiet(args.max_others, timeout_s=QUIET_TIMEOUT_S)
            measured, quiet = _measure(args, base_url, requests_file, checkins, server, postmaster)
            shares.append(quiet.report())
            try:
                require_quiet(quiet, args.max_others)
            except NoisyMachine as e:
                refusal = str(e)
                print(f"bench_checkin: {refusal}", file=sys.stderr, flush=True)
                continue
            return _report(args, workers, measured, quiet, shares)
        return _refused(args, workers, refusal, shares)


def _measure(
    args: argparse.Namespace,
    base_url: str,
    requests_file: Path,
    checkins: list[tuple[str, str, dict[str, Any]]],
    server: subprocess.Popen[str],
    postmaster: int,
) -> tuple[dict[str, Any], Quiet]:
    """One measured span of load: the load generator's summary with the CPU seconds each part
    used (server and PostgreSQL trees from /proc, the reaped load generator), and how busy the
    machine was meanwhile."""
    with Quiet() as quiet:
        server0 = load.tree_cpu_s(server.pid)
        pg0 = load.tree_cpu_s(postmaster) if postmaster else 0.0
        loadgen0 = load.children_cpu_s()
        result = _drive(base_url, requests_file, checkins, args, args.seconds, "measure")
        server_s = load.tree_cpu_s(server.pid) - server0
        pg_s = (load.tree_cpu_s(postmaster) - pg0) if postmaster else 0.0
        loadgen_s = load.children_cpu_s() - loadgen0
    # ours too, though not reaped children (the load generator is: Quiet counts it)
    quiet.extra_own_cpu_s = server_s + pg_s
    cpu = {"server": server_s, "postgres": pg_s if postmaster else None, "loadgen": loadgen_s}
    return {**result, "cpu_s": cpu}, quiet


def _stop_server(server: subprocess.Popen[str]) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()


def _setup(args: argparse.Namespace, workers: int) -> dict[str, Any]:
    return {
        "db": args.db,
        "postgres_synchronous_commit": args.pg_synchronous_commit
        if args.db == "postgres"
        else None,
        "devices": args.devices,
        "server": {
            "name": args.server,
            "workers": workers,
            "threads": args.threads,
        },
        "loadgen": {"name": args.loadgen, "connections": args.concurrency},
        "event_ratio": args.event_ratio,
        "cores": os.cpu_count(),
        "max_others": args.max_others,
    }


def _report(
    args: argparse.Namespace,
    workers: int,
    r: dict[str, Any],
    quiet: Quiet,
    attempts: list[dict[str, Any]],
) -> dict[str, Any]:
    total = r["requests"]
    ok = total - r["non2xx"]
    seconds = r["duration_us"] / 1e6
    cpu = r["cpu_s"]

    def per_checkin_ms(part: str) -> float | None:
        used = cpu[part]
        return None if used is None else round(used / max(1, total) * 1000, 3)

    return {
        **_setup(args, workers),
        "seconds": round(seconds, 2),
        "checkins": ok,
        "errors": r["non2xx"] + r["socket_errors"],
        "checkins_per_s": round(ok / seconds, 1),
        "p50_ms": round(r["p50_us"] / 1000, 2),
        "p90_ms": round(r["p90_us"] / 1000, 2),
        "p99_ms": round(r["p99_us"] / 1000, 2),
        "max_ms": round(r["max_us"] / 1000, 2),
        # the machine-independent figure: CPU seconds of the server processes per check-in
        "server_cpu_s_per_checkin": round(cpu["server"] / max(1, total), 7),
        "cpu_ms_per_checkin": {part: per_checkin_ms(part) for part in cpu},
        "machine": quiet.report(),
        "attempts": attempts,
    }


def _refused(
    args: argparse.Namespace, workers: int, reason: str, attempts: list[dict[str, Any]]
) -> dict[str, Any]:
    """A run with no figure: every attempt shared the machine with too busy neighbours."""
    return {
        **_setup(args, workers),
        "refused": reason,
        "machine": attempts[-1],
        "attempts": attempts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--server", choices=("auto", "granian", "waitress"), default="auto", help="HTTP server"
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="server processes (default: 2 PostgreSQL, 1 SQLite)"
    )
    parser.add_argument("--threads", type=int, default=2, help="threads per server process")
    parser.add_argument("--concurrency", type=int, default=32, help="open connections")
    parser.add_argument(
        "--loadgen", choices=("auto", "wrk", "python"), default="auto", help="load generator"
    )
    parser.add_argument(
        "--event-ratio",
        type=float,
        default=0.1,
        help="fraction of check-ins carrying one new health event",
    )
    parser.add_argument(
        "--pg-synchronous-commit",
        choices=("on", "off"),
        default="on",
        help="PostgreSQL durability of the private cluster (off: commits not waited for)",
    )
    parser.add_argument(
        "--max-others",
        type=float,
        default=DEFAULT_MAX_OTHERS,
        help="refuse a figure when other processes used more than this share of all CPUs",
    )
    parser.add_argument(
        "--attempts", type=int, default=3, help="measurements tried before refusing a figure"
    )
    parser.add_argument("--json", action="store_true", help="one JSON line (default: indented)")
    args = parser.parse_args()
    print(json.dumps(run(args), indent=None if args.json else 2))


if __name__ == "__main__":
    main()
