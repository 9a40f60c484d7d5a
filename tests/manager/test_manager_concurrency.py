"""Many devices checking in at once during a deployment, over real HTTP: no event lost or
recorded twice, every wave advances exactly once, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import requests

from satchel.manager.models import Event
from tests.manager.helpers import Fleet, SimDevice, event
from tests.manager.live_server import LiveServer

DEVICES = 24
THREADS = 8
ROUNDS = 12  # check-ins per device at most


def test_concurrent_checkins_lose_and_duplicate_nothing(
    fleet: Fleet, live_server: LiveServer
) -> None:
    devices = [fleet.enroll(f"cam-{i:02d}") for i in range(DEVICES)]
    fleet.bundle("1.0.0", 1)
    dep = fleet.deploy(
        "vision:1.0.0", device_classes=["edge-box"], waves="1,25%,100%", success_ratio=1.0
    )
    sent: dict[str, set[str]] = {d.device_id: set() for d in devices}
    lock = threading.Lock()
    stop = threading.Event()

    def post(device: SimDevice, events: list[dict]) -> dict:
        with requests.Session() as http:
            r = http.post(
                f"{live_server.url}/api/v1/devices/{device.device_id}/checkin",
                json=device.body(events),
                headers=device.headers,
                timeout=60,
            )
        assert r.status_code == 200, r.text
        with lock:
            sent[device.device_id].update(e["id"] for e in events)
        return r.json()

    def life(device: SimDevice) -> None:
        for _ in range(ROUNDS):
            answer = post(device, [event("heartbeat", sequence=0)])
            if answer["install"]:
                device.run("vision", "1.0.0", 1)
                batch = [event(k) for k in ("downloaded", "verified", "activated")]
                post(device, batch)
                post(device, batch)  # a retried delivery
                return

    def watcher() -> None:
        while not stop.is_set():
            requests.get(
                f"{live_server.url}/api/v1/deployments/{dep['id']}", headers=fleet.admin, timeout=60
            )

    watch = threading.Thread(target=watcher)
    watch.start()
    try:
        for _ in range(3):  # each pass lets the next wave's devices see their offer
            with ThreadPoolExecutor(THREADS) as pool:
                list(pool.map(life, devices))
    finally:
        stop.set()
        watch.join()

    db = fleet.app.extensions["satchel"].db
    recorded = db.run(lambda s: [(e.device_id, e.event_id) for e in s.query(Event)])
    assert len(recorded) == len(set(recorded))
    assert sorted(recorded) == sorted((d, e) for d, ids in sent.items() for e in ids)
    status = fleet.status(dep["id"])
    assert status["state"] == "completed", status
    assert status["counts"] == {"succeeded": DEVICES}
