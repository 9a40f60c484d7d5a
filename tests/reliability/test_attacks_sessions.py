"""Attacks on the dashboard's logins and on admin credentials, against the real manager (the
Flask app in-process, and served over HTTP on 127.0.0.1 for guesses sent in parallel), on
SQLite and PostgreSQL.

Password guessing is refused per user name and per client address before any password is
hashed (a scrypt run of 32 MiB is the lever an attacker pulls); a saved session cookie opens
nothing once its login was ended; an expired admin token is refused. A refused attack opens
no login and changes no other row.
"""

from __future__ import annotations

import statistics
import threading
import time
from datetime import datetime, timezone
from typing import Any

import requests
from flask import Flask

from satchel.manager.models import WebSession
from satchel.manager.services import tokens, users
from tests.manager.helpers import Fleet, bearer
from tests.manager.live_server import LiveServer
from tests.reliability.dbstate import dump
from tests.reliability.figures import Recorder
from tests.web.forms import LoginForm, csrf_from

USER, PASSWORD = "ada", "correct horse battery staple"
PER_USER = 5  # the default limits of ManagerConfig
PER_ADDRESS = 20


def _add_user(app: Flask, name: str = USER, password: str = PASSWORD) -> None:
    app.extensions["satchel"].db.run(lambda s: users.create_user(s, name, password))


def _logins(app: Flask) -> int:
    return int(app.extensions["satchel"].db.run(lambda s: s.query(WebSession).count()))


def _timed(form: LoginForm, username: str, password: str) -> tuple[int, float, Any]:
    start = time.perf_counter()
    r = form.submit(username, password)
    return r.status_code, time.perf_counter() - start, r


def test_password_guessing_sixty_wrong_then_the_right_one_is_refused(
    app: Flask, backend: str, measured: Recorder
) -> None:
    _add_user(app)
    form = LoginForm(app.test_client())
    start = time.perf_counter()
    tries = [_timed(form, USER, f"guess number {n}") for n in range(60)]
    elapsed = time.perf_counter() - start
    status, _, right = _timed(form, USER, PASSWORD)

    statuses = [s for s, _, _ in tries]
    assert statuses == [401] * PER_USER + [429] * (60 - PER_USER)
    assert status == 429 and 0 < int(right.headers["Retry-After"]) <= 15 * 60
    assert _logins(app) == 0 and form.client.get("/").status_code == 302
    checked = statistics.mean(t for s, t, _ in tries if s == 401)
    refused = statistics.mean(t for s, t, _ in tries if s == 429)
    assert refused * 3 < checked, (refused, checked)  # a refusal runs no scrypt
    measured.row(
        "manager",
        f"password guessing: 60 wrong passwords for one user, then the right one ({backend})",
        61,
        f"{PER_USER} checked (401), the rest and the right one refused before hashing "
        "(429, Retry-After); no login",
        seconds_for_60=round(elapsed, 2),
        ms_per_checked=round(checked * 1000, 1),
        ms_per_refused=round(refused * 1000, 1),
    )


def test_password_spraying_across_user_names_from_one_address_is_refused(
    app: Flask, backend: str, measured: Recorder
) -> None:
    _add_user(app)
    sprayer = LoginForm(app.test_client(), address="203.0.113.66")
    names = [f"admin{n}" for n in range(PER_ADDRESS + 5)]
    statuses = [sprayer.submit(name, "Winter2026!").status_code for name in names]
    assert statuses == [401] * PER_ADDRESS + [429] * 5
    assert sprayer.submit(USER, PASSWORD).status_code == 429
    # the sprayer locked out its own address, not the user
    assert (
        LoginForm(app.test_client(), address="192.0.2.10").submit(USER, PASSWORD).status_code == 303
    )
    measured.row(
        "manager",
        f"password spraying: one address, {len(names)} user names, then a real login ({backend})",
        len(names) + 1,
        f"{PER_ADDRESS} checked, then 429 for that address; the user still logs in from another",
    )


