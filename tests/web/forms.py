"""The dashboard's forms as a browser fills them: the admin's credentials, CSRF tokens from a
page or a session, logging in, and a login form that a password guesser submits over and over.
"""

from __future__ import annotations

import re

from flask.testing import FlaskClient
from werkzeug.test import TestResponse

ADMIN_USER = "ada"
ADMIN_PASSWORD = "correct horse battery staple"
_CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_from(html: str) -> str:
    found = _CSRF_INPUT.search(html)
    assert found, "no CSRF field in the page"
    return found.group(1)


def csrf_of(client: FlaskClient) -> str:
    """The CSRF token of the client's session."""
    with client.session_transaction() as s:
        return str(s["csrf"])


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
