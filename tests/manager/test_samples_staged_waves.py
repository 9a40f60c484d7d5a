"""Waves and staged activation (issue 18): a device whose new release is still a candidate in
its shadow stage or ramp is not healthy in the wave (its active release is the previous one);
it counts only once the ramp completed and probation passed. A release refused in shadow or
in its ramp is a failure that halts the deployment like a failed install. The check-in keeps
each channel's stage and candidate figures, and refuses malformed ones in one line."""

from __future__ import annotations

from typing import Any

import pytest

from satchel.manager.config import ManagerConfig
from satchel.manager.models import Device
from tests.manager.admin_cli import Cli
from tests.manager.helpers import Fleet, SimDevice, event


def _by_device(status: dict[str, Any]) -> dict[str, str]:
    return {t["device_id"]: t["state"] for t in status["targets"]}


def candidate(stage: str, sequence: int = 2, **extra: Any) -> dict[str, Any]:
    """A channel's candidate as the agent reports it."""
    return {
        "version": f"{sequence}.0.0", "sequence": sequence, "stage": stage,
        "started_at": "2026-12-01T07:00:00Z",
        "shadow": {"requests": 40, "compared": 40, "agreed": 40, "agreement": 1.0, "needed": 0.99,
                   "nonfinite": 0, "errors": 0, "dropped": 0, "p95_ms": 1.5,
                   "active_p95_ms": 1.4},
        "ramp": {"steps": [10, 50, 100], "step": 1 if stage == "ramp" else 0,
                 "percent": 50 if stage == "ramp" else 0, "answered": 12, "errors": 0},
        "client_answers": 12 if stage == "ramp" else 0,
        **extra,
    }


def in_stage(device: SimDevice, stage: str, cand: dict[str, Any] | None, active: int) -> None:
    """The device's status: release `active` answers clients, `cand` is beside it."""
    device.run("vision", f"{active}.0.0", active, state="active")
    device.channels["vision"]["stage"] = stage
    device.channels["vision"]["candidate"] = cand


def _steps(sequence: int) -> list[dict[str, Any]]:
    return [event(k, "vision", sequence, version=f"{sequence}.0.0")
            for k in ("downloaded", "verified")] + [
        event("smoke_test", "vision", sequence, version=f"{sequence}.0.0", passed=True)]


HEALTHY = {"vision": {"count": 100, "errors": 0, "nan": 0, "p95_ms": 2.0}}


def test_a_candidate_in_shadow_or_ramp_is_not_healthy_in_the_wave(fleet: Fleet) -> None:
    a, b = fleet.enroll("cam-00"), fleet.enroll("cam-01")
    for d in (a, b):
        in_stage(d, "active", None, active=1)
        fleet.checkin(d)
    fleet.bundle("2.0.0", 2)
    dep = fleet.deploy("vision:2.0.0", devices=["cam-00", "cam-01"], waves="1,100%")
    in_stage(a, "shadow", candidate("shadow"), active=1)
    fleet.checkin(a, _steps(2) + [event("shadow_started", "vision", 2)], HEALTHY)
    status = fleet.status(dep["id"])
    assert _by_device(status)["cam-00"] == "verified" and status["current_wave"] == 0
    in_stage(a, "ramp", candidate("ramp"), active=1)
    fleet.checkin(a, [event("shadow_passed", "vision", 2), event("ramp_step", "vision", 2)],
                  HEALTHY)
    fleet.checkin(a, health=HEALTHY)  # again: still only a candidate
    status = fleet.status(dep["id"])
    assert _by_device(status)["cam-00"] == "verified" and status["current_wave"] == 0
    # the ramp completes: the release is active, on probation, then out of it
    a.run("vision", "2.0.0", 2, state="probation")
    a.channels["vision"].update(stage="probation", candidate=None)
    fleet.checkin(a, [event("ramp_completed", "vision", 2), event("activated", "vision", 2)],
                  HEALTHY)
    assert fleet.status(dep["id"])["current_wave"] == 0
    a.channels["vision"].update(state="active", stage="active")
    fleet.checkin(a, health=HEALTHY)
    status = fleet.status(dep["id"])
    assert _by_device(status)["cam-00"] == "succeeded" and status["current_wave"] == 1


