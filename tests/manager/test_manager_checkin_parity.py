"""The check-in's fast path stays beside its full path: the same check-in, run through the fast
path on one fresh database and through the full path on another seeded alike, leaves the same
rows (devices, their channels, events, deployments and their targets: every column) and gets
the same answer, on SQLite and PostgreSQL.

Every time comes from a fixed clock (the manager's `now` and the device's `sent_at`), so
timestamps are compared exactly, none normalised away. Each scenario also says which path
answers on the fast side, so a fast path that silently gave way every time would fail here.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from satchel.bundles.manifest import HealthPolicy
from satchel.manager import db as database
from satchel.manager.checkin.answer import CheckinResult
from satchel.manager.checkin.lan import checkin_lan
from satchel.manager.config import load_config
from satchel.manager.db import Database
from satchel.manager.models import (
    Bundle,
    Deployment,
    DeploymentTarget,
    Device,
    DeviceChannel,
    Event,
    TrustRoot,
)
from satchel.manager.services import deployments
from satchel.manager.services.credentials import hash_token
from satchel.manager.services.deployments import Selectors
from tests.manager.databases import drop_pg_database, fresh_pg_database

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)  # the world is seeded
T1 = T0 + timedelta(minutes=1)  # the check-in compared
TOKENS = {"cam-1": "sat_dev_" + "1" * 43, "cam-2": "sat_dev_" + "2" * 43}
MAX_EVENTS = 1000
OLD = ("0.9.0", 0, "active")  # what the devices run at first: (version, sequence, state)
NEW = ("1.0.0", 1, "active")  # the bundle deployed, running
# compared in this order; events by their natural key, the others by primary key
TABLES = (Device, DeviceChannel, Event, Deployment, DeploymentTarget)


def health(count: int, errors: int = 0) -> dict[str, Any]:
    return {"vision": {"count": count, "errors": errors, "nan": 0, "p95_ms": 2.0}}


def event(event_id: str, kind: str, **extra: Any) -> dict[str, Any]:
    return {"id": event_id, "kind": kind, "time": T0.isoformat(), "channel": "vision", **extra}


def sample(event_id: str) -> dict[str, Any]:
    """A health sample: stored, acted on by no deployment."""
    return event(event_id, "health", sequence=0, figures={"count": 60, "errors": 0, "nan": 0})


INSTALL_EVENTS = tuple(
    event(f"install-{kind}", kind, sequence=1, version="1.0.0", **extra)
    for kind, extra in (
        ("downloaded", {}),
        ("verified", {}),
        ("smoke_test", {"passed": True, "figures": {"max_abs_error": 0.01}}),
        ("activated", {}),
    )
)


@dataclass(frozen=True)
class Checkin:
    """One check-in of a device: what it runs and reports, by whose clock."""

    device_id: str = "cam-1"
    runs: tuple[str, int, str] = OLD
    health: dict[str, Any] = field(default_factory=lambda: health(10))
    events: tuple[dict[str, Any], ...] = ()
    sent_at: datetime | None = T1  # the device's clock
    at: datetime = T1  # the manager's clock

    def body(self) -> dict[str, Any]:
        version, sequence, state = self.runs
        channel = {"active": {"version": version, "sequence": sequence}, "state": state}
        body: dict[str, Any] = {
            "agent_version": "0.1.0",
            "status": {
                "device_id": self.device_id,
                "device_class": "edge-box",
                "channels": {"vision": channel},
            },
            "health": self.health,
            "events": list(self.events),
            "trust_root_version": 1,
        }
        if self.sent_at is not None:
            body["sent_at"] = self.sent_at.isoformat()
        return body


SETTLED = Checkin(sent_at=T0, at=T0)  # cam-1's first check-in, running OLD
UNHEALTHY_INSTALL = Checkin(  # cam-1 installs NEW, then breaks its health policy
    runs=NEW, health=health(100, 50), events=INSTALL_EVENTS, sent_at=T0, at=T0
)


@dataclass(frozen=True)
class Scenario:
    name: str
    checkin: Checkin  # run through both paths
    fast: bool  # whether the fast path answers it
    before: tuple[Checkin, ...] = (SETTLED,)  # through the full path on both databases
    deploy: tuple[tuple[str, ...], str] | None = None  # 1.0.0 to (devices, waves) at T0


SCENARIOS = [
    Scenario("unchanged_device", Checkin(health=health(70, 1)), fast=True),
    Scenario("changed_state_digest", Checkin(runs=NEW), fast=False),
    Scenario(
        "new_and_redelivered_health_samples",
        Checkin(events=(sample("sample-1"), sample("sample-2"))),
        fast=True,
        before=(dataclasses.replace(SETTLED, events=(sample("sample-1"),)),),
    ),
    Scenario(
        "install_step_event",
        Checkin(events=(event("dl-1", "downloaded", sequence=1, version="1.0.0"),)),
        fast=False,
        deploy=(("cam-1",), "100%"),
    ),
    Scenario(
        "recovered_health_figures_move_the_target",  # the fast statement writes, then gives way
        Checkin(runs=NEW, health=health(200)),
        fast=False,
        before=(UNHEALTHY_INSTALL,),
        deploy=(("cam-1",), "100%"),
    ),
    Scenario(
        "pending_offer",
        Checkin(health=health(80)),
        fast=True,
        deploy=(("cam-1",), "100%"),
    ),
    Scenario(
        "device_in_a_wave_not_released",
        Checkin(device_id="cam-2"),
        fast=True,
        before=(dataclasses.replace(SETTLED, device_id="cam-2"),),
        deploy=(("cam-1", "cam-2"), "1,100%"),
    ),
    Scenario(
        "canary_releases_the_next_wave",
        Checkin(runs=NEW, health=health(200)),
        fast=False,
        before=(UNHEALTHY_INSTALL, dataclasses.replace(SETTLED, device_id="cam-2")),
        deploy=(("cam-1", "cam-2"), "1,100%"),
    ),
    Scenario(
        "report_older_than_the_state_recorded",
        Checkin(health=health(5), sent_at=T0 + timedelta(seconds=30)),
        fast=False,
        before=(dataclasses.replace(SETTLED, sent_at=T1 + timedelta(minutes=5)),),
    ),
    Scenario("device_clock_ahead", Checkin(sent_at=T1 + timedelta(hours=1)), fast=True),
    Scenario(
        "no_device_time",
        Checkin(sent_at=None, health=health(30)),
        fast=True,
        before=(dataclasses.replace(SETTLED, sent_at=None),),
    ),
]


@pytest.fixture
def databases(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[Database, Database]]:
    """Two fresh databases at head on `backend`: one for each path."""
    opened: list[Database] = []
    dropped: list[str] = []
    try:
        for side in ("fast", "full"):
            data_dir = tmp_path / side
            data_dir.mkdir()
            if backend == "sqlite":
                template = request.getfixturevalue("sqlite_template")
                shutil.copyfile(template, data_dir / "satchel.db")
                url = ""
            else:
                name, url = fresh_pg_database(request.getfixturevalue("pg_admin_url"))
                dropped.append(name)
            config = load_config(data_dir=data_dir, database_url=url, log_requests=False)
            opened.append(database.open_database(config))
        yield opened[0], opened[1]
    finally:
        for db in opened:
            db.dispose()
        for name in dropped:
            drop_pg_database(request.getfixturevalue("pg_admin_url"), name)


def _seed(db: Database, scenario: Scenario) -> None:
    """The same world on every database: a trust root, two enrolled devices, a bundle, maybe
    a deployment, and the check-ins before, all through the full path at fixed times."""

    def world(s: Any) -> None:
        s.add(TrustRoot(version=1, document=b"{}", imported_at=T0))
        for device_id, token in TOKENS.items():
            s.add(
                Device(
                    id=device_id,
                    device_class="edge-box",
                    arch="x86_64",
                    agent_version="0.1.0",
                    public_key="00" * 32,
                    token_hash=hash_token(token),
                    enrolled_at=T0,
                )
            )
        s.add(
            Bundle(
                sha256="5a" * 32,
                name="vision",
                version="1.0.0",
                sequence=1,
                size=4096,
                created_at=T0,
                uploaded_at=T0,
                manifest={
                    "compatibility": {"device_classes": ["edge-box"]},
                    "health_policy": HealthPolicy().to_dict(),
                },
            )
        )
        s.flush()
        if scenario.deploy is not None:
            devices, waves = scenario.deploy
            selectors = Selectors(devices=devices)
            deployments.create(s, "vision:1.0.0", selectors, waves, 1.0, 0.0, T0)

    db.run(world)
    for before in scenario.before:
        _check_in(db, before, fast=False)


def _check_in(db: Database, c: Checkin, fast: bool) -> CheckinResult:
    token = TOKENS[c.device_id]
    return checkin_lan(db, token, c.device_id, c.body(), c.at, MAX_EVENTS, fast=fast)


def _rows(db: Database) -> dict[str, list[dict[str, Any]]]:
    def read(s: Any) -> dict[str, list[dict[str, Any]]]:
        out = {}
        for model in TABLES:
            table = model.__table__
            order = (
                [table.c.device_id, table.c.event_id]
                if model is Event
                else list(table.primary_key.columns)
            )
            found = s.execute(sa.select(table).order_by(*order))
            out[table.name] = [dict(r._mapping) for r in found]
        return out

    return db.run(read)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_fast_and_full_paths_leave_the_same_rows(
    databases: tuple[Database, Database], scenario: Scenario
) -> None:
    fast_db, full_db = databases
    for db in databases:
        _seed(db, scenario)
    assert _rows(fast_db) == _rows(full_db)  # both start alike

    on_fast = _check_in(fast_db, scenario.checkin, fast=True)
    on_full = _check_in(full_db, scenario.checkin, fast=False)

    assert (on_fast.fast, on_full.fast) == (scenario.fast, False)
    assert dataclasses.replace(on_fast, fast=False) == on_full
    fast_rows, full_rows = _rows(fast_db), _rows(full_db)
    for table in fast_rows:
        assert fast_rows[table] == full_rows[table], table
