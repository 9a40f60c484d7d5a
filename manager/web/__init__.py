"""The admin web dashboard: one blueprint, `web`, behind a login, with CSRF-protected forms.

Pages read through `manager.services.dashboard` (read-only views) and act through the same
service functions as the REST API and the CLI. Every asset is served by the manager itself
(templates in `manager/templates`, CSS and a few lines of JS in `manager/static`; charts are
server-side SVG), so the dashboard works with no internet.
"""

from __future__ import annotations

import logging
import secrets as random_bytes
from datetime import timedelta
from pathlib import Path

from flask import Blueprint
from flask.blueprints import BlueprintSetupState
from flask.sansio.app import App

from satchel.manager.context import EXTENSION
from satchel.manager.web import secret
from satchel.manager.web.config import CONFIG_KEY, WebConfig
from satchel.manager.web.errors import SessionKeyError

log = logging.getLogger("satchel.web")
MANAGER_DIR = Path(__file__).resolve().parent.parent

bp = Blueprint(
    "web",
    __name__,
    template_folder=str(MANAGER_DIR / "templates"),
    static_folder=str(MANAGER_DIR / "static"),
    static_url_path="/static/web",
)


def configure(app: App) -> None:
    """Session cookie settings and the session key for `app` (called once, on register)."""
    web = app.config.get(CONFIG_KEY)
    if not isinstance(web, WebConfig):
        web = app.config[CONFIG_KEY] = WebConfig()
    if not app.config.get("SECRET_KEY"):
        st = app.extensions[EXTENSION]
        try:  # in the database: every manager process, on any host, signs with one key
            app.config["SECRET_KEY"] = secret.load_or_create(
                st.db, web.secret_bytes, legacy_file=st.config.data_dir / web.secret_file
            )
        except SessionKeyError as e:
            # the API must still serve; logins then last only as long as this process
            log.warning("%s; dashboard logins will not survive a restart", e)
            app.config["SECRET_KEY"] = random_bytes.token_bytes(web.secret_bytes)
    app.config.update(
        SESSION_COOKIE_NAME=web.session_cookie,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=web.session_lifetime_s),
    )


@bp.record_once
def _on_register(setup: BlueprintSetupState) -> None:
    configure(setup.app)


from satchel.manager.web import (  # noqa: E402,F401  (views and hooks register themselves on `bp`)
    bundles,
    deployments,
    filters,
    fleet,
    guard,
    login,
    tokens,
    users,
)
