"""A small fleet to look at, seeded the way devices and an admin would: through the REST API.

The same seeding drives the Flask test client (in-process) and a real `satchel serve` over
HTTP (`HttpClient` gives `requests` the test client's shape, so `tests.manager.helpers.Fleet`
works on both). Devices, by what the dashboard should say of them:

- cam-01 .. cam-03: ok, running vision 1.0.0 (cam-01 is the canary), with health over 12 h
- cam-04: failing, its error rate breaks the bundle's health policy
- cam-05: rolled back 1.1.0 to 1.0.0 (only when `with_rollback`)
- gw-01: LAN device not seen for three days
- usb-01: USB-only, registered by key, seen through an imported stick report
- new-01: enrolled, never checked in
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import requests

from satchel.bundles import plan as stick
from satchel.bundles.keys import SigningKey
from tests.manager.helpers import Fleet, SimDevice, event, utc

CHANNEL = "vision"
SITE_TAG = "site-a"
HEALTH_HOURS = 12  # hourly health samples seeded per device


class HttpResponse:
    """A `requests` response shaped like Flask's test response (`.json` is a property)."""

    def __init__(self, response: requests.Response) -> None:
        self.response = response
        self.status_code = response.status_code

    @property
    def json(self) -> Any:
        return self.response.json()


class HttpClient:
    """Just enough of FlaskClient for `Fleet`: get/post/patch with json, data, headers."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.session = requests.Session()

    def _send(self, method: str, path: str, **kw: Any) -> HttpResponse:
        headers = dict(kw.pop("headers", None) or {})
        content_type = kw.pop("content_type", None)
        if content_type:
            headers["Content-Type"] = content_type
        r = self.session.request(method, self.base_url + path, headers=headers, timeout=30, **kw)
        return HttpResponse(r)

    def get(self, path: str, **kw: Any) -> HttpResponse:
        return self._send("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> HttpResponse:
        return self._send("POST", path, **kw)

    def patch(self, path: str, **kw: Any) -> HttpResponse:
        return self._send("PATCH", path, **kw)


def at(hours_ago: float) -> str:
    return utc(datetime.now(timezone.utc) - timedelta(hours=hours_ago))


def health(count: int, errors: int = 0, nan: int = 0, p95_ms: float = 2.0) -> dict[str, Any]:
    return {"count": count, "errors": errors, "nan": nan, "p95_ms": p95_ms}


def health_events(
    sequence: int, hours: int = HEALTH_HOURS, errors_at: dict[int, int] | None = None
) -> list[dict[str, Any]]:
    """Hourly `health` events of the last `hours` hours (oldest first)."""
    out = []
    for h in range(hours, 0, -1):
        errors = (errors_at or {}).get(h, 0)
        figures = health(200, errors, 0, 2.0 + (h % 4) * 0.4)
        out.append(event("health", CHANNEL, sequence, time=at(h), figures=figures))
    return out


def checkin(
    fleet: Fleet,
    device: SimDevice,
    events: list[dict[str, Any]] | None = None,
    health_now: dict[str, Any] | None = None,
    sent_at: str | None = None,
) -> dict[str, Any]:
    body = device.body(events, health_now)
    if sent_at:
        body["sent_at"] = sent_at
    r = fleet.client.post(
        f"/api/v1/devices/{device.device_id}/checkin", json=body, headers=device.headers
    )
    assert r.status_code == 200, r.json
    return dict(r.json or {})


def tag(fleet: Fleet, device_id: str, *tags: str) -> None:
    r = fleet.client.patch(
        f"/api/v1/devices/{device_id}/tags", json={"add": list(tags)}, headers=fleet.admin
    )
    assert r.status_code == 200, r.json


def rollback_stats(count: int, errors: int = 0, nonfinite: int = 0) -> dict[str, Any]:
    """The counters an agent's monitor judged when it rolled back (`HealthStats.to_dict`)."""
    return {
        "count": count,
        "errors": errors,
        "nonfinite": nonfinite,
        "latency_ms_sum": 2.0 * count,
        "latency_buckets": [],
        "nonfinite_inputs": 0,
    }


