"""Fixtures of the dashboard tests: an in-process manager with a fresh SQLite database, an
admin user, a seeded fleet, and a logged-in Flask test client. They override the manager's
`app`, `client` and `fleet` (tests/manager/fixtures.py) for this directory.

The browser tests (`test_web_browser.py`) run a real `satchel serve` instead; see there.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from satchel.manager.app import create_app
from satchel.manager.services import users
from satchel.manager.usb import import_stick
from tests.factory.keys import Keyring
from tests.manager.helpers import Fleet
from tests.web.forms import ADMIN_PASSWORD, ADMIN_USER, log_in
from tests.web.seed import Seeded, seed

SECRET_KEY = "dashboard-tests-only"


@pytest.fixture
def app(sqlite_template: Path, tmp_path: Path) -> Iterator[Flask]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    shutil.copyfile(sqlite_template, data_dir / "satchel.db")
    application = create_app(
        {
            "data_dir": data_dir,
            "database_url": "",
            "log_requests": False,
            "TESTING": True,
            "SECRET_KEY": SECRET_KEY,
        }
    )
    db = application.extensions["satchel"].db
    db.run(lambda s: users.create_user(s, ADMIN_USER, ADMIN_PASSWORD))
    yield application
    db.dispose()


@pytest.fixture
def fleet(app: Flask, keys: Keyring, tmp_path: Path) -> Fleet:
    """Drives the manager's REST API as devices and an admin script would (its own client,
    so no dashboard cookie is involved)."""
    return Fleet.start(app, app.test_client(), keys, tmp_path)


@pytest.fixture
def seeded(app: Flask, fleet: Fleet) -> Seeded:
    """The fleet of `tests.web.seed`, its USB report imported."""
    found = seed(fleet)
    db = app.extensions["satchel"].db
    cfg = app.extensions["satchel"].config
    result = import_stick(
        db,
        found.stick,
        datetime.now(timezone.utc),
        cfg.max_reports_per_import,
        cfg.max_report_bytes,
        cfg.max_events_per_checkin,
    )
    assert not result.refused, result.refused
    return found


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A browser-like client, not logged in."""
    return app.test_client()


@pytest.fixture
def admin(app: Flask) -> FlaskClient:
    """A client logged in as the admin user."""
    c = app.test_client()
    r = log_in(c)
    assert r.status_code == 303, r.get_data(as_text=True)
    return c
