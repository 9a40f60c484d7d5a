"""Users: the admin users, adding one, changing your own password, removing another user.

Changing a password asks for the current one, through the same throttle as the login form,
and ends every other login of the user; removing a user ends all of theirs.
"""

from __future__ import annotations

from typing import Any

from flask import g, render_template, request
from werkzeug.wrappers import Response

from satchel.bundles.timeutil import now
from satchel.manager.errors import AuthError, ManagerError, TooManyAttemptsError
from satchel.manager.services import logins, users, web_sessions
from satchel.manager.web import bp
from satchel.manager.web.common import done, refused, run
from satchel.manager.web.config import web_config
from satchel.manager.web.errors import FormError
from satchel.manager.web.login import MAX_NAME_CHARS, MAX_PASSWORD_CHARS, checked, throttled
from satchel.manager.web.session import log_in


def _page(
    error: str | None = None, status: int = 200, form: dict[str, str] | None = None
) -> Response:
    t = now()
    html = render_template(
        "users.html",
        users=run(lambda s: users.list_users(s, t)),
        error=error,
        form=form or {},
        min_chars=users.MIN_PASSWORD_CHARS,
    )
    return Response(html, status=status, mimetype="text/html")


def _new_password() -> str:
    """The new password of a form, typed twice. Raises FormError, InvalidRequestError."""
    new = request.form.get("new_password", "")
    if new != request.form.get("new_password_again", ""):
        raise FormError("the new password and its repetition differ")
    users.check_new_password(new)
    return new


@bp.get("/users")
def user_list() -> Response:
    return _page()


@bp.post("/users")
def user_create() -> Response:
    """Add an admin user with a first password."""
    username = (request.form.get("username") or "").strip()[:MAX_NAME_CHARS]
    try:
        password = _new_password()
        run(lambda s: users.create_user(s, username, password).id)
    except ManagerError as e:
        return _page(error=str(e), status=400, form={"username": username})
    return done(f"User {username} added.", "web.user_list")


@bp.post("/users/password")
def password_change() -> Response:
    """Change your own password: the current one first. Your other logins end; this browser
    gets a new login."""
    me = g.web_user
    current = request.form.get("current_password", "")[:MAX_PASSWORD_CHARS]
    try:
        new = _new_password()
        verified = checked(me.username, current)
    except TooManyAttemptsError as e:
        return throttled(_page(error=str(e)), e)
    except AuthError:
        return _page(error="your current password is wrong", status=403)
    except ManagerError as e:
        return _page(error=str(e), status=400)
    t = now()
    lifetime = web_config().session_lifetime_s

    def work(s: Any) -> str:
        user_id = logins.complete(s, verified)
        users.set_password(s, me.username, new)
        return web_sessions.open_session(s, user_id, t, lifetime)

    try:
        secret = run(work)
    except ManagerError as e:
        return _page(error=str(e), status=400)
    log_in(secret)
    return done("Password changed. Your other logins have ended.", "web.user_list")


@bp.post("/users/<username>/remove")
def user_remove(username: str) -> Response:
    """Remove another admin user: their logins end, their admin tokens are deleted."""
    acting = g.web_user.username
    try:
        removed = run(lambda s: users.remove_user(s, username, acting))
    except ManagerError as e:
        return refused(e, "web.user_list")
    return done(
        f"User {removed.username} removed; {removed.sessions} login(s) ended, "
        f"{removed.admin_tokens} admin token(s) deleted.",
        "web.user_list",
    )
