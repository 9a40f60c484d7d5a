"""Hostile field captures on a USB stick (issue 18): the device's signed report lists each
capture it left beside it (`"samples": [{"file", "sha256", "size"}]`); whoever holds the
stick afterwards may swap a capture, put a link where one was, grow it past the manager's
bound, or hand over an `.npz` that unpickles. `satchel usb import` refuses each in one line
and stores nothing of it (a link refuses the whole stick, before anything is recorded)."""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from satchel.bundles import plan as stick
from satchel.bundles.captures import encode_capture
from satchel.bundles.keys import SigningKey
from satchel.manager.config import ManagerConfig
from tests.manager.admin_cli import Cli
from tests.manager.helpers import Fleet, SimDevice
from tests.reliability.dbstate import dump
from tests.reliability.figures import Recorder

AREA = "TUF attack, USB"


def _capture(n: int) -> bytes:
    return encode_capture({"input": np.full((1, 8), float(n), np.float32)}, {
        "channel": "vision", "version": "2.0.0", "sequence": 2, "active_version": "1.0.0",
        "active_sequence": 1, "reason": "nonfinite", "captured_at": "2026-12-01T07:00:00Z",
        "figures": {"nonfinite": True}})


def _register(fleet: Fleet, device_id: str) -> SimDevice:
    device = SimDevice(device_id, "edge-box", SigningKey.generate())
    r = fleet.client.post("/api/v1/devices", headers=fleet.admin, json={
        "device_id": device_id, "device_class": "edge-box",
        "public_key": device.key.public.to_pem().decode()})
    assert r.status_code == 201, r.json
    return device


def _sign_report(root: Path, device: SimDevice, listed: bytes) -> None:
    """The device's genuine signed report on the stick, listing `listed` as its capture."""
    sha = hashlib.sha256(listed).hexdigest()
    body = {**device.body(), "samples": [
        {"file": f"samples/{sha}.npz", "sha256": sha, "size": len(listed)}]}
    report = stick.Report(uuid.uuid4().hex, device.device_id,
                          datetime.now(timezone.utc).replace(microsecond=0), body)
    path = root / report.path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(stick.sign_report(report, device.key))


def _at(samples: Path, listed: bytes) -> Path:
    samples.mkdir(parents=True, exist_ok=True)
    return samples / f"{hashlib.sha256(listed).hexdigest()}.npz"


def _swapped(samples: Path, tmp_path: Path) -> bytes:
    listed = _capture(1)
    _at(samples, listed).write_bytes(_capture(666))  # another valid one, after signing
    return listed


def _link(samples: Path, tmp_path: Path) -> bytes:
    listed = _capture(1)
    secret = tmp_path / "secret.npz"
    secret.write_bytes(listed)
    _at(samples, listed).symlink_to(secret)
    return listed


def _oversize(samples: Path, tmp_path: Path) -> bytes:
    feed = np.random.default_rng(0).random((1, 300_000)).astype(np.float32)  # ~1.2 MB
    listed = encode_capture({"input": feed}, {
        "channel": "vision", "version": "2.0.0", "sequence": 2, "active_version": "1.0.0",
        "active_sequence": 1, "reason": "nonfinite", "captured_at": "2026-12-01T07:00:00Z",
        "figures": {}})
    _at(samples, listed).write_bytes(listed)
    return listed


def _pickled(samples: Path, tmp_path: Path) -> bytes:
    out = io.BytesIO()
    np.savez(out, input=np.array([{"__reduce__": "os.system"}], dtype=object))
    listed = out.getvalue()
    _at(samples, listed).write_bytes(listed)
    return listed


# (case, how it is planted (it returns what the signed report lists), the words of the
#  refusal, whether the whole stick is refused)
CASES: list[tuple[str, Callable[[Path, Path], bytes], str, bool]] = [
    ("capture swapped after the report was signed (sha256 mismatch)", _swapped,
     "sha256 differs from the signed report", False),
    ("a link in place of a capture", _link, "link", True),
    ("a capture over the manager's size bound", _oversize, "is not within 1..", False),
    ("a pickled .npz as a capture", _pickled, "bad capture", False),
]


@pytest.mark.parametrize("case,plant,refusal,whole", CASES, ids=[
    "swapped", "link", "oversize", "pickled"])
def test_hostile_capture_on_a_stick_is_refused_in_one_line_and_stores_nothing(
    fleet: Fleet, config: ManagerConfig, tmp_path: Path, measured: Recorder,
    case: str, plant: Callable[[Path, Path], bytes], refusal: str, whole: bool,
) -> None:
    device = _register(fleet, "site-1")
    root = tmp_path / "stick"
    listed = plant(root / "reports" / device.device_id / "samples", tmp_path)
    _sign_report(root, device, listed)
    before = dump(fleet.app)

    r = Cli(config).run("usb", "import", str(root))

    assert r.exit_code == 1
    message: Any = r.stderr.strip()
    assert message.startswith("error: ") and "\n" not in message, r.stderr
    assert refusal in message, message
    after = dump(fleet.app)
    assert after["samples"] == before["samples"] == []
    if whole:  # the stick is refused before any report is recorded
        assert after == before
    measured.row(AREA, f"manager `usb import`: {case}", 1,
                 "refused in one line" + (", stick refused, nothing recorded" if whole
                                          else ", no capture stored"))

