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
from satchel.manager.services.dashboard.deployments import wave_line
from satchel.manager.services.dashboard.device import device_page
from satchel.manager.services.dashboard.figures import flatten_figures
from satchel.manager.services.dashboard.fleet import FleetQuery, fleet_overview
from satchel.manager.services.dashboard.health import breach_figures
from satchel.manager.services.dashboard.states import Thresholds
from satchel.manager.usb import import_stick
from satchel.manager.web.badges import Badge, badge_of
from tests.factory.keys import Keyring
from tests.manager.helpers import Fleet
from tests.web.seed import (
    Seeded,
    after_rollback,
    checkin,
    health,
    rollback_stats,
    rolled_back_events,
    seed,
)

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


def test_smoke_figures_read_as_words_with_units() -> None:
    headline = {
        "max_abs_error": 0.012,
        "min_sqnr_db": 38.17,
        "top1_agreement": 1.0,
        "p95_ms": 3.1,
        "peak_memory_mb": 12.4,
        "nonfinite": 0,
        "tests": [{"model": "main", "latency_ms": {"p95": 3.1}}],
    }
    assert flatten_figures(headline) == [
        ("Max abs error", "0.012"),
        ("SQNR (worst output)", "38.2 dB"),
        ("Top-1 agreement", "100%"),
        ("p95 latency", "3.1 ms"),
        ("Peak memory", "12.4 MiB"),
        ("NaN/Inf outputs", "0"),
    ]
    # alone, the per-test report is flattened, each figure named after its model
    assert flatten_figures({"tests": headline["tests"]}) == [("main: p95 latency", "3.1 ms")]
    assert flatten_figures(None) == []


def test_fleet_search_state_and_paging_agree_with_each_devices_own_page(
    seeded_db: tuple[Any, Fleet, Seeded],
) -> None:
    db, _fleet, _seeded = seeded_db
    now = datetime.now(timezone.utc)
    whole = db.run(lambda s: fleet_overview(s, now, THRESHOLDS, FleetQuery(page_size=3)))
    assert (whole.matched, whole.pages, len(whole.rows)) == (8, 3, 3)
    paged = [
        r
        for n in (1, 2, 3)
        for r in db.run(
            lambda s, n=n: fleet_overview(s, now, THRESHOLDS, FleetQuery(page=n, page_size=3))
        ).rows
    ]
    # worst first, then by id, every device once; each row judged as its own page judges it
    assert [r.device_id for r in paged][:3] == ["cam-05", "cam-04", "gw-01"]
    assert sorted(r.device_id for r in paged) == sorted(
        r.device_id for r in db.run(lambda s: fleet_overview(s, now, THRESHOLDS)).rows
    )
    for row in paged:
        own = db.run(lambda s, d=row.device_id: device_page(s, d, now, THRESHOLDS)).row
        assert (row.device_id, row.state) == (own.device_id, own.state)

    def ids(query: FleetQuery) -> list[str]:
        return [
            r.device_id for r in db.run(lambda s: fleet_overview(s, now, THRESHOLDS, query)).rows
        ]

    assert ids(FleetQuery(text="CAM-0")) == ["cam-05", "cam-04", "cam-01", "cam-02", "cam-03"]
    assert ids(FleetQuery(text="canary")) == ["cam-01"]  # a tag
    assert len(ids(FleetQuery(text="EDGE-box"))) == 8  # a class: every seeded device's
    assert ids(FleetQuery(text="site-a", state="ok")) == ["cam-01", "cam-02", "cam-03"]
    assert ids(FleetQuery(text="100%_")) == []  # LIKE wildcards are literal
    past_the_end = db.run(
        lambda s: fleet_overview(s, now, THRESHOLDS, FleetQuery(page=99, page_size=3))
    )
    assert past_the_end.page == 3


def test_the_rolled_back_release_keeps_its_health_and_the_breach(
    seeded_db: tuple[Any, Fleet, Seeded],
) -> None:
    db, fleet, seeded = seeded_db
    cam2 = seeded.devices["cam-02"]
    after_rollback(cam2)
    nan_samples = [health(20, nan=4), health(20, nan=8)]
    checkin(
        fleet,
        cam2,
        rolled_back_events(
            "1.1.0",
            2,
            "1.0.0",
            reason="health: nan rate 0.30 > 0.00 over 40 inferences",
            stats=rollback_stats(40, nonfinite=12),
            health_before=nan_samples,
        ),
    )
    now = datetime.now(timezone.utc)
    (channel,) = db.run(lambda s: device_page(s, "cam-02", now, THRESHOLDS)).channels
    old, bad = channel.release_health
    assert (old.version, old.rolled_back, len(old.samples)) == ("1.0.0", False, 12)
    assert (bad.version, bad.sequence, bad.rolled_back) == ("1.1.0", 2, True)
    assert [s.nan_rate for s in bad.samples] == [0.2, 0.4, 0.3]  # its samples, then the stats
    (mark,) = channel.rollbacks
    (figure,) = breach_figures(mark)
    assert (figure.figure, figure.value, figure.limit) == ("nan_rate", 0.3, 0.0)


def test_a_halted_wave_says_why_it_stopped_not_what_it_needs() -> None:
    halted = {"state": "halted", "current_wave": 0}
    wave = {"index": 0, "size": 1, "released": True, "needed": 0, "counts": {"failed": 1}}
    assert wave_line(halted, wave) == "halted here: 0 of 1 healthy, 1 failed"
    later = {"index": 1, "size": 4, "released": False, "needed": 4, "counts": {}}
    assert wave_line(halted, later) == "not released: the deployment is halted"
    active = {"state": "active", "current_wave": 1}
    assert wave_line(active, wave) == "advanced: 0 of 1 healthy, 1 failed"
    running = {**later, "released": True, "counts": {"succeeded": 1}}
    assert wave_line(active, running) == "needs 3 more healthy to advance: 1 of 4 healthy"


def test_one_badge_vocabulary_for_every_spelling_of_a_state() -> None:
    assert badge_of("rolled_back") == badge_of("rolled-back") == Badge("Rolled back", "back")
    assert badge_of("halted").tone == badge_of("failed").tone == "bad"
    assert badge_of("something_new") == Badge("Something new", "neutral")
