"""The deployment row lock, proven by races whose unlocked outcomes no serial order gives.

Two real managers (`satchel serve`, one database) get requests released together by a barrier:
- the last devices of a wave report at once: the check-in that commits last must see the
  others' targets and release the next wave itself, with no status query to catch it up
  (without the lock in `record_progress`, each sees only its own target and the rollout stalls);
- a pause or an abort races check-ins and status polls: the wave the admin's answer names is
  where the deployment stays (without the lock, a check-in or a poll that read the deployment
  before the pause advances it after, or the pause answers with a wave already left behind);
- the same action on both managers at once: one succeeds, the other is refused with 409
  (without the lock in `actions`, both read `active` and both pause);
- a status poll held (by a hook on this process's engine) between reading the deployment and
  counting its targets while the other manager pauses it and devices report: without the lock
  in `read.status`, the poll advances the paused deployment from the `active` it read.
Each was checked by removing its lock from a copy of the code: the test named fails on
PostgreSQL (the race tests are probabilistic: many rounds, the action sent a little later each
time; the status one is deterministic).
On SQLite every transaction holds the write lock (`BEGIN IMMEDIATE`), so the same tests hold.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from satchel.manager.config import ManagerConfig
from satchel.manager.models import Deployment, DeploymentTarget
from tests.factory.keys import Keyring
from tests.manager.helpers import Fleet, SimDevice, event
from tests.manager.served import Served, two_managers

Call = tuple[str, str, dict[str, Any]]  # method, url, requests keyword arguments
WAVE = 6  # devices per wave in the stall test
WAVES = 8  # waves of a deployment
DEPLOYMENTS = 8  # deployments paused (or aborted) in turn, each of a newer release
DELAYS_S = (0.0, 0.002, 0.005, 0.01)  # how late the admin's action follows the check-ins
ROUNDS = 25  # pause/resume pairs in the double-action test


@pytest.fixture
def managers(config: ManagerConfig, tmp_path: Path) -> Iterator[tuple[Served, Served]]:
    with two_managers(config.url, tmp_path) as pair:
        yield pair


@pytest.fixture
def fleet(app: Flask, client: FlaskClient, keys: Keyring, tmp_path: Path) -> Fleet:
    return Fleet.start(app, client, keys, tmp_path)


def at_once(calls: list[Call], first_delay_s: float = 0.0) -> list[requests.Response]:
    """Send every call from a thread of its own, all released by one barrier; the first
    `first_delay_s` later (to sweep where it lands among the others)."""
    barrier = threading.Barrier(len(calls))
    out: list[requests.Response | BaseException | None] = [None] * len(calls)

    def send(i: int) -> None:
        method, url, kwargs = calls[i]
        with requests.Session() as s:
            try:
                barrier.wait(30)
                if i == 0 and first_delay_s:
                    time.sleep(first_delay_s)
                out[i] = s.request(method, url, timeout=60, **kwargs)
            except BaseException as e:  # reported by the caller
                out[i] = e

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in out:
        if not isinstance(r, requests.Response):
            raise AssertionError(f"a request failed: {r!r}")
    return [r for r in out if isinstance(r, requests.Response)]


def _installed(device: SimDevice, sequence: int = 1) -> dict[str, Any]:
    """A check-in reporting the whole install of vision 1.0.`sequence`; every copy has the
    same event ids."""
    version = f"1.0.{sequence}"
    device.run("vision", version, sequence)
    events = []
    for kind in ("downloaded", "verified", "smoke_test", "activated"):
        e = event(kind, "vision", sequence, version=version)
        e["id"] = f"{device.device_id}-{sequence}-{kind}"
        if kind == "smoke_test":
            e["passed"] = True
        events.append(e)
    health = {"vision": {"count": 100, "errors": 0, "nan": 0, "p95_ms": 2.0}}
    return device.body(events, health)


def _checkin(url: str, device: SimDevice, body: dict[str, Any]) -> Call:
    return ("POST", f"{url}/api/v1/devices/{device.device_id}/checkin",
            {"json": body, "headers": device.headers})


def _stored(app: Flask, dep_id: int) -> tuple[str, int, dict[int, set[str]]]:
    """The deployment as stored (read without evaluating it): state, current wave and the
    target states of each wave."""
    def read(s: Any) -> tuple[str, int, dict[int, set[str]]]:
        dep = s.get(Deployment, dep_id)
        waves: dict[int, set[str]] = {}
        for wave, state in s.execute(sa.select(DeploymentTarget.wave, DeploymentTarget.state)
                                     .where(DeploymentTarget.deployment_id == dep_id)):
            waves.setdefault(wave, set()).add(state)
        return dep.state, dep.current_wave, waves

    result: tuple[str, int, dict[int, set[str]]] = app.extensions["satchel"].db.run(read)
    return result




def test_the_last_devices_of_a_wave_reporting_at_once_on_two_managers_release_the_next_wave(
    fleet: Fleet, app: Flask, managers: tuple[Served, Served]
) -> None:
    devices = [fleet.enroll(f"cam-{i:02d}") for i in range(WAVE * WAVES)]
    fleet.bundle("1.0.0", 1)
    dep = fleet.deploy("vision:1.0.0", devices=[d.device_id for d in devices],
                       waves=[str(WAVE * (w + 1)) for w in range(WAVES)], success_ratio=1.0)
    wave_of = {t["device_id"]: t["wave"] for t in fleet.status(dep["id"])["targets"]}
    for wave in range(WAVES):
        members = [d for d in devices if wave_of[d.device_id] == wave]
        calls = [_checkin(managers[i % 2].url, d, _installed(d)) for i, d in enumerate(members)]
        assert {r.status_code for r in at_once(calls)} == {200}
        # no status query in between: the check-ins alone must have moved the rollout on
        state, current, states = _stored(app, dep["id"])
        assert states[wave] == {"succeeded"}, (wave, states)
        if wave < WAVES - 1:
            assert (state, current) == ("active", wave + 1), (wave, state, current, states)
            assert states[wave + 1] == {"assigned"}, (wave, states)
        else:
            assert state == "completed", (state, current, states)


def _action_rounds(fleet: Fleet, app: Flask, managers: tuple[Served, Served], action: str,
                   devices: list[SimDevice], dep_id: int, sequence: int) -> int:
    """Rounds of: the install reports of the current wave's devices on both managers, a status
    poll on both and `action` (pause or abort) on one, all at once; then the same reports and
    polls again, after which the deployment must stand where the action's answer said.
    Resumes a paused deployment for the next round; returns how many actions succeeded."""
    poll: list[Call] = [("GET", f"{m.url}/api/v1/deployments/{dep_id}",
                         {"headers": fleet.admin}) for m in managers]
    wave_of = {t["device_id"]: t["wave"] for t in fleet.status(dep_id)["targets"]}
    succeeded = 0
    for round_ in range(2 * WAVES):
        current = _stored(app, dep_id)[1]
        reports = [_checkin(m.url, d, _installed(d, sequence)) for d in devices
                   if wave_of[d.device_id] == current for m in managers]
        act: Call = ("POST", f"{managers[round_ % 2].url}/api/v1/deployments/{dep_id}/{action}",
                     {"headers": fleet.admin})
        delay = DELAYS_S[(round_ + sequence) % len(DELAYS_S)]
        answers = at_once([act, *poll, *reports], delay)
        assert {r.status_code for r in answers[1:]} == {200}
        if answers[0].status_code == 409:  # completed before the action: nothing to check
            assert _stored(app, dep_id)[0] == "completed", answers[0].text
            return succeeded
        assert answers[0].status_code == 200, answers[0].text
        succeeded += 1
        said = answers[0].json()
        at_once([*poll, *reports])  # more reports and polls: nothing may move now
        state, current, states = _stored(app, dep_id)
        assert (state, current) == (said["state"], said["current_wave"]), (said, states)
        assert all(states[w] == {"pending"} for w in states if w > current), (current, states)
        if action == "abort":
            return succeeded
        r = requests.post(f"{managers[(round_ + 1) % 2].url}/api/v1/deployments/{dep_id}/resume",
                          headers=fleet.admin, timeout=60)
        assert r.status_code == 200, r.text
        if r.json()["state"] == "completed":
            return succeeded
    return succeeded


@pytest.mark.parametrize("action", ["pause", "abort"])
def test_a_pause_or_abort_racing_check_ins_and_polls_on_two_managers_holds_where_it_answered(
    fleet: Fleet, app: Flask, managers: tuple[Served, Served], action: str
) -> None:
    devices = [fleet.enroll(f"edge-{i:02d}") for i in range(2 * WAVES)]
    for sequence in range(1, DEPLOYMENTS + 1):
        fleet.bundle(f"1.0.{sequence}", sequence)
        dep = fleet.deploy(f"vision:1.0.{sequence}", devices=[d.device_id for d in devices],
                           waves=[str(2 * (w + 1)) for w in range(WAVES)], success_ratio=1.0)
        assert _action_rounds(fleet, app, managers, action, devices, dep["id"], sequence) >= 1
        if action == "abort":  # an aborted deployment offers nothing, on either manager
            for d in devices:
                for m in managers:
                    r = requests.post(f"{m.url}/api/v1/devices/{d.device_id}/checkin",
                                      json=d.body(), headers=d.headers, timeout=60)
                    assert r.status_code == 200 and r.json()["install"] == [], r.text


def test_the_same_action_on_two_managers_at_once_succeeds_once_and_is_refused_once(
    fleet: Fleet, managers: tuple[Served, Served]
) -> None:
    devices = [fleet.enroll(f"box-{i:02d}") for i in range(4)]
    fleet.bundle("1.0.0", 1)
    dep = fleet.deploy("vision:1.0.0", devices=[d.device_id for d in devices],
                       waves=["1", "100%"])

    def both(action: str) -> list[int]:
        calls: list[Call] = [("POST", f"{m.url}/api/v1/deployments/{dep['id']}/{action}",
                              {"headers": fleet.admin}) for m in managers]
        return sorted(r.status_code for r in at_once(calls))

    for _ in range(ROUNDS):
        assert both("pause") == [200, 409]
        assert both("resume") == [200, 409]
    assert both("abort") == [200, 409]
    assert fleet.status(dep["id"])["state"] == "aborted"


def test_a_status_poll_that_read_the_deployment_before_a_pause_does_not_advance_it_after(
    fleet: Fleet, app: Flask, managers: tuple[Served, Served]
) -> None:
    """A status poll evaluates the deployment (it may advance it). Here the poll, on this
    process's manager, is held between reading the deployment and counting its targets while
    manager B pauses it and the current wave's devices report their installs there (moving
    targets a paused deployment does not evaluate). With the row lock, the pause and the
    reports wait for the poll; without it, the poll would advance a paused deployment from
    the `active` it read before the pause."""
    devices = [fleet.enroll(f"tag-{i:02d}") for i in range(4)]
    fleet.bundle("1.0.1", 1)
    dep = fleet.deploy("vision:1.0.1", devices=[d.device_id for d in devices],
                       waves=["2", "100%"], success_ratio=1.0)
    first = [d for d in devices if d.device_id in
             {t["device_id"] for t in fleet.status(dep["id"])["targets"] if t["wave"] == 0}]
    b = managers[1].url
    in_window, go = threading.Event(), threading.Event()
    answers: dict[str, Any] = {}

    def hold(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if (threading.current_thread().name == "poll" and not in_window.is_set()
                and "GROUP BY" in statement and "deployment_targets" in statement):
            in_window.set()
            go.wait(10)

    def poll() -> None:
        answers["poll"] = fleet.client.get(f"/api/v1/deployments/{dep['id']}",
                                           headers=fleet.admin)

    def pause() -> None:
        answers["pause"] = requests.post(f"{b}/api/v1/deployments/{dep['id']}/pause",
                                         headers=fleet.admin, timeout=60)

    def report(d: SimDevice) -> None:
        method, url, kwargs = _checkin(b, d, _installed(d))
        answers[d.device_id] = requests.request(method, url, timeout=60, **kwargs)

    engine = app.extensions["satchel"].db.engine
    sa.event.listen(engine, "before_cursor_execute", hold)
    try:
        poller = threading.Thread(target=poll, name="poll")
        poller.start()
        assert in_window.wait(30), "the status poll never counted the targets"
        pauser = threading.Thread(target=pause)
        pauser.start()
        pauser.join(1.0)  # done at once without the lock; waits for the poll with it
        reporters = [threading.Thread(target=report, args=(d,)) for d in first]
        for t in reporters:
            t.start()
        for t in reporters:
            t.join(1.0)
        go.set()
        for t in (poller, pauser, *reporters):
            t.join(60)
    finally:
        go.set()
        sa.event.remove(engine, "before_cursor_execute", hold)
    assert answers["poll"].status_code == 200 and answers["pause"].status_code == 200
    assert all(answers[d.device_id].status_code == 200 for d in first)
    said = answers["pause"].json()
    state, current, states = _stored(app, dep["id"])
    assert (state, current) == ("paused", said["current_wave"]), (said, states)
    assert all(states[w] == {"pending"} for w in states if w > current), (current, states)
