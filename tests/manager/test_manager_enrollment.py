"""Enrollment: one-time, expiring, class-limited tokens; a device credential afterwards."""

from __future__ import annotations

from flask.testing import FlaskClient

from satchel.bundles.keys import SigningKey
from satchel.manager.models import Device, EnrollmentToken
from tests.manager.helpers import Fleet, bearer


def _identity(device_id: str, device_class: str = "edge-box", key: str | None = None) -> dict:
    return {
        "device_id": device_id,
        "device_class": device_class,
        "arch": "aarch64",
        "agent_version": "0.1.0",
        "public_key": key or SigningKey.generate().public.raw.hex(),
    }


def _devices(fleet: Fleet) -> list[str]:
    db = fleet.app.extensions["satchel"].db
    return db.run(lambda s: sorted(d.id for d in s.query(Device)))


def test_enrollment_returns_a_working_device_credential(fleet: Fleet) -> None:
    token = fleet.enrollment_token()
    r = fleet.client.post("/api/v1/enroll", json=_identity("cam-1"), headers=bearer(token))
    assert r.status_code == 201
    assert r.json["device_id"] == "cam-1"
    assert r.json["token"].startswith("sat_dev_")
    assert r.json["checkin_url"] == "/api/v1/devices/cam-1/checkin"
    assert r.json["trust"]["version"] == 1
    me = fleet.client.get("/api/v1/devices/cam-1", headers=bearer(r.json["token"]))
    assert me.status_code == 200 and me.json["arch"] == "aarch64"


def test_enrollment_token_is_one_time(fleet: Fleet) -> None:
    token = fleet.enrollment_token()
    first = fleet.client.post("/api/v1/enroll", json=_identity("cam-1"), headers=bearer(token))
    assert first.status_code == 201
    again = fleet.client.post("/api/v1/enroll", json=_identity("cam-2"), headers=bearer(token))
    assert again.status_code == 401
    assert "already used" in again.json["error"]["message"]
    assert _devices(fleet) == ["cam-1"]


def test_expired_enrollment_token_is_refused(fleet: Fleet) -> None:
    token = fleet.enrollment_token(ttl_s=0.001)
    r = fleet.client.post("/api/v1/enroll", json=_identity("cam-1"), headers=bearer(token))
    assert r.status_code == 401 and "expired" in r.json["error"]["message"]
    assert _devices(fleet) == []


def test_class_limited_token_refuses_another_class_and_stays_usable(fleet: Fleet) -> None:
    token = fleet.enrollment_token(device_class="edge-box")
    wrong = fleet.client.post(
        "/api/v1/enroll", json=_identity("cam-1", "doorbell"), headers=bearer(token)
    )
    assert wrong.status_code == 403
    assert _devices(fleet) == []
    right = fleet.client.post("/api/v1/enroll", json=_identity("cam-1"), headers=bearer(token))
    assert right.status_code == 201


def test_unknown_enrollment_token_is_refused(fleet: Fleet) -> None:
    r = fleet.client.post(
        "/api/v1/enroll", json=_identity("cam-1"), headers=bearer("sat_enroll_forged")
    )
    assert r.status_code == 401
    assert _devices(fleet) == []


def test_admin_token_cannot_enroll(fleet: Fleet) -> None:
    r = fleet.client.post("/api/v1/enroll", json=_identity("cam-1"), headers=fleet.admin)
    assert r.status_code == 401
    assert _devices(fleet) == []


def test_device_id_cannot_be_enrolled_twice(fleet: Fleet) -> None:
    fleet.enroll("cam-1")
    token = fleet.enrollment_token()
    r = fleet.client.post("/api/v1/enroll", json=_identity("cam-1"), headers=bearer(token))
    assert r.status_code == 409
    db = fleet.app.extensions["satchel"].db
    unused = db.run(lambda s: s.query(EnrollmentToken).filter_by(used_at=None).count())
    assert unused == 1  # the refused attempt did not burn the token


def test_enrollment_accepts_a_pem_key_and_refuses_garbage(fleet: Fleet) -> None:
    pem = SigningKey.generate().public.to_pem().decode()
    ok = fleet.client.post(
        "/api/v1/enroll", json=_identity("cam-1", key=pem), headers=bearer(fleet.enrollment_token())
    )
    assert ok.status_code == 201
    bad = fleet.client.post(
        "/api/v1/enroll",
        json=_identity("cam-2", key="zz" * 32),
        headers=bearer(fleet.enrollment_token()),
    )
    assert bad.status_code == 400
    assert _devices(fleet) == ["cam-1"]


def test_tokens_are_stored_hashed(fleet: Fleet, client: FlaskClient) -> None:
    device = fleet.enroll("cam-1")
    db = fleet.app.extensions["satchel"].db
    stored = db.run(lambda s: s.get(Device, "cam-1").token_hash)
    assert stored != device.token and device.token not in stored
    assert len(stored) == 64
