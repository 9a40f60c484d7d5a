"""Variants on the dashboard: a device page shows which variant of a channel the device runs
now and why, each variant's state and p95 on that device, and the time spent in each; a
status without variants (an older agent) renders as before."""

from __future__ import annotations

import re
from typing import Any

from flask.testing import FlaskClient

from tests.manager.helpers import Fleet


def _text(r: Any) -> str:
    assert r.status_code == 200
    return str(r.get_data(as_text=True))


def test_device_page_shows_the_current_variant_why_and_time_in_each(
    admin: FlaskClient, fleet: Fleet
) -> None:
    device = fleet.enroll("cam-01")
    device.run("vision", "1.0.0", 1)
    device.channels["vision"].update(
        variant="lite", variant_reason="battery_below=30",
        variant_seconds={"full": 30.0, "lite": 10.0, "int8": 0.0},
        variants={
            "full": {"state": "ready", "reason": "", "p95_ms": 6.2},
            "lite": {"state": "ready", "reason": "", "p95_ms": 0.4},
            "int8": {"state": "dropped", "reason": "int8: p95 latency 9 ms > budget 8 ms",
                     "p95_ms": 9.0},
        },
    )
    fleet.checkin(device)
    html = _text(admin.get("/devices/cam-01"))
    assert re.search(r'class="variant-current">lite<', html)
    assert "battery_below=30" in html
    assert re.search(r'data-variant="lite" class="current"', html)
    assert "75.0%" in html and "25.0%" in html  # full 30 s of 40, lite 10 s
    assert "Dropped" in html and "p95 latency 9 ms &gt; budget 8 ms" in html


def test_a_device_status_without_variants_renders_as_before(
    admin: FlaskClient, fleet: Fleet
) -> None:
    device = fleet.enroll("cam-01")
    device.run("vision", "1.0.0", 1)
    fleet.checkin(device)
    html = _text(admin.get("/devices/cam-01"))
    assert "variant-current" not in html and "running <b>1.0.0</b>" in html


def test_a_device_reporting_nonsense_variants_does_not_break_the_page(
    admin: FlaskClient, fleet: Fleet
) -> None:
    device = fleet.enroll("cam-01")
    device.run("vision", "1.0.0", 1)
    device.channels["vision"].update(variants={"x": "not an object", "y": {"state": 3}},
                                     variant_seconds="soon", variant=["?"])
    fleet.checkin(device)
    assert "variant-current" in _text(admin.get("/devices/cam-01"))
