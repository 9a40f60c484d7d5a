"""The manager's Flask application factory.

`create_app()` reads the configuration (TOML file, environment), opens the database (refusing
one that is not at the Alembic head revision), and registers the blueprints (the API, the web
dashboard, `/metrics`), the request log and the check-in fast path. Views reach the database,
the bundle store and the configuration through `state()` (`manager/context.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import IntegerConverter, Map

from satchel.manager.api import bp as api_bp
from satchel.manager.checkin.route import CheckinRoute
from satchel.manager.config import load_config
from satchel.manager.context import EXTENSION, MAX_ROW_ID, ManagerState
from satchel.manager.db import open_database
from satchel.manager.metrics.endpoint import bp as metrics_bp
from satchel.manager.metrics.registry import Metrics
from satchel.manager.metrics.request_log import instrument
from satchel.manager.store import open_store
from satchel.manager.web import bp as web_bp


class RowIdConverter(IntegerConverter):
    """`<int:...>` in every route: an id or version no row can have (the database would fail
    on it) matches no route, so it is a 404, not a server error."""

    def __init__(
        self,
        map: Map,
        fixed_digits: int = 0,
        min: int | None = None,
        max: int | None = MAX_ROW_ID,
        signed: bool = False,
    ) -> None:
        super().__init__(map, fixed_digits, min, max, signed)


def create_app(test_config: dict[str, Any] | None = None, config_file: Path | None = None) -> Flask:
    """Build the manager app. `test_config` overrides configuration fields by name (and may
    hold Flask settings in upper case, e.g. TESTING).

    Raises DatabaseNotReadyError when the database is not at the head revision, UsageError
    for bad configuration.
    """
    overrides = dict(test_config or {})
    flask_settings = {k: overrides.pop(k) for k in list(overrides) if k.isupper()}
    config = load_config(config_file, **overrides)
    db = open_database(config, check_schema=config.check_schema)
    app = Flask(__name__)
    app.url_map.converters["int"] = RowIdConverter  # before any route is added
    app.config.update(
        MAX_CONTENT_LENGTH=None,  # uploads are bounded while streaming, see the store
        JSON_SORT_KEYS=False,
        **flask_settings,
    )
    app.extensions[EXTENSION] = ManagerState(
        config=config,
        db=db,
        store=open_store(config),
        metrics=Metrics(),
    )

    app.register_blueprint(api_bp)
    app.register_blueprint(web_bp)
    app.register_blueprint(metrics_bp)
    instrument(app, log_requests=config.log_requests)
    app.wsgi_app = CheckinRoute(app, app.wsgi_app)  # type: ignore[method-assign]
    if config.trusted_proxies:
        hops = config.trusted_proxies
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops
        )
    return app