def rolled_back_events(
    version: str,
    sequence: int,
    back_to: str,
    hours_ago: float = 0.0,
    reason: str = "",
    stats: dict[str, Any] | None = None,
    health_before: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """What an agent reports when it installed a release and its health policy rolled it
    back: downloaded, verified, smoke test passed, activated, the release's own `health`
    samples (`health_before`: figures, one a minute, the last a minute before the rollback),
    rolled_back with the counters it judged (`stats`)."""
    when = at(hours_ago + 0.2)
    steps = [
        event(k, CHANNEL, sequence, version=version, time=when) for k in ("downloaded", "verified")
    ]
    steps.append(
        event(
            "smoke_test",
            CHANNEL,
            sequence,
            version=version,
            time=when,
            passed=True,
            figures={
                "max_abs_error": 0.012,
                "min_sqnr_db": 38.17,
                "min_cosine": 0.9998,
                "top1_agreement": 1.0,
                "nonfinite": 0,
                "p95_ms": 3.1,
                "peak_memory_mb": 12.4,
            },
        )
    )
    steps.append(event("activated", CHANNEL, sequence, version=version, time=when))
    samples = health_before or []
    for i, figures in enumerate(samples):
        minutes = len(samples) - i
        steps.append(
            event(
                "health",
                CHANNEL,
                sequence,
                version=version,
                time=at(hours_ago + minutes / 60),
                figures=figures,
            )
        )
    steps.append(
        event(
            "rolled_back",
            CHANNEL,
            sequence,
            version=version,
            time=at(hours_ago),
            reason=reason or "health: error rate 0.40 > 0.05 over 50 inferences",
            figures={
                "to_version": back_to,
                "stats": stats or rollback_stats(50, errors=20),
            },
        )
    )
    return steps


def after_rollback(device: SimDevice) -> None:
    """The device's status once 1.1.0 (sequence 2) was rolled back to 1.0.0 (sequence 1)."""
    device.channels[CHANNEL] = {
        "active": {"version": "1.0.0", "sequence": 1},
        "releases": [{"version": "1.1.0", "sequence": 2}, {"version": "1.0.0", "sequence": 1}],
        "state": "active",
    }


def register_usb_device(fleet: Fleet, device_id: str) -> SimDevice:
    device = SimDevice(device_id, "edge-box", SigningKey.generate())
    r = fleet.client.post(
        "/api/v1/devices",
        headers=fleet.admin,
        json={
            "device_id": device_id,
            "device_class": "edge-box",
            "public_key": device.key.public.to_pem().decode(),
        },
    )
    assert r.status_code == 201, r.json
    return device


def write_usb_report(
    stick_dir: Path, device: SimDevice, events: list[dict[str, Any]], written: datetime
) -> Path:
    """A signed device report on a stick, as `satchel-agent usb PATH` leaves it."""
    report = stick.Report(
        report_id=uuid.uuid4().hex,
        device_id=device.device_id,
        created=written.replace(microsecond=0),
        checkin={**device.body(events, {CHANNEL: health(80)}), "sent_at": utc(written)},
    )
    target = stick_dir / report.path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(stick.sign_report(report, device.key))
    return target


@dataclass
class Seeded:
    devices: dict[str, SimDevice]
    first_deployment: int
    stick: Path  # a stick holding usb-01's report, to import


def seed(fleet: Fleet, *, with_rollback: bool = True) -> Seeded:
    """Seed the fleet described in this module's docstring (the USB report is only written
    to `Seeded.stick`: importing it is the caller's job)."""
    fleet.bundle("1.0.0", 1)
    fleet.bundle("1.1.0", 2)
    devices = {f"cam-0{i}": fleet.enroll(f"cam-0{i}") for i in range(1, 6)}
    devices["gw-01"] = fleet.enroll("gw-01")
    devices["new-01"] = fleet.enroll("new-01")
    for name in ("cam-01", "cam-02", "cam-03", "cam-04", "cam-05"):
        tag(fleet, name, SITE_TAG)
    tag(fleet, "cam-01", "canary")
    dep = fleet.deploy("vision:1.0.0", tags=[SITE_TAG], devices=["cam-01"], waves="1,100%")
    for name in ("cam-01", "cam-02", "cam-03", "cam-04", "cam-05"):
        fleet.install(devices[name], "1.0.0", 1)
    for name in ("cam-01", "cam-02", "cam-03"):
        checkin(fleet, devices[name], health_events(1), {CHANNEL: health(2400)})
    checkin(
        fleet,
        devices["cam-04"],
        health_events(1, errors_at={3: 60, 2: 90, 1: 120}),
        {CHANNEL: health(2400, errors=270)},
    )
    checkin(fleet, devices["cam-05"], health_events(1), {CHANNEL: health(2400)})
    if with_rollback:
        cam5 = devices["cam-05"]
        after_rollback(cam5)
        checkin(fleet, cam5, rolled_back_events("1.1.0", 2, "1.0.0"))
    gw = devices["gw-01"]
    gw.run(CHANNEL, "1.0.0", 1)
    checkin(fleet, gw, [], {CHANNEL: health(10)}, sent_at=at(72))
    devices["usb-01"] = register_usb_device(fleet, "usb-01")
    usb = devices["usb-01"]
    usb.run(CHANNEL, "1.0.0", 1)
    stick_dir = fleet.tmp / "stick"
    written = datetime.now(timezone.utc) - timedelta(hours=5)
    write_usb_report(stick_dir, usb, health_events(1, hours=3), written)
    return Seeded(devices, int(dep["id"]), stick_dir)
