"""Staged rollouts: waves advance on healthy devices, halt on failures, pause/resume/abort."""

from __future__ import annotations

from typing import Any

import pytest

from satchel.agent.health.stats import HealthStats
from satchel.bundles.health import HealthFigures, judge
from satchel.bundles.manifest import HealthPolicy
from satchel.manager.services.deployments import health_breach
from tests.factory.bundles import build_test_bundle
from tests.manager.helpers import Fleet, SimDevice, event

# A latency budget and the default minimum sample count (20).
LATENCY_POLICY = HealthPolicy(max_p95_latency_ms=5.0)


def _fleet_of(fleet: Fleet, n: int) -> list[SimDevice]:
    return [fleet.enroll(f"cam-{i:02d}") for i in range(n)]


def _offered(fleet: Fleet, devices: list[SimDevice]) -> list[str]:
    return [d.device_id for d in devices if fleet.checkin(d)["install"]]


def _by_device(status: dict) -> dict[str, str]:
    return {t["device_id"]: t["state"] for t in status["targets"]}


def test_waves_advance_only_when_the_wave_is_healthy(fleet: Fleet) -> None:
    devices = _fleet_of(fleet, 10)
    fleet.bundle("1.0.0", 1)
    dep = fleet.deploy(
        "vision:1.0.0", device_classes=["edge-box"], waves="1,50%,100%", success_ratio=1.0
    )
    assert [w["size"] for w in dep["waves"]] == [1, 4, 5]
    assert _offered(fleet, devices) == ["cam-00"]  # the canary only
    fleet.install(devices[0])
    status = fleet.status(dep["id"])
    assert status["current_wave"] == 1
    assert _offered(fleet, devices) == [f"cam-{i:02d}" for i in range(1, 5)]
    for d in devices[1:4]:
        fleet.install(d)
    assert fleet.status(dep["id"])["current_wave"] == 1  # one of the wave is not done yet
    assert _offered(fleet, devices) == ["cam-04"]
    fleet.install(devices[4])
    assert fleet.status(dep["id"])["current_wave"] == 2
    for d in devices[5:]:
        fleet.install(d)
    final = fleet.status(dep["id"])
    assert final["state"] == "completed"
    assert set(_by_device(final).values()) == {"succeeded"}


def test_named_device_is_the_canary(fleet: Fleet) -> None:
    devices = _fleet_of(fleet, 5)
    fleet.bundle()
    fleet.deploy("vision:1.0.0", device_classes=["edge-box"], devices=["cam-03"], waves="1,100%")
    assert _offered(fleet, devices) == ["cam-03"]


def test_probation_and_bad_health_do_not_count_as_success(fleet: Fleet) -> None:
    a, b = _fleet_of(fleet, 2)
    fleet.bundle()
    dep = fleet.deploy("vision:1.0.0", devices=["cam-00", "cam-01"], waves="1,100%")
    a.run("vision", "1.0.0", 1, state="probation")
    fleet.checkin(a)
    assert _by_device(fleet.status(dep["id"]))["cam-00"] == "activated"
    fleet.install(a, healthy=False)  # out of probation but 50% errors
    status = fleet.status(dep["id"])
    assert _by_device(status)["cam-00"] == "activated" and status["current_wave"] == 0
    fleet.install(a, healthy=True)
    assert fleet.status(dep["id"])["current_wave"] == 1


@pytest.mark.parametrize("kind", ["smoke_test", "install_failed", "install_refused", "rolled_back"])
def test_canary_failure_halts_the_deployment(fleet: Fleet, kind: str) -> None:
    devices = _fleet_of(fleet, 4)
    fleet.bundle()
    dep = fleet.deploy("vision:1.0.0", device_classes=["edge-box"], waves="1,100%")
    fleet.fail(devices[0], kind=kind, reason="it broke")
    status = fleet.status(dep["id"])
    assert status["state"] == "halted"
    assert "canary" in status["reason"] and "it broke" in status["reason"]
    assert _by_device(status)["cam-00"] == "failed"
    assert _offered(fleet, devices) == []  # nothing offered while halted
    assert status["current_wave"] == 0


def test_failures_past_the_ratio_halt_a_later_wave(fleet: Fleet) -> None:
    devices = _fleet_of(fleet, 12)
    fleet.bundle()
    dep = fleet.deploy(
        "vision:1.0.0",
        device_classes=["edge-box"],
        waves="2,100%",
        max_failure_ratio=0.2,
        success_ratio=0.5,
    )
    for d in devices[:2]:
        fleet.install(d)
    assert fleet.status(dep["id"])["current_wave"] == 1
    fleet.fail(devices[2], kind="install_failed")
    fleet.fail(devices[3], kind="rolled_back")
    assert fleet.status(dep["id"])["state"] == "active"  # 2 of 12 released: not past 20%
    fleet.fail(devices[4], kind="install_failed")
    status = fleet.status(dep["id"])
    assert status["state"] == "halted" and "3 of 12" in status["reason"]


