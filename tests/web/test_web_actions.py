"""Dashboard actions go through the same service functions as the API: what a form does is
what the API then reports, and a refused action changes nothing."""

from __future__ import annotations

import html
import re
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from satchel.bundles.keys import SigningKey
from satchel.manager.models import Deployment
from tests.manager.helpers import Fleet, bearer
from tests.web.forms import csrf_of
from tests.web.seed import Seeded


def post(client: FlaskClient, path: str, **form: str) -> Any:
    return client.post(path, data={**form, "csrf_token": csrf_of(client)})


def _deployment_count(app: Flask) -> int:
    return int(app.extensions["satchel"].db.run(lambda s: s.query(Deployment).count()))


def _enroll(fleet: Fleet, token: str, device_id: str) -> Any:
    return fleet.client.post(
        "/api/v1/enroll",
        json={
            "device_id": device_id,
            "device_class": "edge-box",
            "public_key": SigningKey.generate().public.to_pem().decode(),
        },
        headers=bearer(token),
    )


def test_deployment_started_from_the_form_is_the_one_the_api_reports(
    admin: FlaskClient, seeded: Seeded, fleet: Fleet
) -> None:
    r = post(
        admin,
        "/deployments",
        bundle="vision:1.1.0",
        devices="cam-02",
        tags="site-a",
        waves="1,50%,100%",
        success_percent="80",
        max_failure_percent="20",
    )
    assert r.status_code == 303
    dep_id = int(re.search(r"/deployments/(\d+)$", r.headers["Location"]).group(1))  # type: ignore[union-attr]
    status = fleet.status(dep_id)
    assert status["state"] == "active"
    assert status["bundle"]["version"] == "1.1.0"
    assert status["selectors"] == {"device_classes": [], "tags": ["site-a"], "devices": ["cam-02"]}
    assert status["waves"][0]["spec"] == "1" and status["targets"][0]["device_id"] == "cam-02"
    assert status["success_ratio"] == 0.8 and status["max_failure_ratio"] == 0.2
    page = admin.get(r.headers["Location"]).get_data(as_text=True)
    assert f"Deployment {dep_id} started." in page


def test_refused_deployment_form_says_why_and_creates_nothing(
    app: Flask, admin: FlaskClient, seeded: Seeded
) -> None:
    before = _deployment_count(app)
    cases = [
        ({"bundle": "vision:9.9.9"}, "no bundle vision version 9.9.9"),
        ({"bundle": "vision:1.1.0", "devices": "ghost"}, "no device 'ghost'"),
        ({"bundle": "vision:1.1.0", "waves": "1,50%"}, "end with 100%"),
        ({"bundle": "vision:1.1.0", "success_percent": "150"}, "between 0 and 100"),
        ({"bundle": ""}, "choose a bundle"),
    ]
    for form, why in cases:
        r = post(admin, "/deployments", **form)
        assert r.status_code == 400, form
        assert why in html.unescape(r.get_data(as_text=True)), form
    assert _deployment_count(app) == before
    # the form keeps what was typed
    r = post(admin, "/deployments", bundle="vision:1.1.0", devices="ghost", tags="site-a")
    assert 'value="ghost"' in r.get_data(as_text=True)


def test_pause_resume_and_abort_buttons_drive_the_deployment(
    admin: FlaskClient, seeded: Seeded, fleet: Fleet
) -> None:
    dep = fleet.deploy("vision:1.1.0", devices=["cam-02", "cam-03"], waves="1,100%")
    base = f"/deployments/{dep['id']}"
    r = post(admin, f"{base}/pause")
    assert r.status_code == 303
    assert "is now paused" in admin.get(r.headers["Location"]).get_data(as_text=True)
    assert fleet.status(dep["id"])["state"] == "paused"
    assert post(admin, f"{base}/resume").status_code == 303
    assert fleet.status(dep["id"])["state"] == "active"
    assert post(admin, f"{base}/abort", reason="wrong model").status_code == 303
    status = fleet.status(dep["id"])
    assert status["state"] == "aborted" and status["reason"] == "wrong model"


