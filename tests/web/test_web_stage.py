"""Staged activation on the dashboard: a device page shows its candidate's shadow agreement
and ramp progress, a deployment page how many of its devices are in shadow, ramping, or were
refused in shadow; an older agent's status (no stage, no candidate) renders as before."""

from __future__ import annotations

import re
from typing import Any

from flask.testing import FlaskClient

from tests.manager.helpers import Fleet, SimDevice, event


def _text(r: Any) -> str:
    assert r.status_code == 200
    return str(r.get_data(as_text=True))


def _candidate(stage: str, **ramp: Any) -> dict[str, Any]:
    return {
        "version": "2.0.0", "sequence": 2, "stage": stage, "started_at": "2026-12-01T07:00:00Z",
        "shadow": {"requests": 100, "compared": 40, "agreed": 37, "agreement": 0.925,
                   "needed": 0.99, "nonfinite": 1, "errors": 0, "dropped": 0, "p95_ms": 1.5,
                   "active_p95_ms": 1.4},
        "ramp": {"steps": [10, 50, 100], "step": 0, "percent": 0, "answered": 0, "errors": 0,
                 **ramp},
        "client_answers": ramp.get("answered", 0),
    }


def _report(fleet: Fleet, device: SimDevice, stage: str, cand: dict[str, Any] | None,
            events: list[dict[str, Any]] | None = None) -> None:
    device.run("vision", "1.0.0", 1)
    device.channels["vision"].update(stage=stage, candidate=cand)
    fleet.checkin(device, events)


def test_device_page_shows_shadow_agreement_and_ramp_progress(
    admin: FlaskClient, fleet: Fleet
) -> None:
    shadowing, ramping = fleet.enroll("cam-01"), fleet.enroll("cam-02")
    _report(fleet, shadowing, "shadow", _candidate("shadow"))
    _report(fleet, ramping, "ramp", _candidate("ramp", step=1, percent=50, answered=60))
    html = _text(admin.get("/devices/cam-01"))
    assert 'data-stage="shadow"' in html and "In shadow" in html
    assert re.search(r'class="shadow-agreement">92\.5%', html)
    assert "40 of 100" in html and "needs 99.0%" in html
    assert re.search(r'class="client-answers">0<', html)
    html = _text(admin.get("/devices/cam-02"))
    assert 'data-stage="ramp"' in html and "Ramping" in html
    assert re.search(r'class="ramp-progress">50% of requests, step 2 of 3 \(10%, 50%, 100%\)',
                     html)
    assert re.search(r'class="client-answers">60<', html)


def test_device_page_of_an_agent_without_stages_renders_as_before(
    admin: FlaskClient, fleet: Fleet
) -> None:
    device = fleet.enroll("cam-01")
    device.run("vision", "1.0.0", 1)
    fleet.checkin(device)
    html = _text(admin.get("/devices/cam-01"))
    assert "Candidate" not in html and "running <b>1.0.0</b>" in html


def test_deployment_page_counts_devices_in_shadow_ramp_and_refused(
    admin: FlaskClient, fleet: Fleet
) -> None:
    devices = [fleet.enroll(f"cam-{i:02d}") for i in range(4)]
    for d in devices:
        _report(fleet, d, "active", None)
    fleet.bundle("2.0.0", 2)
    dep = fleet.deploy("vision:2.0.0", device_classes=["edge-box"], waves="100%",
                       max_failure_ratio=0.5)
    _report(fleet, devices[0], "shadow", _candidate("shadow"))
    _report(fleet, devices[1], "shadow", _candidate("shadow"))
    _report(fleet, devices[2], "ramp", _candidate("ramp", step=1, percent=50, answered=9))
    _report(fleet, devices[3], "active", None, [event(
        "shadow_failed", "vision", 2, version="2.0.0", reason="agreement 0.42 < 0.99")])
    html = _text(admin.get(f"/deployments/{dep['id']}"))
    assert "Staged activation" in html
    assert re.search(r'class="in-shadow">2<', html)
    assert re.search(r'class="in-ramp">1 <span class="muted small">at 50%', html)
    assert re.search(r'class="failed-in-shadow">1<', html)
    assert "shadow: 92.5% agree, 40 of 100 compared" in html
    assert "ramp at 50% (step 2 of 3), 9 answers" in html
    assert "shadow failed: agreement 0.42" in html
    device_html = _text(admin.get("/devices/cam-03"))
    assert "Refused in shadow" in device_html


def test_deployment_page_without_staged_devices_has_no_stage_section(
    admin: FlaskClient, fleet: Fleet
) -> None:
    device = fleet.enroll("cam-00")
    _report(fleet, device, "active", None)
    fleet.bundle("2.0.0", 2)
    dep = fleet.deploy("vision:2.0.0", devices=["cam-00"], waves="100%")
    assert "Staged activation" not in _text(admin.get(f"/deployments/{dep['id']}"))
