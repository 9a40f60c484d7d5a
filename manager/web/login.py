"""Logging in and out of the dashboard with an admin user's name and password."""

from __future__ import annotations

import sqlalchemy.orm as so
from flask import flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from manager.errors import AuthError
from manager.services import users
from manager.web import bp
from manager.web.common import run, safe_path
from manager.web.session import current_user, log_in, log_out

MAX_NAME_CHARS = 64  # characters of a user name read from the form
MAX_PASSWORD_CHARS = 1024  # characters of a password read from the form


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
        user_id, password_hash = run(lambda s: _authenticate(s, username, password))
    except AuthError as e:
        html = render_template("login.html", next=target, username=username, error=str(e))
        return Response(html, status=401, mimetype="text/html")
    log_in(user_id, password_hash)
    return redirect(target, code=303)


def _authenticate(session: so.Session, username: str, password: str) -> tuple[int, str]:
    user = users.authenticate_user(session, username, password)
    return user.id, user.password_hash


@bp.post("/logout")
def logout() -> Response:
    log_out()
    flash("You are logged out.", "ok")
    return redirect(url_for("web.login"), code=303)
