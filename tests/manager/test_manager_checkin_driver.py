"""The fast path's statements on the driver's connection (manager/checkin/driver.py): they store
exactly what SQLAlchemy's execution stores, fail as it fails, and leave no transaction or lock
behind; a connection the database dropped sends the check-in to the full path, which answers
it. On SQLite and PostgreSQL."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

import pytest
import sqlalchemy as sa

from satchel.manager.checkin import driver
from satchel.manager.checkin.parse import DeviceEvent
from satchel.manager.checkin.record import LAN, event_params, events_insert, insert_events
from satchel.manager.db import SQLITE_BEGIN, Database
from satchel.manager.models import Device
from tests.manager.helpers import Fleet, SimDevice

T = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
EVENTS = (
    DeviceEvent("no-figures", "health", T),  # JSON column, None: stored as the JSON 'null'
    DeviceEvent("figures", "health", T, channel="vision", sequence=0, figures={"count": 3}),
    DeviceEvent("failed", "install_failed", T, passed=False, reason="smoke test: cosine 0.2"),
)


def _db(fleet: Fleet) -> Database:
    db: Database = fleet.app.extensions["satchel"].db
    return db


def _add_devices(db: Database, *device_ids: str) -> None:
    rows = [
        {
            "id": d,
            "device_class": "edge-box",
            "arch": "x86_64",
            "agent_version": "0.1.0",
            "public_key": "00" * 32,
            "token_hash": d * 4,
            "enrolled_at": T,
        }
        for d in device_ids
    ]
    db.run(lambda s: s.execute(sa.insert(Device), rows))


def _stored(db: Database, device_id: str) -> list[tuple[Any, ...]]:
    """The events of `device_id` as the database holds them (JSON as text, NULL as NULL)."""
    sql = sa.text(
        "SELECT event_id, kind, channel, sequence, passed, reason, figures IS NULL, "
        "CAST(figures AS TEXT), occurred_at, received_at, via "
        "FROM events WHERE device_id = :d ORDER BY event_id"
    )
    with db.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sql, {"d": device_id})]


def _fast_checkins(fleet: Fleet) -> int:
    text = fleet.client.get("/metrics").text
    found = re.search(r"satchel_checkins_fast_total\{[^}]*\} (\d+)", text)
    return int(found.group(1)) if found else 0


def _begin(db: Database) -> str | None:
    return SQLITE_BEGIN if db.is_sqlite else None


def test_driver_statement_stores_what_sqlalchemy_stores(fleet: Fleet) -> None:
    db = _db(fleet)
    _add_devices(db, "by-sqlalchemy", "by-driver")
    db.run(lambda s: insert_events(s, "by-sqlalchemy", EVENTS, LAN, T))
    engine = db.autocommit_engine()
    statement = driver.DriverStatement(events_insert(engine.dialect.name, len(EVENTS)))
    with driver.connection(engine, _begin(db)) as cursor:
        params = event_params("by-driver", EVENTS, LAN, T)
        new = statement.rows(cursor, engine.dialect, params)
    assert sorted(r[0] for r in new) == sorted(e.event_id for e in EVENTS)
    assert _stored(db, "by-driver") == _stored(db, "by-sqlalchemy")
    with driver.connection(engine, _begin(db)) as cursor:  # redelivered: nothing new
        assert statement.rows(cursor, engine.dialect, params) == []


def test_driver_error_is_sqlalchemys_and_leaves_no_transaction(fleet: Fleet) -> None:
    db = _db(fleet)
    engine = db.autocommit_engine()
    statement = driver.DriverStatement(events_insert(engine.dialect.name, 1))
    params = event_params("no-such-device", EVENTS[:1], LAN, T)
    with (
        pytest.raises(sa.exc.IntegrityError),
        driver.connection(engine, _begin(db)) as cursor,
    ):
        statement.rows(cursor, engine.dialect, params)
    _add_devices(db, "after")  # the write lock (SQLite) was released: a writer goes on
    assert _stored(db, "no-such-device") == []


def test_a_dropped_database_connection_sends_the_checkin_to_the_full_path(
    fleet: Fleet, backend: str
) -> None:
    if backend != "postgresql":
        pytest.skip("SQLite has no server to drop a connection")
    fleet.bundle("1.0.0", 1)
    device: SimDevice = fleet.enroll("cam-1")
    device.run("vision", "0.9.0", 0)
    fleet.deploy("vision:1.0.0", devices=["cam-1"], waves="100%")
    fleet.checkin(device)
    fleet.checkin(device)  # the fast path now holds a pooled connection
    db = _db(fleet)
    killed = db.run(
        lambda s: s.scalar(
            sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    )
    assert killed >= 1 and _fast_checkins(fleet) == 1
    health = {"vision": {"count": 99, "errors": 0, "nan": 0, "p95_ms": 1.0}}
    answer = fleet.checkin(device, health=health)
    assert answer["install"][0]["version"] == "1.0.0"
    assert _fast_checkins(fleet) == 1  # answered by the full path
    row = db.run(lambda s: s.get(Device, "cam-1"))
    assert row is not None and row.health == health
    fleet.checkin(device, health=health)
    assert _fast_checkins(fleet) == 2  # the dead connection left the pool
