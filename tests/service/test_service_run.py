"""`satchel-agent run` as a real process: serves on TCP and the Unix socket, picks up a
release the CLI activates, talks to systemd, stops cleanly on SIGTERM, refuses to start on a
device that is not set up; and the channel state a manager relies on ("probation")."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from datetime import timedelta
from pathlib import Path

import numpy as np

from satchel.agent.event_queue import EventQueue
from satchel.agent.state import STATE_PROBATION, DeviceState
from satchel.bundles.manifest import HealthPolicy
from satchel.bundles.timeutil import utcnow
from tests.factory.model_makers import OUTPUT_NAME
from tests.service.devices import Device, Models, positive_inputs
from tests.service.live_manager import Manager
from tests.service.procs import AGENT, AgentProcess
from tests.service.waiting import wait_for


def _unix_get(path: Path, target: str) -> tuple[int, bytes]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _expected(model: Path, x: np.ndarray) -> np.ndarray:
    from satchel.agent.runtimes import get_runtime

    loaded = get_runtime("onnxruntime").load(model)
    return np.asarray(loaded.run({loaded.inputs[0].name: x.astype(np.float32)})[OUTPUT_NAME])


def test_run_serves_on_tcp_and_the_socket_and_stops_cleanly_on_sigterm(
    device: Device, models: Models
) -> None:
    device.cli("install", str(device.bundle(models.good, "1.0.0", 10)))
    agent = AgentProcess(device.state_dir)
    try:
        x = positive_inputs(3, seed=5)
        got = agent.infer("vision", x)
        status, body = _unix_get(device.state_dir / "agent.sock", "/v2/models/vision")
    finally:
        code = agent.stop()

    np.testing.assert_allclose(got, _expected(models.good, x), rtol=1e-5, atol=1e-6)
    assert status == 200 and json.loads(body)["versions"] == ["1.0.0"]
    assert code == 0, agent.log
    assert "stopped" in agent.log and "Traceback" not in agent.log
    runs = json.loads((device.state_dir / "service-starts.json").read_text())["runs"]
    assert runs[-1]["clean"] is True


def test_a_release_the_cli_activates_is_served_within_seconds(
    device: Device, models: Models
) -> None:
    device.cli("install", str(device.bundle(models.good, "1.0.0", 10)))
    agent = AgentProcess(device.state_dir)
    try:
        device.cli("install", str(device.bundle(models.other, "2.0.0", 20)))
        wait_for(lambda: agent.serving_version("vision") == "2.0.0", 10, "hot swap")
        x = positive_inputs(2, seed=9)
        got = agent.infer("vision", x)
    finally:
        agent.stop()

    np.testing.assert_allclose(got, _expected(models.other, x), rtol=1e-5, atol=1e-6)
    queued = [e["kind"] for e in EventQueue(device.state_dir).pending()]
    assert queued.count("activated") == 2  # the technician's installs are reported too


def test_run_tells_systemd_it_is_ready_and_pings_the_watchdog(
    tmp_path: Path, device: Device
) -> None:
    address = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(address))
    listener.settimeout(30)
    agent = AgentProcess(device.state_dir, env={"NOTIFY_SOCKET": str(address),
                                                "WATCHDOG_USEC": "200000"})
    try:
        messages = [listener.recv(4096).decode() for _ in range(3)]
        agent.stop()
        messages.append(listener.recv(4096).decode())
    finally:
        agent.stop()
        listener.close()

    assert messages[0].startswith("READY=1")
    assert "WATCHDOG=1" in messages[1:3]
    assert "STOPPING=1" in messages[1:]


def test_run_on_a_device_that_is_not_set_up_fails_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(AGENT), "--state-dir", str(tmp_path / "nothing"), "run", "--listen",
         "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("SATCHEL_AGENT_")},
    )

    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and "satchel-agent" in done.stderr
    assert done.stderr.strip().count("\n") == 0


def test_a_bad_setting_in_the_environment_is_a_usage_error(device: Device) -> None:
    done = device.cli("run", check=False, SATCHEL_AGENT_POLL_S="soon")

    assert done.returncode == 2 and "SATCHEL_AGENT_POLL_S" in done.stderr


def test_sigint_stops_it_as_cleanly_as_sigterm(device: Device) -> None:
    agent = AgentProcess(device.state_dir)

    assert agent.stop(signal.SIGINT) == 0, agent.log


def test_status_says_probation_while_the_window_runs_then_active(
    device: Device, models: Models
) -> None:
    policy = HealthPolicy(probation_s=600.0, min_samples=5)
    device.cli("install", str(device.bundle(models.good, "1.0.0", 10, policy=policy)))
    state = DeviceState(device.state_dir)
    record = state.record("vision")
    assert record is not None

    shown = json.loads(device.cli("status", "--json").stdout)["channels"]["vision"]["state"]
    later = state.channel_state(record, utcnow() + timedelta(seconds=601))

    assert shown == STATE_PROBATION and later == "active"


def test_a_rolled_back_release_is_never_on_probation(device: Device, models: Models) -> None:
    policy = HealthPolicy(probation_s=600.0, min_samples=5)
    device.cli("install", str(device.bundle(models.good, "1.0.0", 10, policy=policy)))
    device.cli("install", str(device.bundle(models.other, "2.0.0", 20, policy=policy)))

    device.cli("rollback", "vision")

    status = json.loads(device.cli("status", "--json").stdout)["channels"]["vision"]
    assert status["active"]["version"] == "1.0.0" and status["state"] == "rolled-back"
    (rolled,) = [e for e in EventQueue(device.state_dir).pending() if e["kind"] == "rolled_back"]
    assert (rolled["version"], rolled["sequence"]) == ("2.0.0", 20)
    assert rolled["figures"]["to_version"] == "1.0.0"


def test_run_installs_from_a_stick_plugged_in_under_a_mount_root(
    tmp_path: Path, device: Device, models: Models
) -> None:
    from tests.service.sticks import make_stick

    media = tmp_path / "media"
    media.mkdir()
    agent = AgentProcess(device.state_dir, "--usb-root", str(media),
                         env={"SATCHEL_AGENT_USB_SCAN_INTERVAL_S": "0.1"})
    try:
        make_stick(media / "tech" / "STICK", device.keys,
                   [(device.bundle(models.good, "1.0.0", 10), "1.0.0", 10)])
        wait_for(lambda: agent.serving_version("vision") == "1.0.0", 20, "the stick's release")
        agent.wait_for_log("report .* written to", 10)
    finally:
        agent.stop()

    assert len(list((media / "tech" / "STICK" / "reports" / "dev-1").iterdir())) == 1
    assert agent.log.count("USB stick with plan plan-1 found") == 1  # once per plan


def test_enroll_refusals_are_one_line_with_exit_code_1(device: Device, manager: Manager) -> None:
    token = manager.enroll_token()
    device.cli("enroll", "--manager", manager.url, "--token", token)

    again = device.cli("enroll", "--manager", manager.url, "--token", token, "--force",
                       check=False)
    nowhere = device.cli("enroll", "--manager", "http://127.0.0.1:9", "--token", token,
                         "--force", check=False, SATCHEL_AGENT_RETRY_ATTEMPTS="1")
    bad_url = device.cli("enroll", "--manager", "ftp://x", "--token", token, "--force",
                         check=False)

    for done, words in ((again, "401"), (nowhere, "Connection refused")):
        assert done.returncode == 1, done.stderr
        assert done.stderr.startswith("error: ") and words in done.stderr
        assert done.stderr.count("\n") == 1
    assert bad_url.returncode == 2 and "http(s)://HOST" in bad_url.stderr
    assert "--token" in device.cli("enroll", "--help").stdout
