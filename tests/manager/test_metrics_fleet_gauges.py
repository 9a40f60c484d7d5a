"""The fleet's gauges on `/metrics` are read from the database: devices per channel state,
devices not seen within each window, deployments by state, and the wave a deployment halted
at; whichever worker answers, they say the same."""

from __future__ import annotations

import re
from datetime import timedelta

import sqlalchemy as sa

from satchel.bundles.timeutil import now
from satchel.manager.models import Device
from satchel.manager.services.fleet_counts import count_fleet
from tests.manager.helpers import Fleet


def _gauge(text: str, name: str, **labels: str) -> float | None:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    series = f"{name}{{{wanted}}}" if labels else name
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


def test_a_failed_release_shows_as_a_halted_wave_and_a_rolled_back_channel(fleet: Fleet) -> None:
    fleet.bundle("1.0.0", 1)
    cam, other = fleet.enroll("cam-1"), fleet.enroll("cam-2")
    deployment = fleet.deploy("vision:1.0.0", devices=["cam-1", "cam-2"], waves="1,100%")
    cam.run("vision", "0.9.0", 0, state="rolled-back")
    fleet.fail(cam, sequence=1)
    other.run("vision", "0.9.0", 0)
    fleet.checkin(other)

    text = fleet.client.get("/metrics").text

    assert fleet.status(deployment["id"])["state"] == "halted"
    assert _gauge(text, "satchel_wave_halted", deployment=str(deployment["id"]), wave="1") == 1
    assert _gauge(text, "satchel_deployments", state="halted") == 1
    assert _gauge(text, "satchel_device_channels", channel="vision", state="rolled-back") == 1
    assert _gauge(text, "satchel_device_channels", channel="vision", state="active") == 1
    assert _gauge(text, "satchel_devices") == 2


def test_devices_not_seen_count_by_window_and_never_seen_ones_in_every_window(
    fleet: Fleet,
) -> None:
    for name in ("fresh", "hours", "days", "never"):
        fleet.enroll(name)
    db = fleet.app.extensions["satchel"].db
    t = now()
    seen = {"fresh": t, "hours": t - timedelta(hours=3), "days": t - timedelta(days=3),
            "never": None}

    def set_last_seen(session: sa.orm.Session) -> None:
        for device_id, when in seen.items():
            session.execute(sa.update(Device).where(Device.id == device_id)
                            .values(last_seen_at=when))

    db.run(set_last_seen)

    counts = db.run(lambda s: count_fleet(s, at=t + timedelta(seconds=1)))
    text = fleet.client.get("/metrics").text

    assert dict(counts.not_seen) == {"5m": 3, "1h": 3, "24h": 2, "7d": 1}
    assert _gauge(text, "satchel_devices_not_seen", window="24h") == 2
    assert _gauge(text, "satchel_devices_not_seen", window="7d") == 1
