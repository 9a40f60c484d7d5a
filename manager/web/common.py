"""What every dashboard view needs: a transaction, thresholds, redirects."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import sqlalchemy.orm as so
from flask import flash, redirect, request, url_for
from werkzeug.wrappers import Response

from satchel.manager.context import state
from satchel.manager.errors import ManagerError
from satchel.manager.services.dashboard.states import Thresholds
from satchel.manager.web.config import web_config

T = TypeVar("T")


def run(work: Callable[[so.Session], T]) -> T:
    """Run `work(session)` in one transaction (retried on deadlock). Raises what it raises."""
    return state().db.run(work)


def thresholds() -> Thresholds:
    web = web_config()
    return Thresholds(
        lan_stale_s=web.lan_stale_polls * state().config.poll_interval_s,
        usb_stale_s=web.usb_stale_s,
        attention_window_s=web.attention_window_s,
    )


def safe_path(target: str | None, default: str) -> str:
    """`target` if it is a path on this site (no scheme, no host), else `default`: a
    redirect after login or an action never leaves the dashboard."""
    if not target:
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return default
    if "\\" in target:
        return default
    return target


def done(message: str, endpoint: str, **values: Any) -> Response:
    """Redirect to `endpoint` with a success message."""
    flash(message, "ok")
    return redirect(url_for(endpoint, **values), code=303)


def refused(err: ManagerError, endpoint: str, **values: Any) -> Response:
    """Redirect to `endpoint` with the service's one-line refusal as an error message."""
    flash(str(err), "error")
    return redirect(url_for(endpoint, **values), code=303)


def page_arg(name: str = "page") -> int:
    """A positive integer query parameter (1 when missing or malformed)."""
    raw = request.args.get(name, "1")
    return int(raw) if raw.isdigit() and 0 < int(raw) < 10**9 else 1
