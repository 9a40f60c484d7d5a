"""The check-in fast path (manager/checkin/fast.py, route.py): an unchanged check-in
costs one statement, answers exactly what the full path answers, and gives way to the full path
whenever something changes, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

import requests

from satchel.manager.models import Device, Event
from tests.manager.helpers import Fleet, SimDevice, bearer, event, utc
from tests.manager.live_server import LiveServer


def _fast_checkins(fleet: Fleet) -> int:
    text = fleet.client.get("/metrics").text
    found = re.search(r"satchel_checkins_fast_total\{[^}]*\} (\d+)", text)
    return int(found.group(1)) if found else 0


def _device(fleet: Fleet, device_id: str) -> Device | None:
    db = fleet.app.extensions["satchel"].db
    return db.run(lambda s: s.get(Device, device_id))


def _events(fleet: Fleet, device_id: str) -> list[str]:
    db = fleet.app.extensions["satchel"].db
    return db.run(
        lambda s: sorted(e.event_id for e in s.query(Event).filter_by(device_id=device_id))
    )


def _settled(fleet: Fleet) -> tuple[SimDevice, dict[str, Any]]:
    """A device running 0.9.0 that a deployment of 1.0.0 targets, after its first check-in."""
    fleet.bundle("1.0.0", 1)
    device = fleet.enroll("cam-1")
    device.run("vision", "0.9.0", 0)
    deployment = fleet.deploy("vision:1.0.0", devices=["cam-1"], waves="100%")
    first = fleet.checkin(device, health={"vision": {"count": 10, "errors": 0, "nan": 0}})
    return device, {**first, "deployment_id": deployment["id"]}


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    moving = ("poll_interval_s", "server_time", "deployment_id")
    return {k: v for k, v in a.items() if k not in moving} == {
        k: v for k, v in b.items() if k not in moving
    }


def test_unchanged_checkin_takes_the_fast_path_with_the_same_answer(fleet: Fleet) -> None:
    device, first = _settled(fleet)
    before = _device(fleet, "cam-1")
    assert _fast_checkins(fleet) == 0
    health = {"vision": {"count": 70, "errors": 1, "nan": 0, "p95_ms": 2.5}}
    again = fleet.checkin(device, health=health)
    assert _fast_checkins(fleet) == 1
    assert _same(again, first) and again["install"][0]["version"] == "1.0.0"
    after = _device(fleet, "cam-1")
    assert before is not None and after is not None
    assert after.health == {"vision": {"count": 70, "errors": 1, "nan": 0, "p95_ms": 2.5}}
    assert after.last_seen_at is not None and before.last_seen_at is not None
    assert after.last_seen_at >= before.last_seen_at and after.last_via == "lan"
    assert (after.status, after.state_digest) == (before.status, before.state_digest)


def test_changed_status_takes_the_full_path(fleet: Fleet) -> None:
    device, first = _settled(fleet)
    device.run("vision", "1.0.0", 1)
    answer = fleet.checkin(device)
    assert _fast_checkins(fleet) == 0
    assert answer["install"] == []  # runs it now
    shown = fleet.client.get("/api/v1/devices/cam-1", headers=fleet.admin).json
    assert shown["channels"]["vision"]["active"] == {"version": "1.0.0", "sequence": 1}
    status = fleet.status(first["deployment_id"])
    assert status["targets"][0]["state"] == "succeeded" and status["state"] == "completed"


def test_health_event_rides_the_fast_path_and_is_recorded_once(fleet: Fleet) -> None:
    device, _ = _settled(fleet)
    sample = event("health", "vision", 0, figures={"count": 60, "errors": 0, "nan": 0})
    once = fleet.checkin(device, [sample])
    twice = fleet.checkin(device, [sample])
    assert _fast_checkins(fleet) == 2
    assert once["events"] == {"recorded": 1, "duplicate": 0}
    assert twice["events"] == {"recorded": 0, "duplicate": 1}
    assert _events(fleet, "cam-1") == [sample["id"]]


def test_install_events_take_the_full_path_and_move_the_target(fleet: Fleet) -> None:
    device, first = _settled(fleet)
    answer = fleet.checkin(device, [event("downloaded", "vision", 1, version="1.0.0")])
    assert _fast_checkins(fleet) == 0 and answer["events"]["recorded"] == 1
    assert fleet.status(first["deployment_id"])["targets"][0]["state"] == "downloaded"


def test_failure_on_an_unchanged_state_halts_the_deployment(fleet: Fleet) -> None:
    device, first = _settled(fleet)
    fleet.fail(device, sequence=1)
    assert _fast_checkins(fleet) == 0
    status = fleet.status(first["deployment_id"])
    assert status["state"] == "halted" and status["targets"][0]["state"] == "failed"


def test_recovered_health_moves_the_target_through_the_full_path(fleet: Fleet) -> None:
    fleet.bundle("1.0.0", 1)
    device = fleet.enroll("cam-1")
    dep = fleet.deploy("vision:1.0.0", devices=["cam-1"], waves="100%")
    fleet.install(device, healthy=False)
    assert fleet.status(dep["id"])["targets"][0]["state"] == "activated"  # health breach
    healthy = {"vision": {"count": 200, "errors": 0, "nan": 0, "p95_ms": 2.0}}
    fleet.checkin(device, health=healthy)  # same status: only the health changed
    assert _fast_checkins(fleet) == 0
    status = fleet.status(dep["id"])
    assert status["targets"][0]["state"] == "succeeded" and status["state"] == "completed"
    fleet.checkin(device, health=healthy)
    assert _fast_checkins(fleet) == 1  # settled again: nothing left to move


def test_another_devices_credential_is_refused_and_changes_nothing(fleet: Fleet) -> None:
    device, _ = _settled(fleet)
    other = fleet.enroll("cam-2")
    before = _device(fleet, "cam-1")
    r = fleet.client.post(
        "/api/v1/devices/cam-1/checkin", json=device.body(), headers=other.headers
    )
    assert r.status_code == 403 and r.json["error"]["code"] == "forbidden"
    after = _device(fleet, "cam-1")
    assert before is not None and after is not None
    assert (after.last_seen_at, after.state_at) == (before.last_seen_at, before.state_at)
    assert _fast_checkins(fleet) == 0


def test_removed_device_credential_is_refused_at_once(fleet: Fleet) -> None:
    device, _ = _settled(fleet)
    assert fleet.client.delete("/api/v1/devices/cam-1", headers=fleet.admin).status_code == 204
    r = fleet.client.post(
        "/api/v1/devices/cam-1/checkin", json=device.body(), headers=device.headers
    )
    assert r.status_code == 401 and r.json["error"]["code"] == "unauthorized"
    assert _device(fleet, "cam-1") is None


def test_malformed_body_from_a_stranger_answers_401(fleet: Fleet) -> None:
    _settled(fleet)
    stranger = bearer("sat_dev_" + "x" * 43)
    r = fleet.client.post("/api/v1/devices/cam-1/checkin", json={"status": 7}, headers=stranger)
    assert r.status_code == 401


def test_stale_report_does_not_overwrite_newer_state(fleet: Fleet) -> None:
    device, _ = _settled(fleet)
    newer = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=5)
    body = device.body()
    fleet.client.post(
        "/api/v1/devices/cam-1/checkin",
        json={**body, "sent_at": utc(newer)},
        headers=device.headers,
    )
    stale = {**body, "sent_at": utc(newer - timedelta(minutes=10)), "health": {"vision": {}}}
    r = fleet.client.post("/api/v1/devices/cam-1/checkin", json=stale, headers=device.headers)
    assert r.status_code == 200
    after = _device(fleet, "cam-1")
    assert after is not None and after.state_at == newer
    assert after.health == {}  # as the newer check-in left it


def test_fast_answer_over_http_has_the_api_headers(fleet: Fleet) -> None:
    device, first = _settled(fleet)
    with LiveServer(fleet.app) as server:
        r = requests.post(
            f"{server.url}/api/v1/devices/cam-1/checkin",
            json=device.body(),
            headers={**device.headers, "X-Request-Id": "trace-42"},
            timeout=30,
        )
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    assert r.headers["X-Request-Id"] == "trace-42"
    assert _same(r.json(), first) and _fast_checkins(fleet) == 1
    text = fleet.client.get("/metrics").text
    assert 'code="200",endpoint="/api/v1/devices/<device_id>/checkin",method="POST"} 2.0' in text
