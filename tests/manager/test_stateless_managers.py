"""Stateless managers: two manager processes on separate data dirs, one database, serve one
dashboard. A login, its CSRF token and the log-in throttle made at one are honoured at the
other, managers starting at once agree on one session key, a USB plan or report needs nothing
of the manager that answered before, and no request leaves anything on a manager's own
disk."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from flask import Flask

from satchel.bundles import plan as stick
from satchel.manager.app import create_app
from satchel.manager.config import ManagerConfig
from satchel.manager.db import Database
from satchel.manager.services import users
from satchel.manager.web import secret
from tests.factory.keys import Keyring
from tests.manager.helpers import Fleet, event
from tests.web.forms import ADMIN_PASSWORD, ADMIN_USER, LoginForm, csrf_of, log_in

COOKIE = "satchel_session"


def _settings(config: ManagerConfig, data_dir: Path, **extra: object) -> dict[str, object]:
    """Settings of a manager on `data_dir` sharing `config`'s database (SQLite by path)."""
    return {"data_dir": data_dir, "database_url": config.url, "log_requests": False, **extra}


@pytest.fixture
def two_managers(config: ManagerConfig, tmp_path: Path) -> Iterator[tuple[Flask, Flask]]:
    apps = []
    for name in ("a", "b"):
        data_dir = tmp_path / f"manager-{name}"
        data_dir.mkdir()
        apps.append(create_app(_settings(config, data_dir, login_user_failures=2)))
    apps[0].extensions["satchel"].db.run(
        lambda s: users.create_user(s, ADMIN_USER, ADMIN_PASSWORD))
    yield apps[0], apps[1]
    for app in apps:
        app.extensions["satchel"].db.dispose()


def test_a_login_made_at_one_manager_is_honoured_by_another_on_its_own_data_dir(
    two_managers: tuple[Flask, Flask],
) -> None:
    a, b = two_managers
    assert a.config["SECRET_KEY"] == b.config["SECRET_KEY"]
    at_a = a.test_client()
    assert log_in(at_a).status_code == 303
    cookie = at_a.get_cookie(COOKIE)
    assert cookie is not None
    token = csrf_of(at_a)
    at_b = b.test_client()
    at_b.set_cookie(COOKIE, cookie.value)
    assert at_b.get("/").status_code == 200
    # a form rendered by A is accepted by B: the CSRF token travels in the signed cookie
    r = at_b.post("/logout", data={"csrf_token": token})
    assert r.status_code in (302, 303)
    at_a.set_cookie(COOKIE, cookie.value)  # the login ended on the server, for A too
    assert at_a.get("/").status_code == 302


def test_a_form_forged_for_another_session_is_refused_by_the_other_manager(
    two_managers: tuple[Flask, Flask],
) -> None:
    a, b = two_managers
    at_a = a.test_client()
    assert log_in(at_a).status_code == 303
    cookie = at_a.get_cookie(COOKIE)
    assert cookie is not None
    at_b = b.test_client()
    at_b.set_cookie(COOKIE, cookie.value)
    assert at_b.post("/logout", data={"csrf_token": "forged"}).status_code == 400
    assert at_b.get("/").status_code == 200  # still logged in: nothing changed


def test_failed_logins_at_one_manager_count_against_the_other(
    two_managers: tuple[Flask, Flask],
) -> None:
    a, b = two_managers
    for _ in range(2):
        assert LoginForm(a.test_client()).submit(ADMIN_USER, "wrong").status_code == 401
    # the guesser moves to the other manager: the user name is throttled there as well
    r = LoginForm(b.test_client()).submit(ADMIN_USER, ADMIN_PASSWORD)
    assert r.status_code == 429


def test_managers_starting_at_once_agree_on_one_session_key(config: ManagerConfig) -> None:
    databases = [Database(config) for _ in range(6)]
    keys: list[bytes] = []
    barrier = threading.Barrier(len(databases))

    def start(db: Database) -> None:
        barrier.wait()
        keys.append(secret.load_or_create(db, 32))

    threads = [threading.Thread(target=start, args=(db,)) for db in databases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for db in databases:
        db.dispose()
    assert len(keys) == len(databases) and len(set(keys)) == 1 and len(keys[0]) == 32


def test_a_key_file_left_by_an_older_manager_keeps_its_logins(
    config: ManagerConfig, tmp_path: Path
) -> None:
    old = tmp_path / "old-manager"
    old.mkdir()
    (old / "web-session.key").write_bytes(b"k" * 32)
    first = create_app(_settings(config, old))
    second = create_app(_settings(config, tmp_path / "new-host"))  # no file of its own
    assert first.config["SECRET_KEY"] == second.config["SECRET_KEY"] == b"k" * 32
    for app in (first, second):
        app.extensions["satchel"].db.dispose()


def test_a_short_key_in_the_database_is_refused_in_one_line(config: ManagerConfig) -> None:
    db = Database(config)
    try:
        secret.load_or_create(db, 32)
        db.run(lambda s: s.execute(
            secret._SECRETS.update().values(value=b"short")))  # noqa: SLF001
        with pytest.raises(secret.SessionKeyError, match="shorter than 16 bytes"):
            secret.load_or_create(db, 32)
    finally:
        db.dispose()


# PostgreSQL only: SQLite is a file in the data dir by definition
@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_no_dashboard_request_leaves_anything_on_the_managers_disk(
    config: ManagerConfig, tmp_path: Path
) -> None:
    data_dir = tmp_path / "empty-host"
    app = create_app(_settings(config, data_dir))
    app.extensions["satchel"].db.run(lambda s: users.create_user(s, ADMIN_USER, ADMIN_PASSWORD))
    client = app.test_client()
    assert log_in(client).status_code == 303
    for page in ("/", "/bundles", "/deployments", "/tokens", "/users"):
        assert client.get(page).status_code == 200
    assert client.post("/logout", data={"csrf_token": csrf_of(client)}).status_code in (302, 303)
    app.extensions["satchel"].db.dispose()
    assert not data_dir.exists() or list(data_dir.iterdir()) == []


def test_usb_plans_and_reports_need_nothing_of_the_manager_that_answered_before(
    two_managers: tuple[Flask, Flask], keys: Keyring, tmp_path: Path
) -> None:
    a, b = two_managers
    fleet = Fleet.start(a, a.test_client(), keys, tmp_path)  # its admin token works at B too
    device = fleet.enroll("cam-usb")
    fleet.bundle("1.0.0", 1)
    fleet.deploy("vision:1.0.0", devices=["cam-usb"])
    plans = [app.test_client().post("/api/v1/usb/plan", json={}, headers=fleet.admin)
             for app in (a, b)]
    assert [p.status_code for p in plans] == [200, 200]
    assert plans[0].json == plans[1].json  # worked out from the database, nothing kept
    report = stick.Report(report_id=uuid.uuid4().hex, device_id="cam-usb",
                          created=datetime.now(timezone.utc).replace(microsecond=0),
                          checkin=device.body([event("downloaded")]), plan_id=None)
    data = stick.sign_report(report, device.key)
    path = f"/api/v1/usb/reports?path={report.path}"
    first = a.test_client().post(path, data=data, headers=fleet.admin)
    again = b.test_client().post(path, data=data, headers=fleet.admin)  # imported elsewhere
    assert (first.status_code, first.json["recorded"]) == (201, True)
    assert (again.status_code, again.json["recorded"]) == (200, False)
