"""The users page: list the admins, add one, change your own password (the current one first,
through the login throttle), remove another admin. A password change or a removal ends the
logins it concerns at once; admin tokens show their expiry and last use."""

from __future__ import annotations

import html
import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from satchel.manager.models import AdminToken, User, WebSession
from satchel.manager.services import tokens, users
from satchel.manager.services.credentials import check_password
from tests.manager.helpers import Fleet, bearer
from tests.web.forms import ADMIN_PASSWORD, ADMIN_USER, LoginForm, csrf_of

OTHER, OTHER_PASSWORD = "grace", "another long password"
NEW_PASSWORD = "a brand new passphrase"


def post(client: FlaskClient, path: str, **form: str) -> Any:
    return client.post(path, data={**form, "csrf_token": csrf_of(client)})


def text(r: Any) -> str:
    return html.unescape(r.get_data(as_text=True))


def _users(app: Flask) -> dict[str, str]:
    """user name -> stored password hash."""
    db = app.extensions["satchel"].db
    return dict(db.run(lambda s: {u.username: u.password_hash for u in s.query(User)}))


def _logins(app: Flask) -> int:
    return int(app.extensions["satchel"].db.run(lambda s: s.query(WebSession).count()))


@pytest.fixture
def grace(app: Flask) -> FlaskClient:
    """A second admin, logged in in their own browser."""
    app.extensions["satchel"].db.run(lambda s: users.create_user(s, OTHER, OTHER_PASSWORD))
    browser = app.test_client()
    assert LoginForm(browser, "192.0.2.20").submit(OTHER, OTHER_PASSWORD).status_code == 303
    return browser


def test_users_page_lists_admins_and_offers_no_way_to_remove_yourself(
    admin: FlaskClient, grace: FlaskClient
) -> None:
    page = text(admin.get("/users"))
    rows = re.findall(r'<tr data-user="([^"]+)">', page)
    assert rows == [ADMIN_USER, OTHER]
    assert f'action="/users/{OTHER}/remove"' in page
    assert f'action="/users/{ADMIN_USER}/remove"' not in page
    assert 'aria-current="page">Users' in page


def test_changing_your_password_ends_your_other_logins_and_keeps_this_one(
    app: Flask, admin: FlaskClient
) -> None:
    elsewhere = app.test_client()
    assert LoginForm(elsewhere, "192.0.2.30").submit(ADMIN_USER, ADMIN_PASSWORD).status_code == 303
    r = post(
        admin,
        "/users/password",
        current_password=ADMIN_PASSWORD,
        new_password=NEW_PASSWORD,
        new_password_again=NEW_PASSWORD,
    )
    assert r.status_code == 303 and r.headers["Location"] == "/users"
    assert "Password changed" in text(admin.get("/users"))
    assert elsewhere.get("/").status_code == 302
    assert admin.get("/").status_code == 200
    assert _logins(app) == 1
    assert check_password(NEW_PASSWORD, _users(app)[ADMIN_USER])
    assert (
        LoginForm(app.test_client(), "192.0.2.31").submit(ADMIN_USER, ADMIN_PASSWORD).status_code
        == 401
    )


def test_refused_password_changes_change_nothing(app: Flask, admin: FlaskClient) -> None:
    before = _users(app)
    cases = [
        ({"current_password": "wrong wrong wrong"}, 403, "current password is wrong"),
        ({"new_password_again": "something else"}, 400, "differ"),
        ({"new_password": "short", "new_password_again": "short"}, 400, "at least 10"),
    ]
    for change, status, message in cases:
        form = {
            "current_password": ADMIN_PASSWORD,
            "new_password": NEW_PASSWORD,
            "new_password_again": NEW_PASSWORD,
            **change,
        }
        r = post(admin, "/users/password", **form)
        assert r.status_code == status and message in text(r), change
    assert _users(app) == before
    assert admin.get("/").status_code == 200


