"""Staged activation in a real Chromium against a real `satchel serve` (issue 18): the device
page shows a candidate's shadow agreement and its ramp, the deployment page how many devices
are in shadow, ramping or refused; at laptop, tablet and phone sizes nothing sticks out.

The server, browser and page fixtures are those of `test_web_browser.py` (same needs: Debian's
`chromium` and the `playwright` package; skipped with the reason otherwise)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.manager.helpers import event
from tests.web.test_web_browser import (  # noqa: F401  (fixtures used by name)
    CHROMIUM,
    Served,
    browser,
    log_in,
    page,
    served,
    shoot,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed"),
]
CHANNEL = "staged"


def _candidate(stage: str, percent: int = 0, answered: int = 0) -> dict[str, Any]:
    return {
        "version": "2.0.0", "sequence": 2, "stage": stage, "started_at": "2026-12-01T07:00:00Z",
        "shadow": {"requests": 100, "compared": 64, "agreed": 63, "agreement": 0.984375,
                   "needed": 0.99, "nonfinite": 0, "errors": 0, "dropped": 2, "p95_ms": 1.7,
                   "active_p95_ms": 1.5},
        "ramp": {"steps": [10, 50, 100], "step": 1 if percent == 50 else 0, "percent": percent,
                 "answered": answered, "errors": 0},
        "client_answers": answered,
    }


def _report(server: Served, device: Any, stage: str, cand: dict[str, Any] | None,
            events: list[dict[str, Any]] | None = None) -> None:
    device.run(CHANNEL, "1.0.0", 1)
    device.channels[CHANNEL].update(stage=stage, candidate=cand)
    server.fleet.checkin(device, events)


def test_shadow_and_ramp_on_the_device_and_deployment_pages(
    page: Any, served: Served  # noqa: F811  (the fixtures imported above)
) -> None:
    fleet = served.fleet
    devices = [fleet.enroll(f"stage-{i}") for i in range(3)]
    for d in devices:
        _report(served, d, "active", None)
    fleet.bundle("2.0.0", 2, name=CHANNEL)
    dep = fleet.deploy(f"{CHANNEL}:2.0.0", devices=[d.device_id for d in devices],
                       waves="100%", max_failure_ratio=0.5)
    _report(served, devices[0], "shadow", _candidate("shadow"))
    _report(served, devices[1], "ramp", _candidate("ramp", percent=50, answered=75))
    _report(served, devices[2], "active", None, [event(
        "shadow_failed", CHANNEL, 2, version="2.0.0", reason="agreement 0.42 < 0.99")])

    log_in(page, served, "/devices/stage-0")
    box = page.locator(".candidate")
    assert "In shadow" in box.inner_text()
    assert page.locator(".shadow-agreement").inner_text().startswith("98.4%")
    assert page.locator(".client-answers").inner_text() == "0"
    shoot(page, "device-in-shadow")

    page.goto(served.url + "/devices/stage-1")
    assert "50% of requests, step 2 of 3" in page.locator(".ramp-progress").inner_text()
    assert page.locator(".client-answers").inner_text() == "75"
    shoot(page, "device-ramping")

    page.goto(f"{served.url}/deployments/{dep['id']}")
    section = page.locator(".staged-activation")
    assert section.locator(".in-shadow").inner_text() == "1"
    assert section.locator(".in-ramp").inner_text().startswith("1")
    assert section.locator(".failed-in-shadow").inner_text() == "1"
    row = page.locator("tr[data-device='stage-1']")
    assert "ramp at 50% (step 2 of 3), 75 answers" in row.inner_text()
    shoot(page, "deployment-staged")
