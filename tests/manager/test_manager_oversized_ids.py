"""Ids, numbers and types the database cannot hold are refused as not found / bad request, never
a server error (found by fuzzing and schemathesis; see docs/RELIABILITY.md)."""

from __future__ import annotations

from flask.testing import FlaskClient

from tests.manager.helpers import Fleet, event

HUGE = str(2**70)


def test_oversized_deployment_id_is_not_found(client: FlaskClient, fleet: Fleet) -> None:
    for method, path in (("get", f"/api/v1/deployments/{HUGE}"),
                         ("post", f"/api/v1/deployments/{HUGE}/pause"),
                         ("get", f"/api/v1/trust/roots/{HUGE}.json")):
        resp = getattr(client, method)(path, headers=fleet.admin)
        assert resp.status_code == 404, (path, resp.status_code)


def test_checkin_with_an_out_of_range_sequence_is_refused_and_records_nothing(
    client: FlaskClient, fleet: Fleet
) -> None:
    device = fleet.enroll("cam-big")
    body = device.body(events=[event("activated", sequence=2**70)])

    resp = client.post(f"/api/v1/devices/{device.device_id}/checkin", json=body,
                       headers=device.headers)

    assert resp.status_code == 400
    assert "out of range" in resp.get_json()["error"]["message"]
    events = client.get(f"/api/v1/devices/{device.device_id}/events", headers=fleet.admin)
    assert events.get_json()["events"] == []


def test_token_request_with_wrong_types_is_a_400_not_a_server_error(
    client: FlaskClient, fleet: Fleet
) -> None:
    # Found by schemathesis: a list where a device class belongs answered 500.
    for body in ({"kind": "enroll", "device_class": [["x"]]},
                 {"kind": "enroll", "device_class": 7},
                 {"kind": "admin", "name": ["x"]}):
        resp = client.post("/api/v1/tokens", json=body, headers=fleet.admin)
        assert resp.status_code == 400, (body, resp.status_code)
        assert "error" in resp.get_json()
