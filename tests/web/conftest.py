"""Fixtures of the dashboard tests: an in-process manager with a fresh SQLite database, an
admin user, a seeded fleet, and a logged-in Flask test client.

The browser tests (`test_web_browser.py`) run a real `satchel serve` instead; see there.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from satchel.manager import db as database
from satchel.manager.app import create_app
from satchel.manager.config import load_config
from satchel.manager.services import users
from satchel.manager.usb import import_stick
from tests.factory import Keyring, make_keys
from tests.manager.helpers import Fleet
from tests.web.seed import Seeded, seed

ADMIN_USER = "ada"
ADMIN_PASSWORD = "correct horse battery staple"
SECRET_KEY = "dashboard-tests-only"
_CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture(scope="session")
def web_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database file to copy for each test."""
    data_dir = tmp_path_factory.mktemp("web-template")
    database.upgrade(load_config(data_dir=data_dir, database_url=""))
    return data_dir / "satchel.db"


@pytest.fixture
def app(web_sqlite_template: Path, tmp_path: Path) -> Iterator[Flask]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    shutil.copyfile(web_sqlite_template, data_dir / "satchel.db")
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
def keys(tmp_path: Path) -> Keyring:
    return make_keys(tmp_path)


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


def csrf_from(html: str) -> str:
    found = _CSRF_INPUT.search(html)
    assert found, "no CSRF field in the page"
    return found.group(1)


def log_in(client: FlaskClient, username: str = ADMIN_USER, password: str = ADMIN_PASSWORD):
    token = csrf_from(client.get("/login").get_data(as_text=True))
    return client.post(
        "/login", data={"username": username, "password": password, "csrf_token": token}
    )


class LoginForm:
    """The login form driven as a browser (or a password guesser) at `address` would: one
    CSRF token per session, each submission from that client address."""

    def __init__(self, client: FlaskClient, address: str = "192.0.2.10") -> None:
        self.client = client
        self.address = address

    def submit(self, username: str, password: str) -> TestResponse:
        with self.client.session_transaction() as s:
            token = s.get("csrf")
        if not token:
            token = csrf_from(self.client.get("/login").get_data(as_text=True))
        form = {"username": username, "password": password, "csrf_token": token}
        return self.client.post("/login", data=form, environ_base={"REMOTE_ADDR": self.address})


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


def csrf_of(client: FlaskClient) -> str:
    """The CSRF token of the client's session."""
    with client.session_transaction() as s:
        return str(s["csrf"])
