"""Retention: events and health samples older than their settings go, by arrival time, in
batches; recent ones and the other kind stay; two managers pruning at once delete each row
once; `satchel db prune` and the server's periodic job apply the same settings."""

from __future__ import annotations

import dataclasses
import threading
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from flask import Flask

from satchel.manager.cli import main
from satchel.manager.config import ManagerConfig, load_config
from satchel.manager.db import Database
from satchel.manager.models import Event
from satchel.manager.services import retention
from tests.e2e.commands import wait_for
from tests.manager.helpers import Fleet
from tests.manager.served import Served

DAY = 86400.0
NOW = datetime.now(timezone.utc).replace(microsecond=0)  # the seed's and the prunes' clock


def _seed(app: Flask, fleet: Fleet, ages_days: dict[str, list[float]]) -> None:
    """Events of device cam-1 that arrived `age` days before NOW, per kind."""
    fleet.enroll("cam-1")
    rows = [
        Event(device_id="cam-1", event_id=f"{kind}-{i}", kind=kind, occurred_at=NOW,
              received_at=NOW - timedelta(days=age), via="lan")
        for kind, ages in ages_days.items() for i, age in enumerate(ages)
    ]
    app.extensions["satchel"].db.run(lambda s: s.add_all(rows))


def _left(app: Flask) -> dict[str, list[str]]:
    def read(s: Any) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for kind, event_id in s.execute(sa.select(Event.kind, Event.event_id)
                                        .order_by(Event.event_id)):
            out.setdefault(kind, []).append(event_id)
        return out

    return dict(app.extensions["satchel"].db.run(read))


def _with(config: ManagerConfig, **changes: Any) -> ManagerConfig:
    return dataclasses.replace(config, **changes)


def test_events_and_health_samples_go_each_by_their_own_setting(
    app: Flask, fleet: Fleet, config: ManagerConfig
) -> None:
    _seed(app, fleet, {"activated": [40, 10, 1], "health": [40, 10, 1]})
    cfg = _with(config, retention_events_s=30 * DAY, retention_health_s=7 * DAY)
    pruned = retention.prune(app.extensions["satchel"].db, cfg, NOW)
    assert (pruned.events, pruned.health, pruned.skipped) == (1, 2, False)
    assert _left(app) == {"activated": ["activated-1", "activated-2"], "health": ["health-2"]}


def test_nothing_is_deleted_when_retention_is_off(
    app: Flask, fleet: Fleet, config: ManagerConfig
) -> None:
    _seed(app, fleet, {"activated": [4000], "health": [4000]})
    assert not retention.enabled(config)
    pruned = retention.prune(app.extensions["satchel"].db, config, NOW)
    assert (pruned.events, pruned.health) == (0, 0)
    assert _left(app) == {"activated": ["activated-0"], "health": ["health-0"]}


def test_many_old_rows_go_in_several_batches(
    app: Flask, fleet: Fleet, config: ManagerConfig
) -> None:
    _seed(app, fleet, {"health": [20.0] * 11 + [0.5]})
    cfg = _with(config, retention_health_s=DAY, retention_batch=3)
    assert retention.prune(app.extensions["satchel"].db, cfg, NOW).health == 11
    assert _left(app) == {"health": ["health-11"]}


def test_two_managers_pruning_at_once_delete_each_row_once(
    app: Flask, fleet: Fleet, config: ManagerConfig
) -> None:
    _seed(app, fleet, {"health": [20.0] * 40, "activated": [20.0] * 40})
    cfg = _with(config, retention_events_s=DAY, retention_health_s=DAY, retention_batch=4)
    results: list[retention.Pruned] = []
    barrier = threading.Barrier(3)

    def manager() -> None:
        db = Database(cfg)
        try:
            barrier.wait()
            results.append(retention.prune(db, cfg, NOW))
        finally:
            db.dispose()

    threads = [threading.Thread(target=manager) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3
    # rows deleted are never counted twice; whatever a skipped run left, one more prune takes
    done = retention.prune(app.extensions["satchel"].db, cfg, NOW)
    assert sum(r.events for r in results) + done.events == 40
    assert sum(r.health for r in results) + done.health == 40
    assert _left(app) == {}


def test_db_prune_command_applies_the_configured_retention(
    app: Flask, fleet: Fleet, config: ManagerConfig
) -> None:
    _seed(app, fleet, {"activated": [1.0, 1.0], "health": [1.0]})
    env = {"SATCHEL_DATABASE_URL": config.database_url, "SATCHEL_CONFIG": ""}
    args = ["--data-dir", str(config.data_dir), "db", "prune"]
    r = CliRunner().invoke(main, args, env=env)
    assert r.exit_code == 0 and "nothing to prune" in r.stdout, r.output
    r = CliRunner().invoke(main, args, env={**env, "SATCHEL_RETENTION_HEALTH_S": "60"})
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == "deleted 0 event(s) and 1 health sample(s)"
    assert _left(app) == {"activated": ["activated-0", "activated-1"]}


def test_a_negative_retention_is_refused_in_one_line(tmp_path: Any) -> None:
    with pytest.raises(Exception, match="retention_events_s"):
        load_config(data_dir=tmp_path, retention_events_s=-1)


def test_the_server_prunes_periodically(app: Flask, fleet: Fleet, config: ManagerConfig) -> None:
    _seed(app, fleet, {"health": [1.0, 1.0], "activated": [1.0]})
    cfg = _with(config, retention_health_s=60.0, retention_interval_s=0.05)
    db = app.extensions["satchel"].db
    pruner = retention.start_pruner(db, cfg)
    assert pruner is not None
    try:
        wait_for(lambda: "health" not in _left(app), 10, "the periodic prune")
    finally:
        pruner.stop()
    assert _left(app) == {"activated": ["activated-0"]}
    assert retention.start_pruner(db, _with(cfg, retention_interval_s=0)) is None


def test_satchel_serve_applies_the_retention_by_itself(
    app: Flask, fleet: Fleet, config: ManagerConfig, tmp_path: Any
) -> None:
    _seed(app, fleet, {"health": [1.0, 1.0], "activated": [1.0]})
    served = Served(tmp_path / "serving", config.url, {
        "SATCHEL_RETENTION_HEALTH_S": "3600", "SATCHEL_RETENTION_INTERVAL_S": "0.2"})
    try:
        wait_for(lambda: "health" not in _left(app), 30, "satchel serve pruning")
    finally:
        served.stop()
    assert _left(app) == {"activated": ["activated-0"]}