def test_parallel_guessing_over_http_is_counted_before_any_password_is_checked(
    app: Flask, backend: str, measured: Recorder
) -> None:
    """Thirty guesses released at once: counting after the check would let all of them in."""
    _add_user(app)
    guessers = 30
    with LiveServer(app) as server:
        sessions = []
        for _ in range(guessers):
            http = requests.Session()
            token = csrf_from(http.get(f"{server.url}/login", timeout=30).text)
            sessions.append((http, token))
        go = threading.Barrier(guessers)
        statuses: list[int] = []

        def guess(n: int) -> None:
            http, token = sessions[n]
            form = {"username": USER, "password": f"guess {n}", "csrf_token": token}
            go.wait()
            r = http.post(f"{server.url}/login", data=form, allow_redirects=False, timeout=60)
            statuses.append(r.status_code)

        start = time.perf_counter()
        threads = [threading.Thread(target=guess, args=(n,)) for n in range(guessers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        elapsed = time.perf_counter() - start
        for http, _ in sessions:
            http.close()
    assert sorted(statuses) == [401] * PER_USER + [429] * (guessers - PER_USER)
    assert _logins(app) == 0
    measured.row(
        "manager",
        f"password guessing: {guessers} guesses at once over HTTP ({backend})",
        guessers,
        f"exactly {PER_USER} checked, {guessers - PER_USER} refused with 429",
        seconds=round(elapsed, 2),
    )


def _replay(app: Flask, cookie: str) -> Any:
    replay = app.test_client()
    replay.set_cookie("satchel_session", cookie)
    return replay.get("/tokens")


def test_saved_session_cookie_replayed_after_logout_password_change_or_removal_is_refused(
    app: Flask, backend: str, measured: Recorder
) -> None:
    _add_user(app)
    db = app.extensions["satchel"].db

    def saved_login(address: str) -> tuple[Any, str]:
        browser = app.test_client()
        form = LoginForm(browser, address)
        assert form.submit(USER, PASSWORD).status_code == 303
        cookie = browser.get_cookie("satchel_session")
        assert cookie is not None and _replay(app, cookie.value).status_code == 200
        return browser, cookie.value

    def log_out(browser: Any) -> None:
        with browser.session_transaction() as s:
            token = s["csrf"]
        assert browser.post("/logout", data={"csrf_token": token}).status_code == 303

    endings = {
        "logout": log_out,
        # the same password again: what counts is that it was set
        "password change": lambda _: db.run(lambda s: users.set_password(s, USER, PASSWORD)),
        "user removed": lambda _: db.run(lambda s: users.remove_user(s, USER)),
    }
    for n, (what, end) in enumerate(endings.items()):
        browser, cookie = saved_login(f"192.0.2.{n + 1}")
        end(browser)
        before = dump(app)
        r = _replay(app, cookie)
        assert r.status_code == 302 and r.headers["Location"].startswith("/login"), what
        assert dump(app) == before, what
    measured.row(
        "manager",
        f"saved session cookie replayed after logout, password change, user removal ({backend})",
        len(endings),
        "redirected to the login page; the login had ended on the server",
    )


def test_expired_admin_token_is_refused(fleet: Fleet, backend: str, measured: Recorder) -> None:
    db = fleet.app.extensions["satchel"].db
    now = time.time()

    def issued(ago_s: float, ttl_s: float) -> str:
        created = datetime.fromtimestamp(now - ago_s, timezone.utc)
        return db.run(lambda s: tokens.create_admin_token(s, "old", now=created, ttl_s=ttl_s)).token

    expired = [issued(3600, 60), issued(2.0, 1.0), issued(400 * 86400, 365 * 86400)]
    tried = 0
    for token in expired:
        for method, path, body in (
            ("GET", "/api/v1/devices", None),
            ("GET", "/api/v1/tokens", None),
            ("POST", "/api/v1/tokens", {"kind": "admin", "name": "fresh"}),
        ):
            before = dump(fleet.app)
            r = fleet.client.open(path, method=method, json=body, headers=bearer(token))
            tried += 1
            assert r.status_code == 401 and "expired" in r.json["error"]["message"], path
            assert dump(fleet.app) == before
    measured.row(
        "manager",
        f"expired admin tokens on the API, reading and minting a new token ({backend})",
        tried,
        "refused (401, 'expired'), nothing changed",
    )
