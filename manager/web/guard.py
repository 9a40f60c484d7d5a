"""Hooks on every dashboard request: size limit, CSRF check, login, security headers, and the
HTML pages for refusals.

Order matters: a POST is checked for its CSRF token before anything else looks at it, so a
forged or stale form is refused (400) whether or not someone is logged in, and changes nothing.
"""

from __future__ import annotations

from flask import g, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from satchel.manager.errors import InvalidRequestError, NotFoundError
from satchel.manager.web import bp, csrf
from satchel.manager.web.config import web_config
from satchel.manager.web.errors import CsrfError
from satchel.manager.web.session import current_user

PUBLIC_ENDPOINTS = ("web.login", "web.static")
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


@bp.before_request
def _guard() -> Response | None:
    limit = web_config().max_form_bytes
    if request.content_length is not None and request.content_length > limit:
        return _error_page(413, "Form too large", f"a form may be at most {limit} bytes")
    request.max_form_memory_size = limit
    csrf.check_request()
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    user = current_user()
    if user is None:
        wanted = request.full_path.rstrip("?") if request.method == "GET" else None
        return redirect(url_for("web.login", next=wanted))
    g.web_user = user
    return None


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Frame-Options"] = "DENY"
    if request.endpoint != "web.static":
        response.headers["Cache-Control"] = "no-store"
    return response


def _error_page(status: int, title: str, message: str) -> Response:
    html = render_template("error.html", status=status, title=title, message=message)
    return Response(html, status=status, mimetype="text/html")


@bp.errorhandler(CsrfError)
def _csrf_refused(err: CsrfError) -> Response:
    return _error_page(400, "Form refused", str(err))


@bp.errorhandler(NotFoundError)
def _not_found(err: NotFoundError) -> Response:
    return _error_page(404, "Not found", str(err))


@bp.errorhandler(InvalidRequestError)
def _invalid(err: InvalidRequestError) -> Response:
    return _error_page(400, "Bad request", str(err))
