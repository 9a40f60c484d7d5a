"""Request-scoped access to the manager's state: the configuration, the database, the bundle
store and the metrics of the current Flask app (flaskr keeps its `get_db()` in `db.py` for the
same reason: blueprints reach the app's state here, and never import the app factory).
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from satchel.manager.config import ManagerConfig
from satchel.manager.db import Database
from satchel.manager.metrics.registry import Metrics
from satchel.manager.store import Store

EXTENSION = "satchel"  # the key of the state in `app.extensions`
MAX_ROW_ID = 2**31 - 1  # the largest id or version an INTEGER column holds on every database


@dataclass
class ManagerState:
    config: ManagerConfig
    db: Database
    store: Store
    metrics: Metrics


def state() -> ManagerState:
    """The manager state of the current Flask app (in a request or app context)."""
    return current_app.extensions[EXTENSION]
