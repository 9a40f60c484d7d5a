"""Check-ins: state and health recorded, events idempotent, what to install, when to return."""

from __future__ import annotations

from satchel.manager.models import Event
from tests.manager.helpers import Fleet, event


def _events(fleet: Fleet, device_id: str) -> list[tuple[str, str]]:
    db = fleet.app.extensions["satchel"].db
    return db.run(
        lambda s: sorted(
            (e.event_id, e.kind) for e in s.query(Event).filter_by(device_id=device_id)
        )
    )


def test_checkin_records_state_health_and_events(fleet: Fleet) -> None:
    device = fleet.enroll("cam-1")
    device.run("vision", "0.9.0", 1)
    smoke = event("smoke_test", sequence=1, passed=True, figures={"p95_ms": 3.1})
    answer = fleet.checkin(
        device, [smoke], {"vision": {"count": 7, "errors": 1, "nan": 0, "p95_ms": 4.5}}
    )
    assert answer["events"] == {"recorded": 1, "duplicate": 0}
    assert answer["install"] == []
    assert answer["trust"]["version"] == 1
    shown = fleet.client.get("/api/v1/devices/cam-1", headers=fleet.admin).json
    assert shown["channels"]["vision"]["active"] == {"version": "0.9.0", "sequence": 1}
    assert shown["health"]["vision"]["errors"] == 1
    assert shown["last_via"] == "lan" and shown["last_seen_at"]
    assert shown["events"][0]["figures"] == {"p95_ms": 3.1}


def test_redelivered_events_are_recorded_once(fleet: Fleet) -> None:
    device = fleet.enroll("cam-1")
    batch = [event("downloaded"), event("verified")]
    first = fleet.checkin(device, batch)
    again = fleet.checkin(device, batch + [event("activated")])
    assert first["events"] == {"recorded": 2, "duplicate": 0}
    assert again["events"] == {"recorded": 1, "duplicate": 2}
    assert len(_events(fleet, "cam-1")) == 3


def test_event_ids_are_per_device(fleet: Fleet) -> None:
    a, b = fleet.enroll("cam-1"), fleet.enroll("cam-2")
    same = event("downloaded")
    fleet.checkin(a, [same])
    fleet.checkin(b, [same])
    assert _events(fleet, "cam-1") == _events(fleet, "cam-2") == [(same["id"], "downloaded")]


def test_poll_interval_is_jittered_around_the_configured_one(fleet: Fleet) -> None:
    device = fleet.enroll("cam-1")
    cfg = fleet.app.extensions["satchel"].config
    seen = {fleet.checkin(device)["poll_interval_s"] for _ in range(8)}
    low = cfg.poll_interval_s * (1 - cfg.poll_jitter)
    high = cfg.poll_interval_s * (1 + cfg.poll_jitter)
    assert all(low <= s <= high for s in seen)
    assert len(seen) > 1


def test_malformed_checkin_is_refused_and_records_nothing(fleet: Fleet) -> None:
    device = fleet.enroll("cam-1")
    url = "/api/v1/devices/cam-1/checkin"
    bad_bodies = [
        {},
        {"status": "up"},
        {"status": device.status(), "events": [{"id": "x", "kind": "downloaded"}]},
        {
            "status": device.status(),
            "events": [event("verified"), {"id": "bad id!", "kind": "x", "time": "t"}],
        },
        {"status": {**device.status(), "device_id": "cam-2"}},
        {"status": {"channels": {"vision": {"active": {"version": "1", "sequence": "one"}}}}},
        {"status": device.status(), "health": {"vision": {"count": -1}}},
    ]
    for body in bad_bodies:
        r = fleet.client.post(url, json=body, headers=device.headers)
        assert r.status_code == 400, body
        assert r.json["error"]["message"].startswith("check-in: ")
    r = fleet.client.post(
        url, data=b"{not json", headers=device.headers, content_type="application/json"
    )
    assert r.status_code == 400
    assert _events(fleet, "cam-1") == []


def test_too_many_events_are_refused(fleet: Fleet) -> None:
    device = fleet.enroll("cam-1")
    limit = fleet.app.extensions["satchel"].config.max_events_per_checkin
    r = fleet.client.post(
        "/api/v1/devices/cam-1/checkin",
        headers=device.headers,
        json=device.body([event("downloaded") for _ in range(limit + 1)]),
    )
    assert r.status_code == 400 and _events(fleet, "cam-1") == []


def test_checkin_offers_the_assigned_bundle_until_it_runs(fleet: Fleet) -> None:
    device = fleet.enroll("cam-1")
    built = fleet.bundle("1.0.0", 5)
    dep = fleet.deploy("vision:1.0.0", devices=["cam-1"], waves="100%")
    offer = fleet.checkin(device)["install"]
    import hashlib

    sha = hashlib.sha256(built.data).hexdigest()
    assert offer == [
        {
            "channel": "vision",
            "version": "1.0.0",
            "sequence": 5,
            "bundle_sha256": sha,
            "size": len(built.data),
            "url": f"/api/v1/bundles/{sha}/download",
            "deployment_id": dep["id"],
        }
    ]
    assert fleet.install(device, "1.0.0", 5)["install"] == []


def test_checkin_does_not_offer_a_release_the_device_already_runs(fleet: Fleet) -> None:
    device = fleet.enroll("cam-1")
    device.run("vision", "2.0.0", 9)
    fleet.checkin(device)
    fleet.bundle("1.0.0", 5)
    dep = fleet.deploy("vision:1.0.0", devices=["cam-1"], waves="100%")
    assert fleet.checkin(device)["install"] == []
    assert fleet.status(dep["id"])["state"] == "completed"


def test_stale_state_does_not_overwrite_newer_state(fleet: Fleet) -> None:
    device = fleet.enroll("cam-1")
    device.run("vision", "2.0.0", 2)
    body = device.body()
    body["sent_at"] = "2026-06-02T00:00:00Z"
    fleet.client.post("/api/v1/devices/cam-1/checkin", json=body, headers=device.headers)
    device.channels = {}
    device.run("vision", "1.0.0", 1)
    stale = device.body([event("rolled_back", sequence=2)])
    stale["sent_at"] = "2026-06-01T00:00:00Z"
    r = fleet.client.post("/api/v1/devices/cam-1/checkin", json=stale, headers=device.headers)
    assert r.status_code == 200 and r.json["events"]["recorded"] == 1
    shown = fleet.client.get("/api/v1/devices/cam-1", headers=fleet.admin).json
    assert shown["channels"]["vision"]["active"]["sequence"] == 2
