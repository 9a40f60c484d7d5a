"""The manager's disk full: a check-in is refused with a named 503 and Retry-After, nothing of
it is half-recorded, and the device's retry is recorded exactly once when there is room again;
`bundle add` says which write failed and leaves nothing in the store.

Real full disks throughout: SQLite at its page limit (`PRAGMA max_page_count`, SQLITE_FULL as
on a full disk), PostgreSQL with the tables a check-in writes in a tablespace on a small
tmpfs filled to the last byte (SQLSTATE 53100; root only), a bundle store that is a regular
file, an input file the kernel cannot read.
"""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from flask import Flask

from satchel.manager.cli import main
from satchel.manager.config import ManagerConfig
from satchel.manager.db import Database, normalize_url
from satchel.manager.models import Bundle, Device, Event
from tests.factory.bundles import build_test_bundle
from tests.factory.keys import Keyring
from tests.manager.databases import PG_ENV
from tests.manager.disks import tmpfs
from tests.manager.helpers import Fleet, SimDevice, event

EVENTS = 40  # events in the refused check-in
REASON = "x" * 2000  # characters: the events need pages the full database does not have
FILLED_TABLES = ("events", "devices", "device_channels", "deployment_targets")


# --- real full disks ----------------------------------------------------------------------


class FullDisk(Protocol):
    def fill(self) -> None: ...
    def free(self) -> None: ...


class SqliteAtPageLimit:
    """Every new connection of the app's engine may not grow the database beyond the pages
    it has: the next page a write needs fails with SQLITE_FULL, as on a full disk."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.full = False

    def _limit(self, dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        pages = cur.execute("PRAGMA page_count").fetchone()[0]
        cur.execute(f"PRAGMA max_page_count = {int(pages)}")
        cur.close()

    def fill(self) -> None:
        sa.event.listen(self.db.engine, "connect", self._limit)
        self.db.engine.dispose()
        self.full = True

    def free(self) -> None:
        if self.full:
            sa.event.remove(self.db.engine, "connect", self._limit)
            self.db.engine.dispose()
            self.full = False


class PgTablespaceOnTmpfs:
    """The tables a check-in writes, moved to a tablespace on a 1 MiB tmpfs that a filler
    table then fills: PostgreSQL cannot extend them (SQLSTATE 53100, disk_full)."""

    def __init__(self, url: str, location: Path) -> None:
        self.engine = sa.create_engine(
            normalize_url(url), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool
        )
        self.location = location
        self.name = f"full_{uuid.uuid4().hex[:12]}"

    def _run(self, *statements: str) -> None:
        with self.engine.connect() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)

    def open(self) -> None:
        self._run(
            f"CREATE TABLESPACE {self.name} LOCATION '{self.location}'",
            *(f"ALTER TABLE {t} SET TABLESPACE {self.name}" for t in FILLED_TABLES),
        )

    def fill(self) -> None:
        self._run(f"CREATE TABLE disk_filler (pad text) TABLESPACE {self.name}")
        insert = "INSERT INTO disk_filler SELECT repeat('x', 1000) FROM generate_series(1, 64)"
        with pytest.raises(sa.exc.OperationalError) as full:
            for _ in range(100_000):
                self._run(insert)
        assert getattr(full.value.orig, "sqlstate", None) == "53100", full.value

    def free(self) -> None:
        self._run("DROP TABLE IF EXISTS disk_filler")

    def close(self) -> None:
        self.free()
        self._run(
            *(f"ALTER TABLE {t} SET TABLESPACE pg_default" for t in FILLED_TABLES),
            f"DROP TABLESPACE IF EXISTS {self.name}",
        )
        self.engine.dispose()


@pytest.fixture
def full_disk(backend: str, app: Flask, config: ManagerConfig) -> Iterator[FullDisk]:
    """What makes the manager's database full, on `backend`."""
    db: Database = app.extensions["satchel"].db
    if backend == "sqlite":
        limit = SqliteAtPageLimit(db)
        yield limit
        limit.free()
        return
    if os.environ.get(PG_ENV):
        pytest.skip(f"{PG_ENV} may name a server on another host: no tablespace on our tmpfs")
    location = Path(tempfile.mkdtemp(prefix="satchel-tablespace-"))
    try:
        with tmpfs(location, "1m", owner="postgres"):
            space = PgTablespaceOnTmpfs(config.database_url, location)
            db.dispose()  # no pooled connection keeps a table it moves busy
            space.open()
            try:
                yield space
            finally:
                db.dispose()
                space.close()
    finally:
        location.rmdir()