def test_a_device_going_back_to_an_older_release_counts_as_failed(fleet: Fleet) -> None:
    (a,) = _fleet_of(fleet, 1)
    a.run("vision", "0.9.0", 0)
    fleet.checkin(a)
    fleet.bundle("1.0.0", 1)
    dep = fleet.deploy("vision:1.0.0", devices=["cam-00"], waves="100%")
    a.run("vision", "1.0.0", 1, state="probation")
    fleet.checkin(a)
    a.run("vision", "0.9.0", 0)
    fleet.checkin(a)
    status = fleet.status(dep["id"])
    assert _by_device(status)["cam-00"] == "failed" and status["state"] == "halted"


def test_pause_stops_offers_and_resume_restarts_them(fleet: Fleet) -> None:
    devices = _fleet_of(fleet, 3)
    fleet.bundle()
    dep = fleet.deploy("vision:1.0.0", device_classes=["edge-box"], waves="100%")
    url = f"/api/v1/deployments/{dep['id']}"
    assert fleet.client.post(f"{url}/pause", headers=fleet.admin).json["state"] == "paused"
    assert _offered(fleet, devices) == []
    assert fleet.client.post(f"{url}/pause", headers=fleet.admin).status_code == 409
    fleet.install(devices[0])  # progress while paused is still recorded
    assert _by_device(fleet.status(dep["id"]))["cam-00"] == "succeeded"
    assert fleet.client.post(f"{url}/resume", headers=fleet.admin).json["state"] == "active"
    assert _offered(fleet, devices) == ["cam-01", "cam-02"]


def test_resume_after_a_halt_tolerates_the_old_failures_only(fleet: Fleet) -> None:
    devices = _fleet_of(fleet, 3)
    fleet.bundle()
    dep = fleet.deploy("vision:1.0.0", device_classes=["edge-box"], waves="1,100%")
    fleet.fail(devices[0])
    assert fleet.status(dep["id"])["state"] == "halted"
    r = fleet.client.post(f"/api/v1/deployments/{dep['id']}/resume", headers=fleet.admin)
    assert r.json["state"] == "active" and r.json["failures_tolerated"] == 1
    assert r.json["current_wave"] == 1  # the tolerated canary no longer blocks its wave
    assert _offered(fleet, devices) == ["cam-01", "cam-02"]
    fleet.fail(devices[1], kind="install_failed")
    assert fleet.status(dep["id"])["state"] == "halted"


def test_abort_is_final_and_stops_downloads(fleet: Fleet) -> None:
    (a,) = _fleet_of(fleet, 1)
    built = fleet.bundle()
    dep = fleet.deploy("vision:1.0.0", devices=["cam-00"], waves="100%")
    url = f"/api/v1/deployments/{dep['id']}"
    r = fleet.client.post(f"{url}/abort", json={"reason": "wrong model"}, headers=fleet.admin)
    assert r.json["state"] == "aborted" and r.json["reason"] == "wrong model"
    assert fleet.checkin(a)["install"] == []
    import hashlib

    sha = hashlib.sha256(built.data).hexdigest()
    assert fleet.client.get(f"/api/v1/bundles/{sha}/download", headers=a.headers).status_code == 403
    for action in ("resume", "pause", "abort"):
        assert fleet.client.post(f"{url}/{action}", headers=fleet.admin).status_code == 409


@pytest.mark.parametrize(
    ("waves", "error"),
    [
        ("0", "count"),
        ("150%", "percentage"),
        ("5,2", "cumulative"),
        ("1,50%", "end with 100%"),
        ("", "at least one"),
        ("x", "count"),
    ],
)
def test_bad_waves_are_refused(fleet: Fleet, waves: str, error: str) -> None:
    _fleet_of(fleet, 10)
    fleet.bundle()
    r = fleet.client.post(
        "/api/v1/deployments", headers=fleet.admin, json={"bundle": "vision:1.0.0", "waves": waves}
    )
    assert r.status_code == 400 and error in r.json["error"]["message"]
    assert fleet.client.get("/api/v1/deployments", headers=fleet.admin).json["deployments"] == []


