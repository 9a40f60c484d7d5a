"""The fleet page with 10,000 devices: `GET /` of a real `satchel serve`, logged in.

    python -m bench.bench_dashboard --db sqlite|postgres|both [--devices N] [--repeat R] [--json]

Sets up a throwaway data dir (and, for PostgreSQL, a private cluster by `tests/pgcluster.py`,
the suite's, unless SATCHEL_BENCH_PG_URL is given), migrates it, and seeds a fleet in bulk SQL
as check-ins leave it: N devices in 4 classes with tags, each running a release of `vision`
(whose bundle carries a health policy) with a health summary, 12 hourly `health` events each,
a share that was rolled back, fails its policy, has not been seen for days, never reported, or
is on probation. Then it starts `satchel serve`, logs in as an admin through the login form,
and times GET of the fleet page (its first page, a later page, a search, a state filter),
after ANALYZE (the planner statistics a live database has), each `--repeat` times after one
warm-up; medians and p90 in milliseconds. How busy the machine was is recorded with
`bench/machine.py` (idle share, others' share: the server's and PostgreSQL's CPU counted as
ours, from /proc). Goal: every median under 300 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import requests

from bench import checkin_load as load
from bench.bench_checkin import tiny_bundle
from bench.machine import Quiet, wait_for_quiet
from tests import pgcluster  # the one PostgreSQL bootstrap, shared with the manager's tests

GOAL_MS = 300.0  # the fleet page must render under this, median
START_TIMEOUT_S = 60.0  # seconds the manager gets to start listening
USER, PASSWORD = "bench", "a long benchmark password"
HEALTH_EVENTS = 12  # hourly health events per device
CLASSES = ("edge-box", "cam-v2", "gateway", "kiosk")
PAGES = {  # what is timed: name -> path
    "first page": "/",
    "page 50 of 100": "/?page=50",
    "search by tag": "/?q=site-07",
    "state failing": "/?state=failing",
    "250 per page": "/?per_page=250&page=3",
}


def _kind(i: int) -> str:
    """What device i is: mostly healthy, a few of each attention state."""
    r = i % 100
    return {0: "rolled_back", 1: "failing", 2: "not_seen", 3: "never_seen", 4: "probation"}.get(
        r, "ok"
    )


def seed(data_dir: Path, url: str, devices: int) -> None:
    """Migrate, trust, add two bundles, an admin user, and `devices` devices in bulk SQL."""
    import sqlalchemy as sa

    from satchel.bundles.keys import SigningKey
    from satchel.bundles.trust import make_root, sign_root
    from satchel.manager import db as database
    from satchel.manager.config import load_config
    from satchel.manager.models import Device, DeviceChannel, DeviceTag, Event
    from satchel.manager.services import bundles, trust, users
    from satchel.manager.services.credentials import DEVICE, hash_token, new_token
    from satchel.manager.store import BundleStore

    config = load_config(data_dir=data_dir, database_url=url)
    data_dir.mkdir(parents=True, exist_ok=True)
    database.upgrade(config)
    root_key, signing = SigningKey.generate(), SigningKey.generate()
    root_json = sign_root(make_root(1, [root_key.public], [signing.public]), [root_key])
    db = database.open_database(config)
    now = datetime.now(timezone.utc)
    db.run(lambda s: trust.import_roots(s, [root_json]))
    db.run(lambda s: users.create_user(s, USER, PASSWORD))
    store = BundleStore(config.store_dir)
    for version, sequence in (("1.0.0", 1), ("1.1.0", 2)):
        path = data_dir / f"{version}.satchel"
        tiny_bundle(path, signing, version, sequence, CLASSES)
        with db.transaction() as s, open(path, "rb") as f:
            bundles.add(s, store, f, now, config.max_bundle_bytes)
    pub = SigningKey.generate().public.raw.hex()
    rows: list[dict[str, Any]] = []
    channels: list[dict[str, Any]] = []
    tags: list[dict[str, Any]] = []
    evs: list[dict[str, Any]] = []
    for i in range(devices):
        d, kind = f"dev-{i:06d}", _kind(i)
        seen = (
            None
            if kind == "never_seen"
            else now - timedelta(days=3 if kind == "not_seen" else 0, seconds=i % 60)
        )
        errors = 400 if kind == "failing" else 0
        health = {"vision": {"count": 2000, "errors": errors, "nan": 0, "p95_ms": 3.1}}
        release = {"version": "1.0.0", "sequence": 1}
        state = "probation" if kind == "probation" else "active"
        rows.append(
            {
                "id": d,
                "device_class": CLASSES[i % len(CLASSES)],
                "arch": "x86_64",
                "agent_version": "0.1.0",
                "public_key": pub,
                "token_hash": hash_token(new_token(DEVICE)),
                "enrolled_at": now - timedelta(days=30),
                "last_seen_at": seen,
                "last_via": None if seen is None else "lan",
                "state_at": seen,
                "trust_root_version": 1,
                "status": None
                if seen is None
                else {
                    "device_id": d,
                    "device_class": CLASSES[i % len(CLASSES)],
                    "channels": {
                        "vision": {"active": release, "releases": [release], "state": state}
                    },
                },
                "health": None if seen is None else health,
            }
        )
        tags.append({"device_id": d, "tag": f"site-{i % 40:02d}"})
        if seen is None:
            continue
        channels.append(
            {
                "device_id": d,
                "channel": "vision",
                "active_version": "1.0.0",
                "active_sequence": 1,
                "state": state,
                "updated_at": seen,
            }
        )
        for h in range(HEALTH_EVENTS, 0, -1):
            evs.append(
                _event(
                    d,
                    "health",
                    seen - timedelta(hours=h),
                    sequence=1,
                    version="1.0.0",
                    figures={"count": 200, "errors": 0, "nan": 0, "p95_ms": 3.0},
                )
            )
        evs.append(_event(d, "activated", seen - timedelta(days=2), sequence=1, version="1.0.0"))
        if kind == "rolled_back":
            evs.append(
                _event(
                    d,
                    "rolled_back",
                    seen - timedelta(minutes=10),
                    sequence=2,
                    version="1.1.0",
                    reason="health: nan rate 0.30 > 0.00",
                    figures={"to_version": "1.0.0"},
                )
            )
    with db.transaction() as s:
        for table, batch in (
            (Device, rows),
            (DeviceTag, tags),
            (DeviceChannel, channels),
            (Event, evs),
        ):
            for i in range(0, len(batch), 5000):
                s.execute(sa.insert(table), batch[i : i + 5000])
    # A live database has planner statistics (PostgreSQL's autovacuum, SQLite's `optimize`);
    # rows loaded in bulk a second ago have none until then.
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("ANALYZE"))
    db.dispose()


def _event(device_id: str, kind: str, at: datetime, **kw: Any) -> dict[str, Any]:
    return {
        "device_id": device_id,
        "event_id": uuid.uuid4().hex,
        "kind": kind,
        "channel": "vision",
        "occurred_at": at,
        "received_at": at,
        "via": "lan",
        "version": kw.get("version"),
        "sequence": kw.get("sequence"),
        "reason": kw.get("reason"),
        "figures": kw.get("figures"),
        "passed": None,
        "bundle_sha256": None,
        "deployment_id": None,
    }


@contextlib.contextmanager
def serve(data_dir: Path, url: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`satchel serve` (one worker, four threads) on a free port of 127.0.0.1."""
    env = {
        **os.environ,
        "SATCHEL_DATABASE_URL": url,
        "SATCHEL_LOG_REQUESTS": "false",
        "SATCHEL_CONFIG": "",
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
        "1",
        "--threads",
        "4",
    ]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = server.stdout.readline() if server.stdout else ""
        found = re.search(r"listening on (http://[\d.]+:\d+)", line)
        if found is None:
            raise SystemExit(f"manager did not start: {line!r}")
        yield server, found.group(1)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def log_in(base_url: str) -> requests.Session:
    http = requests.Session()
    form = http.get(base_url + "/login", timeout=30).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert token, "no CSRF field on the login page"
    r = http.post(
        base_url + "/login",
        timeout=30,
        allow_redirects=False,
        data={"username": USER, "password": PASSWORD, "csrf_token": token.group(1)},
    )
    assert r.status_code == 303, r.text[:200]
    return http