# --- check-ins ------------------------------------------------------------------------------


def _settled(fleet: Fleet) -> tuple[SimDevice, int]:
    """A device running 0.9.0, targeted by a deployment of 1.0.0, after its first check-in."""
    fleet.bundle("1.0.0", 1)
    device = fleet.enroll("cam-1")
    device.run("vision", "0.9.0", 0)
    deployment = fleet.deploy("vision:1.0.0", devices=["cam-1"], waves="100%")
    fleet.checkin(device, health={"vision": {"count": 10, "errors": 0, "nan": 0}})
    return device, int(deployment["id"])


def _health_samples() -> list[dict[str, Any]]:
    """Events no deployment acts on: they ride the fast path."""
    return [event("health", "vision", 0, reason=REASON) for _ in range(EVENTS)]


def _download_and_samples() -> list[dict[str, Any]]:
    """An install step first: the check-in takes the full path and moves the target."""
    return [event("downloaded", "vision", 1, version="1.0.0"), *_health_samples()[1:]]


PATHS = [
    pytest.param(_health_samples, "assigned", id="fast-path"),
    pytest.param(_download_and_samples, "downloaded", id="full-path"),
]


def _target_state(fleet: Fleet, deployment_id: int) -> str:
    return str(fleet.status(deployment_id)["targets"][0]["state"])


def _event_ids(fleet: Fleet) -> list[str]:
    db: Database = fleet.app.extensions["satchel"].db
    return db.run(
        lambda s: sorted(s.scalars(sa.select(Event.event_id).where(Event.device_id == "cam-1")))
    )


def _device_row(fleet: Fleet) -> tuple[Any, ...]:
    db: Database = fleet.app.extensions["satchel"].db

    def read(s: Any) -> tuple[Any, ...]:
        d = s.get(Device, "cam-1")
        return (d.last_seen_at, d.state_at, d.health, d.status, d.state_digest)

    return db.run(read)


