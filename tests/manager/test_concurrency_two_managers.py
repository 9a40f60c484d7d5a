"""Two real manager processes (`satchel serve` on separate data dirs, one database) hammered
at once by the same devices: every check-in is sent to both managers at the same moment,
several times, while admins poll the deployment's status (which evaluates it) on both.

Whatever the interleaving: each device event is recorded once, the rollout walks its waves
one at a time and completes once, every target ends succeeded, and a canary failure halts a
deployment once with its reason. On PostgreSQL the device row, then the deployment rows (in
id order) are locked `FOR UPDATE`; on SQLite every transaction holds the write lock.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from satchel.manager.config import ManagerConfig
from satchel.manager.models import DeploymentTarget, Event
from tests.factory.keys import Keyring
from tests.manager.helpers import Fleet, SimDevice, event
from tests.manager.served import Served, two_managers

DEVICES = 12
ROUNDS = 40  # rounds of check-ins at most before the rollout must have completed
COPIES = 2  # times each check-in is sent to each manager per round, at once
WORKERS = 16  # client threads


@pytest.fixture
def managers(config: ManagerConfig, tmp_path: Path) -> Iterator[tuple[Served, Served]]:
    with two_managers(config.url, tmp_path) as pair:
        yield pair


@pytest.fixture
def fleet(app: Flask, client: FlaskClient, keys: Keyring, tmp_path: Path) -> Fleet:
    return Fleet.start(app, client, keys, tmp_path)


def _install_body(device: SimDevice, fail: bool) -> dict[str, Any]:
    """One check-in reporting the whole install of vision 1.0.0 (or a failed smoke test),
    with event ids fixed for this device: every copy of it carries the same ids."""
    if not fail:
        device.run("vision", "1.0.0", 1)
    kinds = ["downloaded", "verified", "smoke_test"] + ([] if fail else ["activated"])
    events = []
    for kind in kinds:
        e = event(kind, "vision", 1, version="1.0.0")
        e["id"] = f"{device.device_id}-{kind}"
        if kind == "smoke_test":
            e["passed"] = not fail
            if fail:
                e["reason"] = "max abs error 0.9 > 0.1"
        events.append(e)
    health = {"vision": {"count": 100, "errors": 0, "nan": 0, "p95_ms": 2.0}}
    return device.body(events, health)


def _hammer(managers: tuple[Served, Served], fleet: Fleet, dep_id: int,
            bodies: dict[str, tuple[SimDevice, dict[str, Any]]], done: set[str]) -> None:
    """Rounds of every device checking in COPIES times at each manager at once, with status
    polls on both, until the deployment is in one of `done`."""
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=WORKERS)
    session.mount("http://", adapter)

    def checkin(url: str, device: SimDevice, body: dict[str, Any]) -> int:
        r = session.post(f"{url}/api/v1/devices/{device.device_id}/checkin", json=body,
                         headers=device.headers, timeout=60)
        return r.status_code

    def poll(url: str) -> int:
        r = session.get(f"{url}/api/v1/deployments/{dep_id}", headers=fleet.admin, timeout=60)
        return r.status_code

    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        for _ in range(ROUNDS):
            jobs = [pool.submit(checkin, m.url, device, body)
                    for device, body in bodies.values() for m in managers
                    for _ in range(COPIES)]
            jobs += [pool.submit(poll, m.url) for m in managers for _ in range(COPIES)]
            codes = [j.result() for j in jobs]
            assert set(codes) == {200}, codes
            r = session.get(f"{managers[0].url}/api/v1/deployments/{dep_id}",
                            headers=fleet.admin, timeout=60)
            if r.json()["state"] in done:
                return
    pytest.fail(f"the deployment is still {r.json()['state']} after {ROUNDS} rounds")


def _events_per_device(app: Flask) -> dict[str, list[str]]:
    def read(s: Any) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for device_id, event_id in s.execute(sa.select(Event.device_id, Event.event_id)):
            out.setdefault(device_id, []).append(event_id)
        return out

    return dict(app.extensions["satchel"].db.run(read))


def test_two_managers_hammered_at_once_record_each_event_once_and_walk_each_wave_once(
    fleet: Fleet, app: Flask, managers: tuple[Served, Served]
) -> None:
    devices = [fleet.enroll(f"cam-{i:02d}") for i in range(DEVICES)]
    fleet.bundle("1.0.0", 1)
    dep = fleet.deploy("vision:1.0.0", devices=[d.device_id for d in devices],
                       waves=["1", "25%", "50%", "100%"], success_ratio=1.0)
    bodies = {d.device_id: (d, _install_body(d, fail=False)) for d in devices}

    _hammer(managers, fleet, dep["id"], bodies, {"completed", "halted"})

    status = fleet.status(dep["id"])
    assert status["state"] == "completed", status
    assert status["current_wave"] == 3
    assert {t["state"] for t in status["targets"]} == {"succeeded"}
    # every wave released, in order, each of its devices counted once and succeeded
    assert [(w["size"], w["released"], w["counts"]) for w in status["waves"]] == [
        (n, True, {"succeeded": n}) for n in (1, 2, 3, 6)
    ]
    recorded = _events_per_device(app)
    assert sorted(recorded) == sorted(bodies)
    for device_id, ids in recorded.items():
        assert len(ids) == len(set(ids)) == 4, (device_id, ids)


def test_a_canary_failure_sent_to_both_managers_at_once_halts_the_deployment_once(
    fleet: Fleet, app: Flask, managers: tuple[Served, Served]
) -> None:
    devices = [fleet.enroll(f"edge-{i:02d}") for i in range(4)]
    fleet.bundle("1.0.0", 1)
    dep = fleet.deploy("vision:1.0.0", devices=[d.device_id for d in devices],
                       waves=["1", "100%"])
    canary = next(t["device_id"] for t in fleet.status(dep["id"])["targets"]
                  if t["wave"] == 0)
    bodies = {d.device_id: (d, _install_body(d, fail=d.device_id == canary)) for d in devices}

    _hammer(managers, fleet, dep["id"], bodies, {"halted", "completed"})

    status = fleet.status(dep["id"])
    assert status["state"] == "halted" and status["current_wave"] == 0, status
    assert status["reason"].startswith("canary wave failed")

    def targets(s: Any) -> dict[str, str]:
        rows = s.execute(sa.select(DeploymentTarget.device_id, DeploymentTarget.state)
                         .where(DeploymentTarget.deployment_id == dep["id"]))
        return dict(rows.all())

    states = app.extensions["satchel"].db.run(targets)
    assert states.pop(canary) == "failed"
    assert set(states.values()) == {"pending"}  # the next wave was never released
    recorded = _events_per_device(app)
    assert sorted(recorded[canary]) == sorted(f"{canary}-{k}" for k in
                                              ("downloaded", "verified", "smoke_test"))

