"""The fleet page marks each device that judges a candidate in shadow or ramp with a stage
badge (its line in the tooltip); a device with none, or an older agent, shows no badge."""

from __future__ import annotations

import re
from typing import Any

from flask.testing import FlaskClient

from tests.manager.helpers import Fleet, SimDevice


def _candidate(stage: str, percent: int = 0) -> dict[str, Any]:
    return {
        "version": "2.0.0", "sequence": 2, "stage": stage, "started_at": "2026-12-01T07:00:00Z",
        "shadow": {"requests": 100, "compared": 40, "agreed": 37, "agreement": 0.925,
                   "needed": 0.99, "nonfinite": 0, "errors": 0, "dropped": 0},
        "ramp": {"steps": [10, 50, 100], "step": 1 if percent else 0, "percent": percent,
                 "answered": 3, "errors": 0},
        "client_answers": 3 if percent else 0,
    }


def _report(fleet: Fleet, device: SimDevice, stage: str, cand: dict[str, Any] | None) -> None:
    device.run("vision", "1.0.0", 1)
    device.channels["vision"].update(stage=stage, candidate=cand)
    fleet.checkin(device)


def _row(html: str, device_id: str) -> str:
    rows = re.findall(r'<tr data-device="([^"]+)">(.*?)</tr>', html, re.S)
    return next(body for d, body in reversed(rows) if d == device_id)  # the fleet table's


def test_fleet_page_shows_a_stage_badge_per_device_in_shadow_or_ramp(
    admin: FlaskClient, fleet: Fleet
) -> None:
    shadowing, ramping, plain = (fleet.enroll(f"cam-0{i}") for i in range(3))
    _report(fleet, shadowing, "shadow", _candidate("shadow"))
    _report(fleet, ramping, "ramp", _candidate("ramp", percent=50))
    _report(fleet, plain, "active", None)

    r = admin.get("/")
    assert r.status_code == 200
    html = r.get_data(as_text=True)
    shadow_row, ramp_row = _row(html, "cam-00"), _row(html, "cam-01")
    assert 'data-stage="shadow"' in shadow_row and "shadow: 92.5% agree" in shadow_row
    assert 'data-stage="ramp"' in ramp_row and "ramp at 50% (step 2 of 3)" in ramp_row
    assert "data-stage" not in _row(html, "cam-02")
