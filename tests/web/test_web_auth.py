"""Login, logout and CSRF: every page needs a login, every form needs this session's token,
and a refused request changes nothing."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from satchel.manager.app import create_app
from satchel.manager.models import AdminToken, Deployment, EnrollmentToken, User, WebSession
from satchel.manager.services import users
from tests.manager.helpers import Fleet
from tests.web.forms import ADMIN_PASSWORD, ADMIN_USER, csrf_from, csrf_of, log_in
from tests.web.seed import Seeded

PAGES = [
    "/",
    "/?state=failing",
    "/devices/cam-01",
    "/bundles",
    "/deployments",
    "/deployments/1",
    "/tokens",
    "/users",
]


def _snapshot(app: Flask) -> dict[str, Any]:
    """What the forms could change: deployments and their states, tokens and theirs."""
    db = app.extensions["satchel"].db

    def read(s: Any) -> dict[str, Any]:
        return {
            "deployments": sorted((d.id, d.state, d.reason) for d in s.query(Deployment)),
            "admin_tokens": sorted((t.id, t.revoked_at) for t in s.query(AdminToken)),
            "enroll_tokens": sorted((t.id, t.expires_at) for t in s.query(EnrollmentToken)),
            "users": sorted((u.username, u.password_hash) for u in s.query(User)),
        }

    return db.run(read)


@pytest.mark.parametrize("path", PAGES)
def test_every_page_redirects_to_login_when_logged_out(
    client: FlaskClient, seeded: Seeded, path: str
) -> None:
    r = client.get(path)
    assert r.status_code == 302
    assert r.headers["Location"].startswith("/login?next=")
    assert "edge-box" not in r.get_data(as_text=True)  # no fleet data leaks


def test_login_page_and_assets_need_no_login(client: FlaskClient) -> None:
    assert client.get("/login").status_code == 200
    css = client.get("/static/web/satchel.css")
    assert css.status_code == 200 and "text/css" in css.headers["Content-Type"]


def test_login_opens_a_session_in_an_httponly_samesite_cookie(client: FlaskClient) -> None:
    r = log_in(client)
    assert r.status_code == 303 and r.headers["Location"] == "/"
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith("satchel_session=")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert client.get("/").status_code == 200


def test_wrong_password_is_refused_and_opens_no_session(client: FlaskClient) -> None:
    r = log_in(client, ADMIN_USER, "not the password at all")
    assert r.status_code == 401
    assert "wrong user name or password" in r.get_data(as_text=True)
    r = log_in(client, "nobody", ADMIN_PASSWORD)
    assert r.status_code == 401
    assert "wrong user name or password" in r.get_data(as_text=True)
    assert client.get("/").status_code == 302


def test_login_goes_back_to_the_page_asked_for_but_never_off_site(client: FlaskClient) -> None:
    token = csrf_from(client.get("/login?next=/tokens").get_data(as_text=True))
    form = {"username": ADMIN_USER, "password": ADMIN_PASSWORD, "csrf_token": token}
    r = client.post("/login", data={**form, "next": "/tokens"})
    assert r.headers["Location"] == "/tokens"
    for evil in ("https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:x"):
        c = client.application.test_client()
        token = csrf_from(c.get("/login").get_data(as_text=True))
        r = c.post("/login", data={**form, "csrf_token": token, "next": evil})
        assert r.status_code == 303 and r.headers["Location"] == "/", evil


def test_logout_ends_the_session(admin: FlaskClient) -> None:
    r = admin.post("/logout", data={"csrf_token": csrf_of(admin)})
    assert r.status_code == 303 and r.headers["Location"] == "/login"
    assert admin.get("/").status_code == 302


def test_saved_cookie_replayed_after_logout_is_refused(app: Flask, admin: FlaskClient) -> None:
    """Logging out ends the login on the server: a copy of the cookie taken before (a shared
    computer, a proxy log, malware) opens nothing afterwards."""
    saved = admin.get_cookie("satchel_session")
    assert saved is not None
    admin.post("/logout", data={"csrf_token": csrf_of(admin)})
    replay = app.test_client()
    replay.set_cookie("satchel_session", saved.value)
    r = replay.get("/tokens")
    assert r.status_code == 302 and r.headers["Location"].startswith("/login")
    r = replay.post("/tokens/admin", data={"name": "replayed", "csrf_token": csrf_of(replay)})
    assert r.status_code == 302
    assert app.extensions["satchel"].db.run(lambda s: s.query(AdminToken).count()) == 0


def test_login_past_its_lifetime_is_refused_by_the_server(app: Flask, admin: FlaskClient) -> None:
    """The cookie's own expiry is the browser's to honour; the server keeps its own."""
    past = datetime.now(timezone.utc) - timedelta(seconds=1)
    app.extensions["satchel"].db.run(
        lambda s: s.execute(sa.update(WebSession).values(expires_at=past))
    )
    assert admin.get("/").status_code == 302


def test_cookie_naming_a_user_id_opens_nothing(app: Flask, client: FlaskClient) -> None:
    """What a login cookie held before logins lived on the server: a user id and a tag."""
    with client.session_transaction() as s:
        s["user_id"] = 1
        s["password_tag"] = "0" * 32
    assert client.get("/").status_code == 302


def test_changing_the_password_ends_open_sessions(app: Flask, admin: FlaskClient) -> None:
    assert admin.get("/").status_code == 200
    app.extensions["satchel"].db.run(
        lambda s: users.set_password(s, ADMIN_USER, "a brand new passphrase")
    )
    assert admin.get("/").status_code == 302


def test_csrf_token_is_renewed_at_login(client: FlaskClient) -> None:
    client.get("/login")
    before = csrf_of(client)
    log_in(client)
    assert csrf_of(client) != before


def _forms(seeded: Seeded) -> list[tuple[str, dict[str, str]]]:
    dep = seeded.first_deployment
    return [
        (f"/deployments/{dep}/abort", {"reason": "forged"}),
        ("/deployments", {"bundle": "vision:1.1.0", "devices": "cam-01", "waves": "1"}),
        ("/tokens/admin", {"name": "forged"}),
        ("/tokens/enroll", {"ttl_hours": "1"}),
        ("/tokens/admin/1/revoke", {}),
        ("/tokens/enroll/1/revoke", {}),
        (
            "/users",
            {"username": "mallory", "new_password": "x" * 12, "new_password_again": "x" * 12},
        ),
        (
            "/users/password",
            {
                "current_password": ADMIN_PASSWORD,
                "new_password": "y" * 12,
                "new_password_again": "y" * 12,
            },
        ),
        (f"/users/{ADMIN_USER}/remove", {}),
    ]


def test_post_without_the_csrf_token_is_refused_and_changes_nothing(
    app: Flask, admin: FlaskClient, seeded: Seeded, fleet: Fleet
) -> None:
    fleet.enrollment_token()  # an unused one that a forged revoke could hit
    before = _snapshot(app)
    for path, form in _forms(seeded):
        r = admin.post(path, data=form)
        assert r.status_code == 400, path
        assert "Form refused" in r.get_data(as_text=True)
        r = admin.post(path, data={**form, "csrf_token": "x" * 43})
        assert r.status_code == 400, path
    assert _snapshot(app) == before
    assert admin.post("/logout").status_code == 400
    assert admin.get("/").status_code == 200  # still logged in


def test_another_sessions_csrf_token_is_refused(
    app: Flask, admin: FlaskClient, seeded: Seeded
) -> None:
    other = app.test_client()
    log_in(other)
    before = _snapshot(app)
    r = admin.post("/tokens/admin", data={"name": "x", "csrf_token": csrf_of(other)})
    assert r.status_code == 400
    assert _snapshot(app) == before


def test_forms_posted_while_logged_out_change_nothing(
    app: Flask, client: FlaskClient, seeded: Seeded
) -> None:
    client.get("/login")  # an anonymous session with a valid token
    before = _snapshot(app)
    for path, form in _forms(seeded):
        r = client.post(path, data={**form, "csrf_token": csrf_of(client)})
        assert r.status_code == 302 and r.headers["Location"].startswith("/login"), path
    assert _snapshot(app) == before


def test_login_form_itself_needs_the_csrf_token(client: FlaskClient) -> None:
    r = client.post("/login", data={"username": ADMIN_USER, "password": ADMIN_PASSWORD})
    assert r.status_code == 400
    assert client.get("/").status_code == 302


def test_pages_forbid_framing_and_foreign_scripts(admin: FlaskClient) -> None:
    r = admin.get("/")
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["Cache-Control"] == "no-store"


def test_api_still_answers_401_json_not_a_login_page(client: FlaskClient) -> None:
    r = client.get("/api/v1/devices")
    assert r.status_code == 401 and (r.json or {})["error"]["code"] == "unauthorized"


def test_session_key_is_made_once_in_the_database_and_outlives_a_restart(
    sqlite_template: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    shutil.copyfile(sqlite_template, data_dir / "satchel.db")
    settings = {"data_dir": data_dir, "database_url": "", "log_requests": False}
    first = create_app(dict(settings))
    first.extensions["satchel"].db.run(lambda s: users.create_user(s, ADMIN_USER, ADMIN_PASSWORD))
    assert not (data_dir / "web-session.key").exists()  # nothing of it on this host's disk
    client = first.test_client()
    assert log_in(client).status_code == 303
    cookie = client.get_cookie("satchel_session")
    assert cookie is not None
    second = create_app(dict(settings))  # a restart, or another worker
    assert second.config["SECRET_KEY"] == first.config["SECRET_KEY"]
    other = second.test_client()
    other.set_cookie("satchel_session", cookie.value)
    assert other.get("/").status_code == 200
    for app in (first, second):
        app.extensions["satchel"].db.dispose()
