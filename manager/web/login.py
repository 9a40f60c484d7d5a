"""Logging in and out of the dashboard with an admin user's name and password.

Every password typed into the dashboard (here, and the current password on the users page)
goes through `checked`: counted against the user name and the client address first, refused
with 429 and Retry-After once either has failed too often, and only then hashed
(`manager.services.logins`).
"""

from __future__ import annotations

import sqlalchemy.orm as so
from flask import flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from satchel.bundles.timeutil import now
from satchel.manager.context import state
from satchel.manager.errors import AuthError, TooManyAttemptsError
from satchel.manager.services import logins, web_sessions
from satchel.manager.web import bp
from satchel.manager.web.common import run, safe_path
from satchel.manager.web.config import web_config
from satchel.manager.web.session import current_user, log_in, log_out

MAX_NAME_CHARS = 64  # characters of a user name read from the form
MAX_PASSWORD_CHARS = 1024  # characters of a password read from the form


def client_address() -> str:
    """The address the request came from, as the server saw it."""
    return request.remote_addr or "unknown"


def checked(username: str, password: str) -> logins.Verified:
    """Count an attempt to use `password` as `username`'s, then check it.

    Raises TooManyAttemptsError (not checked at all), AuthError (wrong name or password).
    """
    limits = logins.Limits.of(state().config)
    address = client_address()
    t = now()
    attempt = run(lambda s: logins.start(s, username, address, t, limits))
    return logins.verify(attempt, password)


def open_login(session: so.Session, verified: logins.Verified) -> str:
    """Inside a transaction: give the right attempt back and start a login; its secret."""
    user_id = logins.complete(session, verified)
    return web_sessions.open_session(session, user_id, now(), web_config().session_lifetime_s)


def throttled(response: Response, err: TooManyAttemptsError) -> Response:
    response.status_code = 429
    response.headers["Retry-After"] = str(err.retry_after_s)
    return response


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response | str:
    """GET: the login form (or straight on, when already logged in). POST: check the name
    and password; a failure says so without telling which was wrong."""
    target = safe_path(request.values.get("next"), url_for("web.fleet"))
    if request.method == "GET":
        if current_user() is not None:
            return redirect(target)
        return render_template("login.html", next=target, username="")
    username = request.form.get("username", "")[:MAX_NAME_CHARS]
    password = request.form.get("password", "")[:MAX_PASSWORD_CHARS]
    try:
        verified = checked(username, password)
        secret = run(lambda s: open_login(s, verified))
    except TooManyAttemptsError as e:
        return throttled(_form(target, username, str(e)), e)
    except AuthError as e:
        response = _form(target, username, str(e))
        response.status_code = 401
        return response
    log_in(secret)
    return redirect(target, code=303)


def _form(target: str, username: str, error: str) -> Response:
    html = render_template("login.html", next=target, username=username, error=error)
    return Response(html, mimetype="text/html")


@bp.post("/logout")
def logout() -> Response:
    log_out()
    flash("You are logged out.", "ok")
    return redirect(url_for("web.login"), code=303)
