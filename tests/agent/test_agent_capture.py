"""Field inputs kept while a release is judged: only when the bundle asks and the device
allows, bounded, private (0600), and shipped to the manager after a check-in."""

from __future__ import annotations

import hashlib
import http.server
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from satchel.agent.captures import keep_capture, pending_captures
from satchel.agent.config import AgentConfig
from satchel.agent.sync.client import ManagerClient
from satchel.agent.sync.samples import ship_captures
from satchel.bundles.activation import CapturePolicy
from satchel.bundles.captures import decode_capture
from satchel.bundles.events import SHADOW_FAILED
from tests.agent.staged import Rig, StagedModels, field_inputs, make_models, rig, shadow
from tests.factory.keys import Keyring
from tests.server.servers import wait_for


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> StagedModels:
    return make_models(tmp_path_factory.mktemp("capture-models"))


def _judge_other(r: Rig, models: StagedModels, capture: str | None,
                 until: Callable[[], bool]) -> None:
    """Install `other` (it disagrees with `good` on field inputs) to be judged in shadow,
    and send field requests until `until()` (copies the shadow drops when behind are
    made up for)."""
    r.install(models.good, version="1.0.0", sequence=1)
    server = r.start()
    r.install(models.other, version="2.0.0", sequence=2,
              activation=shadow(50, agreement=0.0 if capture else 0.99, capture=capture))
    wait_for(lambda: server.registry.candidate("vision") is not None)
    for x in field_inputs(1000):
        if until():
            return
        r.infer(x)
    wait_for(until)


def _compared(r: Rig) -> int:
    candidate = r.status()["candidate"]
    return 50 if candidate is None else int((candidate["shadow"] or {}).get("compared", 0))


def test_disagreeing_field_inputs_are_kept_private_with_their_meta(
    tmp_path: Path, keys: Keyring, models: StagedModels
) -> None:
    with rig(tmp_path, keys, models) as r:
        _judge_other(r, models, "disagreement,nonfinite",
                     lambda: len(pending_captures(r.state_dir)) >= 5)
        kept = pending_captures(r.state_dir)
        directory = r.state_dir / "captures"
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        for c in kept:
            assert stat.S_IMODE(c.path.stat().st_mode) == 0o600
        capture = decode_capture(kept[0].read())
        assert capture.meta["reason"] == "disagreement"
        assert capture.meta["version"] == "2.0.0" and capture.meta["active_version"] == "1.0.0"
        assert capture.inputs["input"].shape == (1, 8)


def test_nothing_is_kept_when_the_bundle_does_not_ask_or_the_device_forbids(
    tmp_path: Path, keys: Keyring, models: StagedModels
) -> None:
    with rig(tmp_path / "a", keys, models) as r:
        _judge_other(r, models, None, lambda: bool(r.events.of_kind(SHADOW_FAILED)))
        assert pending_captures(r.state_dir) == []
    forbid = AgentConfig(lock_wait_s=10.0, activation_capture="forbid")
    with rig(tmp_path / "b", keys, models, forbid) as r:
        _judge_other(r, models, "disagreement", lambda: _compared(r) >= 20)
        assert pending_captures(r.state_dir) == []


def _meta(i: int) -> dict[str, object]:
    return {"channel": "vision", "version": "2.0.0", "sequence": 2, "active_version": "1.0.0",
            "active_sequence": 1, "reason": "disagreement",
            "captured_at": f"2026-01-01T00:00:{i:02d}Z", "figures": {}}


def test_kept_inputs_are_bounded_oldest_dropped_first(tmp_path: Path) -> None:
    policy = CapturePolicy(("disagreement",), None, max_samples=3, max_bytes=10**6)
    for i in range(6):
        keep_capture(tmp_path, policy, AgentConfig(), {"input": np.full((1, 4), i, np.float32)},
                     _meta(i))
    kept = pending_captures(tmp_path)
    assert len(kept) == 3
    assert sorted(int(decode_capture(c.read()).inputs["input"][0, 0]) for c in kept) == [3, 4, 5]
    device_cap = AgentConfig(capture_max_samples=1)
    keep_capture(tmp_path, policy, device_cap, {"input": np.zeros((1, 4), np.float32)},
                 _meta(9))
    assert len(pending_captures(tmp_path)) == 1  # the smaller cap wins


class _Samples(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, str, bytes]] = []
    status = 201

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, self.headers.get("X-Satchel-Sample-SHA256", ""),
                              body))
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def manager() -> Iterator[http.server.HTTPServer]:
    _Samples.received = []
    server = http.server.HTTPServer(("127.0.0.1", 0), _Samples)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_kept_inputs_are_shipped_after_a_checkin_and_removed_once_stored(
    tmp_path: Path, manager: http.server.HTTPServer
) -> None:
    policy = CapturePolicy(("disagreement",), None, max_samples=10, max_bytes=10**6)
    for i in range(3):
        keep_capture(tmp_path, policy, AgentConfig(), {"input": np.full((1, 4), i, np.float32)},
                     _meta(i))
    url = f"http://127.0.0.1:{manager.server_address[1]}"
    client = ManagerClient(url, "device-token")
    _Samples.status = 503
    assert ship_captures(client, tmp_path, "dev-1", AgentConfig()) == (0, 0)
    assert len(pending_captures(tmp_path)) == 3  # kept for the next round
    _Samples.status = 201
    assert ship_captures(client, tmp_path, "dev-1", AgentConfig()) == (3, 0)
    assert pending_captures(tmp_path) == []
    path, digest, body = _Samples.received[-1]
    assert path == "/api/v1/devices/dev-1/samples"
    assert hashlib.sha256(body).hexdigest() == digest