def test_refused_transition_shows_the_reason_and_changes_nothing(
    admin: FlaskClient, seeded: Seeded, fleet: Fleet
) -> None:
    dep_id = seeded.first_deployment  # completed
    before = fleet.status(dep_id)
    r = post(admin, f"/deployments/{dep_id}/resume")
    page = admin.get(r.headers["Location"]).get_data(as_text=True)
    assert "only a paused or halted one can resume" in page
    r = post(admin, f"/deployments/{dep_id}/abort")
    assert "already completed" in admin.get(r.headers["Location"]).get_data(as_text=True)
    after = fleet.status(dep_id)
    assert (after["state"], after["updated_at"]) == (before["state"], before["updated_at"])
    assert post(admin, f"/deployments/{dep_id}/explode").status_code == 404
    assert post(admin, "/deployments/999/pause").status_code == 303  # "no deployment 999"


def test_new_enrollment_token_is_shown_once_and_enrolls_a_device(
    admin: FlaskClient, fleet: Fleet
) -> None:
    r = post(admin, "/tokens/enroll", device_class="edge-box", ttl_hours="2")
    assert r.status_code == 201 and r.headers["Cache-Control"] == "no-store"
    token = re.search(r'id="new-token">(sat_enroll_[^<]+)<', r.get_data(as_text=True)).group(1)  # type: ignore[union-attr]
    assert token not in admin.get("/tokens").get_data(as_text=True)
    assert token not in str(admin.get_cookie("satchel_session"))
    assert _enroll(fleet, token, "fresh-01").status_code == 201
    assert _enroll(fleet, token, "fresh-02").status_code == 401  # one-time


def test_revoked_enrollment_token_no_longer_enrolls(admin: FlaskClient, fleet: Fleet) -> None:
    token = fleet.enrollment_token()
    page = admin.get("/tokens").get_data(as_text=True)
    token_id = re.search(r"/tokens/enroll/(\d+)/revoke", page).group(1)  # type: ignore[union-attr]
    r = post(admin, f"/tokens/enroll/{token_id}/revoke")
    assert "revoked" in admin.get(r.headers["Location"]).get_data(as_text=True)
    assert _enroll(fleet, token, "late-01").status_code == 401


def test_used_enrollment_token_cannot_be_revoked(admin: FlaskClient, seeded: Seeded) -> None:
    r = post(admin, "/tokens/enroll/1/revoke")
    page = admin.get(r.headers["Location"]).get_data(as_text=True)
    assert "already used by device cam-01" in page


def test_new_admin_token_works_on_the_api_until_revoked(admin: FlaskClient, fleet: Fleet) -> None:
    r = post(admin, "/tokens/admin", name="ci")
    page = r.get_data(as_text=True)
    token = re.search(r'id="new-token">(sat_admin_[^<]+)<', page).group(1)  # type: ignore[union-attr]
    assert fleet.client.get("/api/v1/devices", headers=bearer(token)).status_code == 200
    listing = admin.get("/tokens").get_data(as_text=True)
    row = re.search(
        r'<tr data-token="(\d+)">\s*<td>\d+</td>.*?<td>ci</td>\s*<td>ada</td>', listing, re.S
    )
    assert row, "the new token is listed with its name and owner"
    post(admin, f"/tokens/admin/{row.group(1)}/revoke")
    assert fleet.client.get("/api/v1/devices", headers=bearer(token)).status_code == 401


def test_bad_token_forms_are_refused(admin: FlaskClient) -> None:
    for form in ({"ttl_hours": "-1"}, {"ttl_hours": "soon"}, {"device_class": "no spaces"}):
        r = post(admin, "/tokens/enroll", **form)
        assert r.status_code == 400, form
        assert "New enrollment token #" not in r.get_data(as_text=True)
