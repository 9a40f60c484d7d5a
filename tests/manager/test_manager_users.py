"""Admin users and admin tokens over their whole life: `satchel user list|passwd|remove`,
passwords hashed by werkzeug (older hashes still accepted, and upgraded at the next log-in),
and admin tokens with a name, an expiry and their last use."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime, timedelta, timezone

import pytest
from flask import Flask
from flask.testing import FlaskClient

from satchel.manager.models import AdminToken, User, WebSession
from satchel.manager.services import tokens, users
from satchel.manager.services.credentials import check_password
from tests.manager.admin_cli import Cli
from tests.manager.helpers import Fleet, bearer
from tests.web.forms import LoginForm

USER, PASSWORD = "ada", "correct horse battery staple"
NEW_PASSWORD = "a brand new passphrase"
WRONG_PASSWORD = "not the password at all"


@pytest.fixture
def ada(app: Flask) -> str:
    app.extensions["satchel"].db.run(lambda s: users.create_user(s, USER, PASSWORD))
    return USER


def _logged_in(app: Flask, username: str = USER, password: str = PASSWORD) -> FlaskClient:
    client = app.test_client()
    assert LoginForm(client).submit(username, password).status_code == 303
    assert client.get("/").status_code == 200
    return client


def _stored_hash(app: Flask, username: str = USER) -> str:
    db = app.extensions["satchel"].db
    return str(db.run(lambda s: s.query(User).filter_by(username=username).one().password_hash))


def _now() -> datetime:
    return datetime.now(timezone.utc)


# --- users through the CLI ----------------------------------------------------------------------


def test_user_list_shows_users_with_their_logins_and_tokens(cli: Cli, app: Flask, ada: str) -> None:
    cli.ok("user", "add", "grace", "--password-stdin", input="another long password\n")
    _logged_in(app)
    app.extensions["satchel"].db.run(lambda s: tokens.create_admin_token(s, "ci", USER))
    listed = json.loads(cli.ok("user", "list", "--json"))["users"]
    assert [(u["username"], u["sessions"], u["admin_tokens"]) for u in listed] == [
        ("ada", 1, 1),
        ("grace", 0, 0),
    ]
    text = cli.ok("user", "list")
    assert text.splitlines()[0].split() == ["USER", "LOGINS", "TOKENS", "ADDED"]
    assert "grace" in text


def test_user_passwd_ends_the_users_logins(cli: Cli, app: Flask, ada: str) -> None:
    browser = _logged_in(app)
    out = cli.ok("user", "passwd", USER, "--password-stdin", input=NEW_PASSWORD + "\n")
    assert "1 dashboard login(s) ended" in out
    assert browser.get("/").status_code == 302
    assert check_password(NEW_PASSWORD, _stored_hash(app))
    assert LoginForm(app.test_client()).submit(USER, PASSWORD).status_code == 401
    assert LoginForm(app.test_client()).submit(USER, NEW_PASSWORD).status_code == 303


def test_user_remove_ends_logins_and_deletes_the_users_tokens(
    cli: Cli, app: Flask, fleet: Fleet, ada: str
) -> None:
    browser = _logged_in(app)
    db = app.extensions["satchel"].db
    owned = db.run(lambda s: tokens.create_admin_token(s, "ci", USER)).token
    assert fleet.client.get("/api/v1/devices", headers=bearer(owned)).status_code == 200
    out = cli.ok("user", "remove", USER)
    assert "1 dashboard login(s) ended, 1 admin token(s) deleted" in out
    assert browser.get("/").status_code == 302
    assert fleet.client.get("/api/v1/devices", headers=bearer(owned)).status_code == 401
    assert fleet.client.get("/api/v1/devices", headers=fleet.admin).status_code == 200
    assert db.run(lambda s: (s.query(User).count(), s.query(WebSession).count())) == (0, 0)


def test_user_commands_refuse_in_one_line(cli: Cli, ada: str) -> None:
    assert "no admin user named 'ghost'" in cli.refused("user", "remove", "ghost")
    assert "no admin user named 'ghost'" in cli.refused(
        "user", "passwd", "ghost", "--password-stdin", input=NEW_PASSWORD + "\n"
    )
    assert "at least 10 characters" in cli.refused(
        "user", "passwd", USER, "--password-stdin", input="short\n"
    )


# --- password hashes ----------------------------------------------------------------------------


def _legacy_hash(password: str) -> str:
    """A hash as revisions up to 0002 stored it: `scrypt$n$r$p$salt$hash`, base64."""
    salt = b"0123456789abcdef"
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)
    b64 = base64.b64encode
    return f"scrypt$16384$8$1${b64(salt).decode()}${b64(digest).decode()}"


def _set_hash(app: Flask, stored: str) -> None:
    def work(s: object) -> None:
        s.query(User).filter_by(username=USER).one().password_hash = stored  # type: ignore[attr-defined]

    app.extensions["satchel"].db.run(work)


def test_new_passwords_are_hashed_by_werkzeug(app: Flask, ada: str) -> None:
    stored = _stored_hash(app)
    assert stored.startswith("scrypt:32768:8:1$") and PASSWORD not in stored
    assert check_password(PASSWORD, stored) and not check_password(NEW_PASSWORD, stored)


def test_legacy_hash_still_logs_in_and_is_upgraded_at_that_login(app: Flask, ada: str) -> None:
    legacy = _legacy_hash(PASSWORD)
    _set_hash(app, legacy)
    assert LoginForm(app.test_client()).submit(USER, WRONG_PASSWORD).status_code == 401
    assert _stored_hash(app) == legacy  # a wrong password upgrades nothing
    assert LoginForm(app.test_client()).submit(USER, PASSWORD).status_code == 303
    upgraded = _stored_hash(app)
    assert upgraded.startswith("scrypt:32768:8:1$") and check_password(PASSWORD, upgraded)
    assert LoginForm(app.test_client()).submit(USER, PASSWORD).status_code == 303
    assert _stored_hash(app) == upgraded  # upgraded once


@pytest.mark.parametrize(
    "stored", ["", "garbage", "scrypt$x$y$z$a$b", "pbkdf2:nope$salt$hash", "md5$salt$hash"]
)
def test_a_malformed_stored_hash_is_a_wrong_password_not_an_error(
    app: Flask, ada: str, stored: str
) -> None:
    _set_hash(app, stored)
    r = LoginForm(app.test_client()).submit(USER, PASSWORD)
    assert r.status_code == 401 and "wrong user name or password" in r.get_data(as_text=True)


# --- admin tokens: name, expiry, last use -------------------------------------------------------


def test_token_create_takes_a_name_and_a_lifetime(cli: Cli, app: Flask) -> None:
    out = cli.ok("token", "create", "--admin", "--name", "ci-pipeline", "--ttl", "3600")
    assert "expires 20" in out and out.strip().splitlines()[-1].startswith("sat_admin_")
    listed = json.loads(cli.ok("token", "list", "--json"))["admin_tokens"]
    (row,) = listed
    assert row["name"] == "ci-pipeline" and row["status"] == "valid"
    expires = datetime.fromisoformat(row["expires_at"])
    assert timedelta(minutes=59) < expires - _now() <= timedelta(hours=1)
    assert row["last_used_at"] is None
    assert "never" in cli.ok("token", "create", "--admin", "--name", "forever")
    for bad in ("0", "-5", "1e12"):
        assert "lifetime" in cli.refused("token", "create", "--admin", "--ttl", bad)


def test_expired_admin_token_is_refused(fleet: Fleet) -> None:
    db = fleet.app.extensions["satchel"].db
    past = _now() - timedelta(hours=2)
    old = db.run(lambda s: tokens.create_admin_token(s, "old", now=past, ttl_s=3600))
    r = fleet.client.get("/api/v1/devices", headers=bearer(old.token))
    assert r.status_code == 401 and "expired" in r.json["error"]["message"]
    listed = fleet.client.get("/api/v1/tokens", headers=fleet.admin).json["admin_tokens"]
    assert {t["name"]: t["status"] for t in listed} == {"tests": "valid", "old": "expired"}
    assert [t["name"] for t in listed] == ["tests", "old"]  # working ones first


def test_api_creates_an_expiring_admin_token(fleet: Fleet) -> None:
    r = fleet.client.post(
        "/api/v1/tokens",
        json={"kind": "admin", "name": "nightly", "ttl_s": 60},
        headers=fleet.admin,
    )
    assert r.status_code == 201
    expires = datetime.fromisoformat(r.json["expires_at"])
    assert timedelta(seconds=50) < expires - _now() <= timedelta(seconds=60)
    assert fleet.client.get("/api/v1/devices", headers=bearer(r.json["token"])).status_code == 200
    for ttl in (0, -1, 1e300, 10**400, "soon", True):
        body = {"kind": "admin", "name": "x", "ttl_s": ttl}
        r = fleet.client.post("/api/v1/tokens", json=body, headers=fleet.admin)
        assert r.status_code == 400, ttl
    body = {"kind": "admin", "name": "n" * 101}
    assert fleet.client.post("/api/v1/tokens", json=body, headers=fleet.admin).status_code == 400


def _last_used(fleet: Fleet, name: str) -> datetime | None:
    db = fleet.app.extensions["satchel"].db
    found: datetime | None = db.run(
        lambda s: s.query(AdminToken).filter_by(name=name).one().last_used_at
    )
    return found


def test_last_use_is_recorded_at_most_once_a_minute(fleet: Fleet, cli: Cli) -> None:
    db = fleet.app.extensions["satchel"].db
    issued = db.run(lambda s: tokens.create_admin_token(s, "script"))
    assert _last_used(fleet, "script") is None
    for _ in range(3):
        assert fleet.client.get("/api/v1/devices", headers=bearer(issued.token)).status_code == 200
    first = _last_used(fleet, "script")
    assert first is not None and _now() - first < timedelta(seconds=30)
    fleet.client.get("/api/v1/devices", headers=bearer(issued.token))
    assert _last_used(fleet, "script") == first  # within the minute: not written again

    def age(s: object) -> None:
        row = s.query(AdminToken).filter_by(name="script").one()  # type: ignore[attr-defined]
        row.last_used_at = first - timedelta(seconds=61)

    db.run(age)
    fleet.client.get("/api/v1/devices", headers=bearer(issued.token))
    later = _last_used(fleet, "script")
    assert later is not None and later > first
    listed = json.loads(cli.ok("token", "list", "--json"))["admin_tokens"]
    assert {t["name"]: t["last_used_at"] for t in listed}["script"] == later.isoformat()
    assert "script" in cli.ok("token", "list")