@pytest.mark.parametrize(("events_of", "moved_to"), PATHS)
def test_checkin_to_a_full_database_is_a_named_503_and_records_nothing(
    fleet: Fleet,
    full_disk: FullDisk,
    backend: str,
    events_of: Callable[[], list[dict[str, Any]]],
    moved_to: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    device, deployment_id = _settled(fleet)
    before_events, before_row = _event_ids(fleet), _device_row(fleet)
    before_target = _target_state(fleet, deployment_id)
    events = events_of()
    full_disk.fill()
    with caplog.at_level(logging.INFO):
        r = fleet.client.post(
            "/api/v1/devices/cam-1/checkin", json=device.body(events), headers=device.headers
        )
    assert r.status_code == 503, r.get_data(as_text=True)
    assert r.json is not None and r.json["error"]["code"] == "disk_full"
    assert "database is full" in r.json["error"]["message"]
    assert r.headers["Retry-After"] == "60"  # the poll interval: the device's next check-in
    assert not [rec for rec in caplog.records if rec.exc_info], "a traceback was logged"
    errors = [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0] and "database is full" in errors[0]

    full_disk.free()
    assert _event_ids(fleet) == before_events  # not one event of the refused check-in
    assert _target_state(fleet, deployment_id) == before_target
    if backend == "sqlite" or moved_to != "assigned":
        # one transaction; PostgreSQL's fast path may have recorded last_seen on its own
        assert _device_row(fleet) == before_row

    again = fleet.checkin(device, events)  # the device's retry, with the same event ids
    assert again["events"] == {"recorded": EVENTS, "duplicate": 0}
    assert fleet.checkin(device, events)["events"] == {"recorded": 0, "duplicate": EVENTS}
    assert _event_ids(fleet) == sorted(before_events + [e["id"] for e in events])
    assert _target_state(fleet, deployment_id) == moved_to


def test_fast_path_retry_after_a_full_database_is_recorded_by_the_fast_path(
    fleet: Fleet, full_disk: FullDisk
) -> None:
    device, _ = _settled(fleet)
    events = _health_samples()
    full_disk.fill()
    r = fleet.client.post(
        "/api/v1/devices/cam-1/checkin", json=device.body(events), headers=device.headers
    )
    assert r.status_code == 503 and "Retry-After" in r.headers
    full_disk.free()
    metrics = fleet.client.get("/metrics").text
    assert "satchel_checkins_fast_total{" not in metrics  # the refused one was not counted
    assert fleet.checkin(device, events)["events"]["recorded"] == EVENTS
    assert "satchel_checkins_fast_total{" in fleet.client.get("/metrics").text


# --- bundle add -----------------------------------------------------------------------------


class Cli:
    def __init__(self, config: ManagerConfig) -> None:
        self.config = config

    def refused(self, *args: str) -> str:
        env = {"SATCHEL_DATABASE_URL": self.config.database_url, "SATCHEL_CONFIG": ""}
        r = CliRunner().invoke(main, ["--data-dir", str(self.config.data_dir), *args], env=env)
        assert r.exit_code == 1, (args, r.output, r.exception)
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
        assert "Traceback" not in r.output
        return lines[0]


def _bundle_rows(app: Flask) -> int:
    return int(app.extensions["satchel"].db.run(lambda s: s.query(Bundle).count()))


def _stored_files(store: Path) -> list[Path]:
    return sorted(p for p in store.rglob("*") if p.is_file()) if store.is_dir() else []


def test_bundle_add_to_a_store_that_is_not_a_directory_says_cannot_write(
    fleet: Fleet, config: ManagerConfig, keys: Keyring, tmp_path: Path
) -> None:
    built = build_test_bundle(tmp_path / "v1.satchel", keys=keys)
    config.store_dir.write_text("a file where the store should be\n")
    line = Cli(config).refused("bundle", "add", str(built.path))
    assert line == f"error: cannot write to the bundle store {config.store_dir}: Not a directory"
    assert _bundle_rows(fleet.app) == 0
    assert config.store_dir.read_text() == "a file where the store should be\n"


def test_bundle_add_of_an_unreadable_file_still_says_cannot_read(
    fleet: Fleet, config: ManagerConfig
) -> None:
    line = Cli(config).refused("bundle", "add", "/proc/self/mem")  # EIO on the first read
    assert line == "error: cannot read /proc/self/mem: Input/output error"
    assert _bundle_rows(fleet.app) == 0
    assert _stored_files(config.store_dir) == []


def test_upload_to_a_store_that_is_not_a_directory_is_a_named_503(
    fleet: Fleet, config: ManagerConfig, keys: Keyring, tmp_path: Path
) -> None:
    built = build_test_bundle(tmp_path / "v1.satchel", keys=keys)
    config.store_dir.write_text("a file where the store should be\n")
    r = fleet.client.post(
        "/api/v1/bundles",
        data=built.data,
        headers=fleet.admin,
        content_type="application/octet-stream",
    )
    assert r.status_code == 503 and r.json is not None
    assert r.json["error"]["code"] == "store_unwritable"
    assert "cannot write to the bundle store" in r.json["error"]["message"]
    assert r.headers["Retry-After"] == "60"
    assert _bundle_rows(fleet.app) == 0
