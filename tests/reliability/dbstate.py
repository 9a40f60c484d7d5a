"""What the manager has recorded, table by table, to assert that a refused request changed
nothing."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask import Flask

from satchel.manager.models import Base, Event


def dump(app: Flask) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of the manager's schema, sorted."""
    db = app.extensions["satchel"].db

    def work(s: Any) -> dict[str, list[tuple[Any, ...]]]:
        return {t.name: sorted((tuple(r) for r in s.execute(sa.select(t)).all()), key=repr)
                for t in Base.metadata.sorted_tables}

    return dict(db.run(work))


def event_ids(app: Flask) -> list[tuple[str, str]]:
    """(device_id, event id) of every recorded event, duplicates kept."""
    db = app.extensions["satchel"].db
    return list(db.run(lambda s: [(e.device_id, e.event_id) for e in s.query(Event)]))