def test_targets_by_tag_and_incompatible_classes_left_out(fleet: Fleet) -> None:
    _fleet_of(fleet, 3)
    fleet.enroll("bell-1", device_class="doorbell")
    for d in ("cam-00", "cam-02", "bell-1"):
        fleet.client.patch(
            f"/api/v1/devices/{d}/tags", json={"add": ["north"]}, headers=fleet.admin
        )
    fleet.bundle()  # built for class edge-box only
    dep = fleet.deploy("vision:1.0.0", tags=["north"], waves="100%")
    assert sorted(_by_device(fleet.status(dep["id"]))) == ["cam-00", "cam-02"]
    r = fleet.client.post(
        "/api/v1/deployments",
        headers=fleet.admin,
        json={"bundle": "vision:1.0.0", "devices": ["bell-1"]},
    )
    assert r.status_code == 400 and "does not support" in r.json["error"]["message"]
    r = fleet.client.post(
        "/api/v1/deployments",
        headers=fleet.admin,
        json={"bundle": "vision:1.0.0", "devices": ["nope"]},
    )
    assert r.status_code == 404


def test_newest_deployment_wins_per_channel(fleet: Fleet) -> None:
    (a,) = _fleet_of(fleet, 1)
    fleet.bundle("1.0.0", 1)
    fleet.bundle("1.1.0", 2)
    fleet.deploy("vision:1.0.0", devices=["cam-00"], waves="100%")
    fleet.deploy("vision:1.1.0", devices=["cam-00"], waves="100%")
    (offer,) = fleet.checkin(a)["install"]
    assert offer["version"] == "1.1.0"


def _stats(n: int, *, errors: int = 0, nan: int = 0, nan_inputs: int = 0,
           latency_ms: float = 1.0) -> HealthStats:
    """What a device counted: `n` inferences, the first ones failed, NaN or fed NaN."""
    stats = HealthStats()
    for i in range(n):
        fed_nan = i >= n - nan_inputs  # and so NaN out
        stats.record(latency_ms, error=i < errors, nonfinite=i < nan or fed_nan,
                     nonfinite_input=fed_nan)
    return stats


@pytest.mark.parametrize(
    ("stats", "breach"),
    [
        (_stats(5, errors=5, nan=5, latency_ms=900.0), None),  # too few samples to judge
        (_stats(19, latency_ms=900.0), None),
        (_stats(20, latency_ms=900.0), "health: p95 latency 975.0 ms > 5.0 ms over 20 inferences"),
        (_stats(40, errors=4), "health: error rate 0.10 > 0.05 over 40 inferences"),
        (_stats(40, nan=1), "health: nan rate 0.03 > 0.00 over 40 inferences"),
        (_stats(40, nan_inputs=40), None),  # NaN in, NaN out: the client's, not the model's
        (_stats(400, errors=20, latency_ms=4.0), None),
    ],
    ids=["few-samples", "one-short", "slow", "errors", "nan", "nan-inputs", "healthy"],
)
def test_device_and_manager_judge_the_same_figures_alike(
    stats: HealthStats, breach: str | None
) -> None:
    on_device = judge(LATENCY_POLICY, stats.figures()).breach
    reported = stats.figures().to_summary()  # the check-in's health summary of the channel
    on_manager = health_breach(LATENCY_POLICY.to_dict(), reported)
    assert on_device == on_manager == breach


def test_fewer_samples_than_the_policy_needs_do_not_hold_a_wave(fleet: Fleet) -> None:
    a, b = (fleet.enroll(f"cam-{i:02d}") for i in range(2))

    def with_latency_policy(manifest: dict[str, Any]) -> None:
        manifest["health_policy"] = LATENCY_POLICY.to_dict()

    built = build_test_bundle(fleet.tmp / "vision-1.0.0.satchel", keys=fleet.keys,
                              mutate_manifest=with_latency_policy)
    r = fleet.client.post("/api/v1/bundles", data=built.data, headers=fleet.admin,
                          content_type="application/octet-stream")
    assert r.status_code == 201, r.json
    dep = fleet.deploy("vision:1.0.0", devices=["cam-00", "cam-01"], waves="1,100%")
    # The canary serves it out of probation, with 5 slow inferences: the device's judge
    # waits for 20 before it judges anything, so the device keeps the release.
    figures = HealthFigures(inferences=5, p95_latency_ms=900.0)
    assert not judge(LATENCY_POLICY, figures).breached
    a.run("vision", "1.0.0", 1)
    events = [event(k, "vision", 1, version="1.0.0") for k in ("downloaded", "activated")]
    fleet.checkin(a, events, {"vision": figures.to_summary()})
    status = fleet.status(dep["id"])
    targets = {t["device_id"]: t for t in status["targets"]}
    assert targets["cam-00"]["state"] == "succeeded", targets["cam-00"]
    assert status["current_wave"] == 1 and status["state"] == "active"
    assert fleet.checkin(b)["install"]  # the next wave is offered the release
