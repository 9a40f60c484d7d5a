"""Crash loops: a service that keeps dying after an activation rolls the channel back when it
starts again, before serving; clean restarts, old crashes and crashes after probation do not."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from satchel.agent.server import MemoryEventSink, check_crash_loop, record_clean_stop, record_start
from satchel.agent.server.config import ServerConfig
from satchel.agent.server.crashloop import STARTS_FILE
from satchel.bundles.events import ROLLED_BACK
from satchel.bundles.manifest import HealthPolicy
from tests.server.devices import CHANNEL, Device, Models

LOOPY = HealthPolicy(probation_s=600.0, min_samples=16, max_error_rate=0.0, max_nan_rate=0.0,
                     max_crash_restarts=2)
REPO = Path(__file__).resolve().parents[2]

# The service as `satchel-agent run` starts it: crash-loop check first, then serve.
SERVICE = """
import json, sys, time
from pathlib import Path
from satchel.agent.server import AgentServer, check_crash_loop
state_dir = Path(sys.argv[1])
print(json.dumps(check_crash_loop(state_dir)), flush=True)
server = AgentServer(state_dir, listen="127.0.0.1:0").start()
print(server.url, flush=True)
time.sleep(120)
"""


def _start_service(state_dir: Path) -> tuple[subprocess.Popen[str], list[str], str]:
    child = subprocess.Popen(
        [sys.executable, "-c", SERVICE, str(state_dir)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert child.stdout is not None
    reasons = json.loads(child.stdout.readline())
    url = child.stdout.readline().strip()
    return child, reasons, url


def _crash(child: subprocess.Popen[str]) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait(10)


def test_crash_loop_after_activation_rolls_back_at_start_up(
    device: Device, models: Models
) -> None:
    device.install(models.good, version="1.0.0", sequence=1, policy=LOOPY)
    device.install(models.other, version="2.0.0", sequence=2, policy=LOOPY)
    for _ in range(LOOPY.max_crash_restarts):
        child, reasons, url = _start_service(device.state_dir)
        try:
            assert reasons == []
            assert requests.get(f"{url}/v2/models/{CHANNEL}").json()["versions"] == ["2.0.0"]
        finally:
            _crash(child)
    child, reasons, url = _start_service(device.state_dir)
    try:
        (reason,) = reasons
        assert reason == "health: crash loop: 2 service restarts since activation (limit 2)"
        assert requests.get(f"{url}/v2/models/{CHANNEL}").json()["versions"] == ["1.0.0"]
    finally:
        _crash(child)
    assert device.active().version == "1.0.0"  # type: ignore[union-attr]


def _assert_untouched(device: Device, before: dict[str, object]) -> None:
    assert device.state.status() == before


def test_clean_restarts_are_not_a_crash_loop(device: Device, models: Models) -> None:
    device.install(models.good, version="1.0.0", sequence=1, policy=LOOPY)
    device.install(models.other, version="2.0.0", sequence=2, policy=LOOPY)
    before = device.state.status()
    for _ in range(5):
        assert check_crash_loop(device.state_dir) == []
        record_clean_stop(device.state_dir)
    _assert_untouched(device, before)


def test_crashes_before_the_activation_do_not_count(device: Device, models: Models) -> None:
    device.install(models.good, version="1.0.0", sequence=1, policy=LOOPY)
    long_ago = time.time() - 3600
    for i in range(5):
        record_start(device.state_dir, long_ago + i)  # crashed, before the new release
    device.install(models.other, version="2.0.0", sequence=2, policy=LOOPY)
    before = device.state.status()
    assert check_crash_loop(device.state_dir) == []
    _assert_untouched(device, before)


def test_crashes_after_probation_do_not_roll_back(device: Device, models: Models) -> None:
    device.install(models.good, version="1.0.0", sequence=1, policy=LOOPY)
    release = device.install(models.other, version="2.0.0", sequence=2, policy=LOOPY)
    after = release.activated_at.timestamp() + LOOPY.probation_s + 1
    before = device.state.status()
    for i in range(5):
        assert check_crash_loop(device.state_dir, after + i) == []
    _assert_untouched(device, before)


def test_crash_loop_rollback_is_reported_and_the_count_starts_over(
    device: Device, models: Models
) -> None:
    device.install(models.good, version="1.0.0", sequence=1, policy=LOOPY)
    device.install(models.other, version="2.0.0", sequence=2, policy=LOOPY)
    events = MemoryEventSink()
    assert check_crash_loop(device.state_dir, events=events) == []
    assert check_crash_loop(device.state_dir, events=events) == []
    (reason,) = check_crash_loop(device.state_dir, events=events)
    assert reason.startswith("health: crash loop: 2 service restarts")
    (rolled,) = events.of_kind(ROLLED_BACK)
    assert (rolled.version, rolled.details["to_version"]) == ("2.0.0", "1.0.0")
    assert device.active().version == "1.0.0"  # type: ignore[union-attr]
    runs = json.loads((device.state_dir / STARTS_FILE).read_text())["runs"]
    assert len(runs) == 1


def test_start_history_is_bounded(device: Device) -> None:
    config = ServerConfig(crash_history=8)
    for i in range(50):
        record_start(device.state_dir, 1000.0 + i, config)
    runs = json.loads((device.state_dir / STARTS_FILE).read_text())["runs"]
    assert [r["start"] for r in runs] == [1000.0 + i for i in range(42, 50)]
