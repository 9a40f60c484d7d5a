"""The dashboard's read-only queries (`manager.services.dashboard`) on SQLite and PostgreSQL:
how a device's state is judged, what its page gathers."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from satchel.manager.app import create_app
from satchel.manager.config import ManagerConfig
from satchel.manager.services.dashboard.device import device_page
from satchel.manager.services.dashboard.figures import flatten_figures
from satchel.manager.services.dashboard.fleet import fleet_overview
from satchel.manager.services.dashboard.states import Thresholds
from satchel.manager.usb import import_stick
from tests.factory.keys import Keyring
from tests.manager.helpers import Fleet
from tests.web.seed import Seeded, seed

DAY_S = 86400.0
THRESHOLDS = Thresholds(lan_stale_s=300.0, usb_stale_s=30 * DAY_S, attention_window_s=7 * DAY_S)


@pytest.fixture
def db_app(config: ManagerConfig) -> Iterator[Flask]:
    fields = {name: getattr(config, name) for name in config.__dataclass_fields__}
    application = create_app({**fields, "TESTING": True, "SECRET_KEY": "x"})
    yield application
    application.extensions["satchel"].db.dispose()


@pytest.fixture
def seeded_db(db_app: Flask, keys: Keyring, tmp_path: Path) -> tuple[Any, Fleet, Seeded]:
    fleet = Fleet.start(db_app, db_app.test_client(), keys, tmp_path)
    found = seed(fleet)
    st = db_app.extensions["satchel"]
    result = import_stick(st.db, found.stick, datetime.now(timezone.utc), 100, 10**6, 1000)
    assert result.imported
    return st.db, fleet, found


def test_device_states_and_attention_order(seeded_db: tuple[Any, Fleet, Seeded]) -> None:
    db, _fleet, _seeded = seeded_db
    now = datetime.now(timezone.utc)
    overview = db.run(lambda s: fleet_overview(s, now, THRESHOLDS))
    assert overview.total == 8
    assert overview.counts == {
        "rolled_back": 1,
        "failing": 1,
        "not_seen": 1,
        "never_seen": 1,
        "updating": 0,
        "ok": 4,
    }
    assert [(r.device_id, r.state) for r in overview.attention] == [
        ("cam-05", "rolled_back"),
        ("cam-04", "failing"),
        ("gw-01", "not_seen"),
    ]
    usb = next(r for r in overview.rows if r.device_id == "usb-01")
    assert usb.state == "ok" and not usb.lan and usb.last_via == "usb"
    assert usb.usb_report_at is not None and usb.usb_imported_at is not None


def test_device_page_gathers_releases_smoke_tests_health_and_rollbacks(
    seeded_db: tuple[Any, Fleet, Seeded],
) -> None:
    db, _fleet, _seeded = seeded_db
    now = datetime.now(timezone.utc)
    page = db.run(lambda s: device_page(s, "cam-05", now, THRESHOLDS))
    (channel,) = page.channels
    assert (channel.name, channel.active_version, channel.active_sequence) == ("vision", "1.0.0", 1)
    assert [(r.version, r.active) for r in channel.releases] == [("1.1.0", False), ("1.0.0", True)]
    assert all(r.smoke is not None and r.smoke.passed for r in channel.releases)
    assert all(r.bundle_sha256 for r in channel.releases)
    assert len(channel.samples) == 12
    assert [s.at for s in channel.samples] == sorted(s.at for s in channel.samples)
    assert len(channel.rollbacks) == 1 and channel.rollbacks[0].version == "1.1.0"
    assert channel.policy["max_error_rate"] == 0.05
    assert all(e["kind"] != "health" for e in page.events)
    assert [t.deployment_id for t in page.targets] == [1]


def test_a_rollback_older_than_the_attention_window_is_no_longer_flagged(
    seeded_db: tuple[Any, Fleet, Seeded],
) -> None:
    db, _fleet, _seeded = seeded_db
    later = datetime.now(timezone.utc) + timedelta(days=8)
    patient = Thresholds(
        lan_stale_s=30 * DAY_S, usb_stale_s=30 * DAY_S, attention_window_s=7 * DAY_S
    )
    overview = db.run(lambda s: fleet_overview(s, later, patient))
    states = {r.device_id: r.state for r in overview.rows}
    assert states["cam-05"] == "ok"
    assert states["cam-04"] == "failing"  # its health still breaks the policy


def test_a_newer_activation_clears_a_rollback(seeded_db: tuple[Any, Fleet, Seeded]) -> None:
    db, fleet, seeded = seeded_db
    fleet.install(seeded.devices["cam-05"], "1.1.0", 2)
    now = datetime.now(timezone.utc)
    page = db.run(lambda s: device_page(s, "cam-05", now, THRESHOLDS))
    assert page.row.state == "ok"


def test_unknown_device_page_is_refused(seeded_db: tuple[Any, Fleet, Seeded]) -> None:
    from satchel.manager.errors import NotFoundError

    db, _fleet, _seeded = seeded_db
    now = datetime.now(timezone.utc)
    with pytest.raises(NotFoundError):
        db.run(lambda s: device_page(s, "ghost", now, THRESHOLDS))


def test_figures_are_flattened_into_labelled_values() -> None:
    figures = {
        "passed": True,
        "tests": [{"model": "main", "latency_ms": {"p95": 1.23456}, "agreement": {"cosine": 1}}],
        "note": "ok",
    }
    # Beside headline figures, the full per-test report is not repeated...
    assert flatten_figures(figures) == [("passed", "yes"), ("note", "ok")]
    # ...but alone it is flattened with labels joined from the keys.
    assert flatten_figures({"tests": figures["tests"]}) == [
        ("tests main latency ms p95", "1.235"),
        ("tests main agreement cosine", "1"),
    ]
    assert flatten_figures(None) == []