def test_inputs_the_manager_will_never_take_are_dropped(
    tmp_path: Path, manager: http.server.HTTPServer
) -> None:
    policy = CapturePolicy(("disagreement",), None, max_samples=10, max_bytes=10**6)
    keep_capture(tmp_path, policy, AgentConfig(), {"input": np.zeros((1, 4), np.float32)},
                 _meta(0))
    client = ManagerClient(f"http://127.0.0.1:{manager.server_address[1]}", "t")
    _Samples.status = 413
    assert ship_captures(client, tmp_path, "dev-1", AgentConfig()) == (0, 1)
    assert pending_captures(tmp_path) == []


def test_kept_inputs_travel_beside_the_signed_usb_report_and_leave_the_device(
    tmp_path: Path, keys: Keyring
) -> None:
    from satchel.agent.event_queue import EventQueue
    from satchel.agent.provision import init_device
    from satchel.agent.sync.report import stored_totals
    from satchel.agent.sync.usb import write_report
    from satchel.bundles.plan import read_report_unverified
    from satchel.bundles.stickfs import StickDir

    state_dir = tmp_path / "state"
    init_device(state_dir, keys.root_json, "dev-1", "edge-box")
    policy = CapturePolicy(("disagreement",), None, max_samples=10, max_bytes=10**6)
    for i in range(2):
        keep_capture(state_dir, policy, AgentConfig(),
                     {"input": np.full((1, 4), i, np.float32)}, _meta(i))
    digests = sorted(c.sha256 for c in pending_captures(state_dir))
    stick = tmp_path / "stick"
    stick.mkdir()
    with StickDir(stick) as disk:
        path = write_report(state_dir, disk, None, EventQueue(state_dir),
                            stored_totals(state_dir))
    report = read_report_unverified(path.read_bytes())
    samples = report.checkin["samples"]
    assert sorted(s["sha256"] for s in samples) == digests
    for s in samples:
        on_stick = stick / "reports" / "dev-1" / s["file"]
        assert s["file"] == f"samples/{s['sha256']}.npz"
        data = on_stick.read_bytes()
        assert len(data) == s["size"] and hashlib.sha256(data).hexdigest() == s["sha256"]
    assert pending_captures(state_dir) == []


def test_usb_report_refuses_a_link_where_the_samples_go(tmp_path: Path, keys: Keyring) -> None:
    from satchel.agent.event_queue import EventQueue
    from satchel.agent.provision import init_device
    from satchel.agent.sync.report import stored_totals
    from satchel.agent.sync.usb import write_report
    from satchel.bundles.stickfs import StickDir, StickLinkError

    state_dir = tmp_path / "state"
    init_device(state_dir, keys.root_json, "dev-1", "edge-box")
    policy = CapturePolicy(("disagreement",), None, max_samples=10, max_bytes=10**6)
    keep_capture(state_dir, policy, AgentConfig(), {"input": np.zeros((1, 4), np.float32)},
                 _meta(0))
    stick = tmp_path / "stick"
    (stick / "reports" / "dev-1").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (stick / "reports" / "dev-1" / "samples").symlink_to(elsewhere)
    with StickDir(stick) as disk, pytest.raises(StickLinkError):
        write_report(state_dir, disk, None, EventQueue(state_dir), stored_totals(state_dir))
    assert list(elsewhere.iterdir()) == []
    assert len(pending_captures(state_dir)) == 1  # kept for a stick that can take it


def test_nan_answer_during_the_ramp_is_kept_as_a_nonfinite_example(
    tmp_path: Path, keys: Keyring, models: StagedModels
) -> None:
    from satchel.bundles.activation import build_policy
    from satchel.bundles.events import RAMP_FAILED
    from tests.server.devices import negative_inputs

    policy = build_policy(ramp="50,100", ramp_step_requests=1000, capture="nonfinite")
    with rig(tmp_path, keys, models) as r:
        r.install(models.good, version="1.0.0", sequence=1)
        server = r.start()
        r.install(models.nan, version="2.0.0", sequence=2, activation=policy)
        wait_for(lambda: server.registry.candidate("vision") is not None)
        for i in range(10):
            r.infer(negative_inputs(1, seed=i))
        wait_for(lambda: bool(r.events.of_kind(RAMP_FAILED)))
        wait_for(lambda: len(pending_captures(r.state_dir)) == 1)
        capture = decode_capture(pending_captures(r.state_dir)[0].read())
        assert capture.meta["reason"] == "nonfinite"
        assert capture.meta["active_version"] == "1.0.0"
        assert capture.inputs["input"][0, 0] < 0


def test_low_margin_is_judged_on_class_scores_only() -> None:
    from satchel.agent.staging.stager import low_margin

    close = {"p": np.array([[0.48, 0.47, 0.05]], np.float32)}
    clear = {"p": np.array([[0.9, 0.05, 0.05]], np.float32)}
    assert low_margin(close, {"p": "classes"}, 0.1)
    assert not low_margin(clear, {"p": "classes"}, 0.1)
    assert not low_margin(close, {"p": "tensor"}, 0.1)