def time_pages(base_url: str, repeat: int) -> dict[str, dict[str, float]]:
    http = log_in(base_url)
    out: dict[str, dict[str, float]] = {}
    for name, path in PAGES.items():
        http.get(base_url + path, timeout=60).raise_for_status()  # warm-up
        took = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            r = http.get(base_url + path, timeout=60)
            took.append((time.perf_counter() - t0) * 1000)
            r.raise_for_status()
            assert 'class="devices fleet-table' in r.text, f"{path}: no fleet table"
        took.sort()
        out[name] = {
            "median_ms": round(statistics.median(took), 1),
            "p90_ms": round(took[int(0.9 * (len(took) - 1))], 1),
            "bytes": len(r.content),
        }
    return out


def run_db(db: str, devices: int, repeat: int) -> dict[str, Any]:
    with contextlib.ExitStack() as cleanup:
        tmp = Path(tempfile.mkdtemp(prefix="satchel-bench-dash-"))
        cleanup.callback(shutil.rmtree, tmp, ignore_errors=True)
        url, postmaster = "", 0
        if db == "postgres":
            url = os.environ.get("SATCHEL_BENCH_PG_URL", "")
            if not url:
                bindir = pgcluster.find_bindir()
                if bindir is None:
                    raise SystemExit(
                        "no PostgreSQL binaries found: install PostgreSQL or set "
                        "SATCHEL_BENCH_PG_URL"
                    )
                cluster = cleanup.enter_context(
                    pgcluster.private_cluster(
                        bindir, pgcluster.NO_DURABILITY, prefix="satchel-bench-pg-"
                    )
                )
                url, postmaster = cluster.url, cluster.postmaster_pid()
        t0 = time.perf_counter()
        seed(tmp / "data", url, devices)
        seed_s = time.perf_counter() - t0
        server, base_url = cleanup.enter_context(serve(tmp / "data", url))
        others_before = wait_for_quiet(timeout_s=30)
        with Quiet() as quiet:
            server0 = load.tree_cpu_s(server.pid)
            pg0 = load.tree_cpu_s(postmaster) if postmaster else 0.0
            pages = time_pages(base_url, repeat)
            quiet.extra_own_cpu_s = (load.tree_cpu_s(server.pid) - server0) + (
                (load.tree_cpu_s(postmaster) - pg0) if postmaster else 0.0
            )
        worst = max(p["median_ms"] for p in pages.values())
        return {
            "db": db,
            "devices": devices,
            "events": devices * (HEALTH_EVENTS + 1),
            "seed_s": round(seed_s, 1),
            "repeat": repeat,
            "pages": pages,
            "worst_median_ms": worst,
            "goal_ms": GOAL_MS,
            "ok": worst < GOAL_MS,
            "machine": {**quiet.report(), "others_share_before": round(others_before, 3)},
        }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--json", action="store_true", help="(the output is always JSON)")
    args = p.parse_args(argv)
    dbs = ("sqlite", "postgres") if args.db == "both" else (args.db,)
    result = {db: run_db(db, args.devices, args.repeat) for db in dbs}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
