"""Many devices checking in at once over real HTTP during a staged deployment, each delivering
many events in batches and re-sending some batches as if an answer had been lost: every event
is recorded exactly once, the manager's own answers add up to the same count, and the
deployment completes. On SQLite and PostgreSQL."""

from __future__ import annotations

import random
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
import requests

from tests.manager.helpers import Fleet, SimDevice, event
from tests.manager.live_server import LiveServer
from tests.reliability.dbstate import event_ids
from tests.reliability.figures import Recorder


@dataclass
class Load:
    devices: int
    events_per_device: int
    batch: int  # events per check-in
    threads: int
    sent: dict[str, set[str]] = field(default_factory=dict)  # device -> unique event ids
    posts: int = 0
    resent: int = 0
    answered: Counter[str] = field(default_factory=Counter)  # "recorded" / "duplicate"
    lock: threading.Lock = field(default_factory=threading.Lock)


def _run(fleet: Fleet, server: LiveServer, load: Load, backend: str,
         measured: Recorder) -> None:
    devices = [fleet.enroll(f"cam-{i:03d}") for i in range(load.devices)]
    fleet.bundle("1.0.0", 1)
    dep = fleet.deploy("vision:1.0.0", device_classes=["edge-box"], waves="1,25%,100%",
                       success_ratio=1.0)
    load.sent = {d.device_id: set() for d in devices}

    def post(http: requests.Session, device: SimDevice, events: list[dict]) -> dict:
        r = http.post(f"{server.url}/api/v1/devices/{device.device_id}/checkin",
                      json=device.body(events), headers=device.headers, timeout=120)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["events"]["recorded"] + answer["events"]["duplicate"] == len(events)
        with load.lock:
            load.posts += 1
            load.sent[device.device_id].update(e["id"] for e in events)
            load.answered.update(answer["events"])
        return dict(answer)

    def life(device: SimDevice) -> None:
        rng = random.Random(device.device_id)
        with requests.Session() as http:
            for start in range(0, load.events_per_device, load.batch):
                count = min(load.batch, load.events_per_device - start)
                batch = [event("heartbeat", sequence=0) for _ in range(count)]
                answer = post(http, device, batch)
                if rng.random() < 0.3:  # the answer was lost: the device sends it again
                    post(http, device, batch)
                    with load.lock:
                        load.resent += 1
                if answer["install"] and device.channels.get("vision") is None:
                    device.run("vision", "1.0.0", 1)
                    post(http, device, [event(k) for k in ("downloaded", "verified",
                                                           "activated")])
            while not device.channels.get("vision"):  # a later wave: keep asking
                if post(http, device, [])["install"]:
                    device.run("vision", "1.0.0", 1)
                    post(http, device, [event(k) for k in ("downloaded", "verified",
                                                           "activated")])

    with ThreadPoolExecutor(load.threads) as pool:
        list(pool.map(life, devices))
    for _ in range(3):  # the last wave's successes are judged on a later status call
        status = fleet.status(dep["id"])

    recorded = event_ids(fleet.app)
    expected = sorted((d, e) for d, ids in load.sent.items() for e in ids)
    duplicates = len(recorded) - len(set(recorded))
    lost = len(set(expected) - set(recorded))
    assert duplicates == 0 and lost == 0
    assert sorted(recorded) == expected
    assert load.answered["recorded"] == len(expected)  # the manager's own count agrees
    assert status["state"] == "completed", status
    assert status["counts"] == {"succeeded": load.devices}
    measured.row("manager", f"concurrent check-ins during a 3-wave deployment ({backend}): "
                 f"{load.devices} devices x {load.events_per_device} events, "
                 f"{load.threads} threads, 30% of batches re-sent", len(expected),
                 "each event recorded exactly once; deployment completed", lost,
                 checkins=load.posts, batches_resent=load.resent, duplicates=duplicates)


def test_many_devices_many_events_are_recorded_exactly_once(
    fleet: Fleet, live_server: LiveServer, backend: str, measured: Recorder
) -> None:
    _run(fleet, live_server, Load(devices=30, events_per_device=60, batch=20, threads=10),
         backend, measured)


@pytest.mark.slow
def test_many_devices_many_events_are_recorded_exactly_once_long_run(
    fleet: Fleet, live_server: LiveServer, backend: str, measured: Recorder
) -> None:
    _run(fleet, live_server, Load(devices=100, events_per_device=300, batch=50, threads=16),
         backend, measured)