def test_guessing_the_current_password_on_a_stolen_login_is_throttled(
    app: Flask, admin: FlaskClient
) -> None:
    """Whoever holds a login could otherwise try passwords here without any limit."""
    form = {"new_password": NEW_PASSWORD, "new_password_again": NEW_PASSWORD}
    statuses = [
        post(admin, "/users/password", current_password=f"guess {n}", **form).status_code
        for n in range(6)
    ]
    assert statuses == [403] * 5 + [429]
    r = post(admin, "/users/password", current_password=ADMIN_PASSWORD, **form)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    assert check_password(ADMIN_PASSWORD, _users(app)[ADMIN_USER])


def test_removing_an_admin_ends_their_logins_and_their_tokens(
    app: Flask, admin: FlaskClient, grace: FlaskClient, fleet: Fleet
) -> None:
    db = app.extensions["satchel"].db
    theirs = db.run(lambda s: tokens.create_admin_token(s, "grace-ci", OTHER)).token
    assert fleet.client.get("/api/v1/devices", headers=bearer(theirs)).status_code == 200
    r = post(admin, f"/users/{OTHER}/remove")
    assert r.status_code == 303
    assert "1 login(s) ended, 1 admin token(s) deleted" in text(admin.get("/users"))
    assert OTHER not in _users(app)
    assert grace.get("/").status_code == 302
    assert fleet.client.get("/api/v1/devices", headers=bearer(theirs)).status_code == 401
    assert db.run(lambda s: s.query(AdminToken).filter_by(name="grace-ci").count()) == 0


def test_you_cannot_remove_yourself(app: Flask, admin: FlaskClient) -> None:
    r = post(admin, f"/users/{ADMIN_USER}/remove")
    assert "cannot remove yourself" in text(admin.get(r.headers["Location"]))
    assert ADMIN_USER in _users(app) and admin.get("/").status_code == 200
    r = post(admin, "/users/nobody/remove")
    assert "no admin user named 'nobody'" in text(admin.get(r.headers["Location"]))


def test_adding_an_admin_from_the_page(app: Flask, admin: FlaskClient) -> None:
    r = post(
        admin,
        "/users",
        username=OTHER,
        new_password=OTHER_PASSWORD,
        new_password_again=OTHER_PASSWORD,
    )
    assert r.status_code == 303
    assert (
        LoginForm(app.test_client(), "192.0.2.40").submit(OTHER, OTHER_PASSWORD).status_code == 303
    )
    for form, message in (
        ({"username": OTHER}, "already exists"),
        ({"username": "no spaces"}, "not a valid name"),
        ({"username": "linus", "new_password": "short", "new_password_again": "short"}, "at least"),
    ):
        full = {"new_password": NEW_PASSWORD, "new_password_again": NEW_PASSWORD, **form}
        r = post(admin, "/users", **full)
        assert r.status_code == 400 and message in text(r), form
    assert set(_users(app)) == {ADMIN_USER, OTHER}


def test_admin_tokens_show_expiry_and_last_use(
    app: Flask, admin: FlaskClient, fleet: Fleet
) -> None:
    r = post(admin, "/tokens/admin", name="nightly", ttl_days="30")
    assert r.status_code == 201
    token = re.search(r'id="new-token">(sat_admin_[^<]+)<', text(r)).group(1)  # type: ignore[union-attr]
    row = _token_row(text(admin.get("/tokens")), "nightly")
    assert 'class="last-used"><span class="muted">never</span>' in row
    assert "never" not in row.split('class="expires">')[1].split("</td>")[0]
    assert fleet.client.get("/api/v1/devices", headers=bearer(token)).status_code == 200
    row = _token_row(text(admin.get("/tokens")), "nightly")
    assert 'class="last-used"><time datetime=' in row
    for form in ({"name": ""}, {"name": "x", "ttl_days": "-1"}, {"name": "x", "ttl_days": "soon"}):
        assert post(admin, "/tokens/admin", **form).status_code == 400, form


def _token_row(page: str, name: str) -> str:
    for row in re.findall(r'<tr data-token="\d+">.*?</tr>', page, re.S):
        if f"<td>{name}</td>" in row:
            return str(row)
    raise AssertionError(f"no token {name} listed")