def test_activated_event_during_the_ramp_is_not_a_going_back(fleet: Fleet) -> None:
    a = fleet.enroll("cam-00")
    in_stage(a, "active", None, active=1)
    fleet.checkin(a)
    fleet.bundle("2.0.0", 2)
    dep = fleet.deploy("vision:2.0.0", devices=["cam-00"], waves="100%")
    in_stage(a, "ramp", candidate("ramp"), active=1)
    fleet.checkin(a, _steps(2) + [event("activated", "vision", 2)], HEALTHY)
    fleet.checkin(a, health=HEALTHY)
    status = fleet.status(dep["id"])
    assert _by_device(status)["cam-00"] == "activated" and status["state"] == "active"


@pytest.mark.parametrize("kind", ["shadow_failed", "ramp_failed"])
def test_refused_in_shadow_or_ramp_halts_the_deployment(fleet: Fleet, kind: str) -> None:
    devices = [fleet.enroll(f"cam-{i:02d}") for i in range(3)]
    for d in devices:
        in_stage(d, "active", None, active=1)
        fleet.checkin(d)
    fleet.bundle("2.0.0", 2)
    dep = fleet.deploy("vision:2.0.0", device_classes=["edge-box"], waves="1,100%")
    canary = devices[0]
    in_stage(canary, "active", None, active=1)
    fleet.checkin(canary, _steps(2) + [event(kind, "vision", 2, version="2.0.0",
                                             reason="agreement 0.42 < 0.99",
                                             figures={"agreement": 0.42})])
    status = fleet.status(dep["id"])
    assert status["state"] == "halted"
    assert _by_device(status)["cam-00"] == "failed"
    assert kind.replace("_", " ") in status["reason"] and "0.42" in status["reason"]


def test_stage_and_candidate_are_kept_with_the_device(fleet: Fleet, config: ManagerConfig) -> None:
    a = fleet.enroll("cam-00")
    in_stage(a, "shadow", candidate("shadow"), active=1)
    fleet.checkin(a)
    db = fleet.app.extensions["satchel"].db
    status = db.run(lambda s: s.get(Device, "cam-00").status)
    assert status["channels"]["vision"]["stage"] == "shadow"
    assert status["channels"]["vision"]["candidate"]["shadow"]["agreement"] == 1.0
    shown = fleet.client.get("/api/v1/devices/cam-00", headers=fleet.admin).json
    assert shown["channels"]["vision"]["stage"] == "shadow"
    assert shown["channels"]["vision"]["candidate"]["sequence"] == 2
    text = Cli(config).ok("device", "show", "cam-00")
    assert "candidate 2.0.0 (sequence 2): shadow, 40 of 40 compared, agreement 1.0" in text


@pytest.mark.parametrize(
    ("channel", "words"),
    [
        ({"stage": "sideways"}, "'stage'"),
        ({"candidate": "yes"}, "candidate must be an object"),
        ({"candidate": {"version": "2.0.0"}}, "'sequence'"),
        ({"candidate": {"version": "../x", "sequence": 2}}, "candidate version"),
        ({"candidate": {"version": "2", "sequence": 2, "shadow": {"agreement": "high"}}},
         "agreement"),
        ({"candidate": {"version": "2", "sequence": 2, "client_answers": -1}}, "client_answers"),
    ],
)
def test_malformed_stage_or_candidate_is_refused_in_one_line(
    fleet: Fleet, channel: dict[str, Any], words: str
) -> None:
    a = fleet.enroll("cam-00")
    in_stage(a, "active", None, active=1)
    a.channels["vision"].update(channel)
    r = fleet.client.post(f"/api/v1/devices/{a.device_id}/checkin", json=a.body(),
                          headers=a.headers)
    assert r.status_code == 400
    message = r.json["error"]["message"]
    assert words in message and "\n" not in message


def test_a_release_in_shadow_is_not_offered_again(fleet: Fleet) -> None:
    a = fleet.enroll("cam-00")
    in_stage(a, "active", None, active=1)
    fleet.checkin(a)
    fleet.bundle("2.0.0", 2)
    fleet.deploy("vision:2.0.0", devices=["cam-00"], waves="100%")
    assert fleet.checkin(a)["install"]  # offered while the device runs 1
    in_stage(a, "shadow", candidate("shadow"), active=1)
    assert fleet.checkin(a, _steps(2))["install"] == []
    assert fleet.checkin(a)["install"] == []  # unchanged state: the fast path says the same
