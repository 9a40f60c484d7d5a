"""The rules of the login throttle: attempts counted per user name and per client address in
the database, before the password is hashed; a right password gives its attempt back; the
refusal (429, Retry-After) lifts when the window is over; every manager process sees the same
counts. The attacks themselves (guessing, spraying, guessing in parallel) are in
tests/reliability/test_attacks_sessions.py."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from satchel.manager.app import create_app
from satchel.manager.config import ManagerConfig
from satchel.manager.models import LoginAttempts
from satchel.manager.services import users
from tests.web.forms import LoginForm, csrf_from

USER, PASSWORD = "ada", "correct horse battery staple"
WRONG = "not the password at all"


def _settings(config: ManagerConfig, **changes: Any) -> dict[str, Any]:
    changed = dataclasses.replace(config, **changes)
    return {f.name: getattr(changed, f.name) for f in dataclasses.fields(changed)}


@pytest.fixture
def user(app: Flask) -> str:
    app.extensions["satchel"].db.run(lambda s: users.create_user(s, USER, PASSWORD))
    return USER


@pytest.fixture
def form(app: Flask, user: str) -> LoginForm:
    return LoginForm(app.test_client())


def _counts(app: Flask) -> dict[tuple[str, str], int]:
    db = app.extensions["satchel"].db
    return dict(
        db.run(lambda s: {(r.scope, r.subject): r.failures for r in s.query(LoginAttempts)})
    )


def test_the_sixth_wrong_password_within_the_window_is_refused_with_retry_after(
    app: Flask, form: LoginForm
) -> None:
    statuses = [form.submit(USER, WRONG).status_code for _ in range(5)]
    assert statuses == [401] * 5
    r = form.submit(USER, WRONG)
    assert r.status_code == 429
    assert "too many failed log-ins for this user name" in r.get_data(as_text=True)
    window = app.extensions["satchel"].config.login_window_s
    assert 0 < int(r.headers["Retry-After"]) <= window
    assert _counts(app)[("user", USER)] == 5  # the refused one was not counted


def test_a_right_password_clears_the_user_names_count(app: Flask, form: LoginForm) -> None:
    for _ in range(4):
        assert form.submit(USER, WRONG).status_code == 401
    assert form.submit(USER, PASSWORD).status_code == 303
    assert ("user", USER) not in _counts(app)
    assert _counts(app)[("address", form.address)] == 4  # the right attempt was given back
    fresh = LoginForm(app.test_client())
    assert [fresh.submit(USER, WRONG).status_code for _ in range(6)] == [401] * 5 + [429]


def test_unknown_user_names_are_counted_like_known_ones(app: Flask, form: LoginForm) -> None:
    """Otherwise the throttle itself would tell which names exist."""
    known = [form.submit(USER, WRONG).status_code for _ in range(6)]
    other = LoginForm(app.test_client(), address="192.0.2.11")
    unknown = [other.submit("nobody", WRONG).status_code for _ in range(6)]
    assert known == unknown == [401] * 5 + [429]


def test_the_user_name_count_is_kept_whatever_the_address(app: Flask, user: str) -> None:
    hits = [
        LoginForm(app.test_client(), address=f"198.51.100.{n}").submit(USER, WRONG).status_code
        for n in range(1, 7)
    ]
    assert hits == [401] * 5 + [429]


def test_the_refusal_lifts_when_the_window_has_passed(config: ManagerConfig, user: str) -> None:
    short = create_app({**_settings(config, login_window_s=1.0), "TESTING": True})
    try:
        form = LoginForm(short.test_client())
        assert [form.submit(USER, WRONG).status_code for _ in range(6)] == [401] * 5 + [429]
        assert form.submit(USER, PASSWORD).status_code == 429
        time.sleep(1.1)
        assert form.submit(USER, PASSWORD).status_code == 303
    finally:
        short.extensions["satchel"].db.dispose()


@pytest.fixture
def second_process(config: ManagerConfig) -> Iterator[Flask]:
    """Another manager on the same database, as a second worker or host would be."""
    other = create_app({**_settings(config), "TESTING": True})
    yield other
    other.extensions["satchel"].db.dispose()


def test_every_manager_process_sees_the_same_counts(
    app: Flask, form: LoginForm, second_process: Flask
) -> None:
    assert [form.submit(USER, WRONG).status_code for _ in range(5)] == [401] * 5
    elsewhere = LoginForm(second_process.test_client())
    r = elsewhere.submit(USER, PASSWORD)
    assert r.status_code == 429 and r.headers["Retry-After"]


def test_limits_come_from_the_configuration(config: ManagerConfig, user: str) -> None:
    strict = create_app(
        {**_settings(config, login_user_failures=2, login_address_failures=3), "TESTING": True}
    )
    try:
        form = LoginForm(strict.test_client())
        assert [form.submit(USER, WRONG).status_code for _ in range(3)] == [401, 401, 429]
        assert form.submit("someone-else", WRONG).status_code == 401  # address: third
        r = form.submit("a-third-name", WRONG)
        assert r.status_code == 429
        assert "for this address" in r.get_data(as_text=True)
    finally:
        strict.extensions["satchel"].db.dispose()


def test_counts_of_past_windows_are_cleaned_up(config: ManagerConfig, user: str) -> None:
    short = create_app({**_settings(config, login_window_s=0.5), "TESTING": True})
    try:
        for n in range(3):
            LoginForm(short.test_client(), f"203.0.113.{n}").submit(f"name-{n}", WRONG)
        assert len(_counts(short)) == 6
        time.sleep(0.6)
        LoginForm(short.test_client(), "203.0.113.9").submit(USER, WRONG)
        assert set(_counts(short)) == {("user", USER), ("address", "203.0.113.9")}
    finally:
        short.extensions["satchel"].db.dispose()


def test_logged_in_client_is_not_asked_again(form: LoginForm) -> None:
    assert form.submit(USER, PASSWORD).status_code == 303
    assert form.client.get("/login").status_code == 302


def _guess_from(client: Any, forwarded_for: str, name: str) -> int:
    """A wrong password through a reverse proxy that names the client in X-Forwarded-For."""
    token = csrf_from(client.get("/login").get_data(as_text=True))
    form = {"username": name, "password": WRONG, "csrf_token": token}
    r = client.post("/login", data=form, headers={"X-Forwarded-For": forwarded_for},
                    environ_base={"REMOTE_ADDR": "10.0.0.1"})  # the proxy's own address
    return r.status_code


@pytest.mark.parametrize("proxies", [0, 1])
def test_behind_a_trusted_proxy_each_client_address_has_its_own_budget(
    config: ManagerConfig, proxies: int
) -> None:
    app = create_app({**_settings(config, trusted_proxies=proxies), "TESTING": True})
    try:
        client = app.test_client()
        first = [_guess_from(client, "198.51.100.7", f"user{i}") for i in range(21)]
        other = _guess_from(client, "203.0.113.9", "someone")
    finally:
        app.extensions["satchel"].db.dispose()
    assert first[:20] == [401] * 20 and first[20] == 429
    # Trusted: another client behind the proxy still gets its turn; not trusted: the header
    # is the client's own claim, so every guess counts against the proxy's address.
    assert other == (401 if proxies else 429)
