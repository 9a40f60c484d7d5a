"""`satchel --url URL usb import|samples list|samples export` against a real `satchel serve`:
the captures a USB-only device left on a stick reach the manager through its API, and the
remote listing and export are the local ones, byte for byte."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from satchel.bundles import plan as stick
from satchel.bundles.captures import capture_name, encode_capture
from satchel.bundles.keys import SigningKey
from tests.cli.remote_manager import RemoteManager


@pytest.fixture
def manager(tmp_path: Path, sqlite_template: Path, shared_keydir: Path) -> Iterator[RemoteManager]:
    m = RemoteManager(tmp_path, sqlite_template, shared_keydir / "root.json")
    yield m
    m.stop()


def _capture(n: int) -> bytes:
    return encode_capture({"input": np.full((1, 8), n, np.float32)}, {
        "channel": "detector", "version": "1.3.0", "sequence": 43, "active_version": "1.2.3",
        "active_sequence": 42, "reason": "nonfinite" if n % 2 else "disagreement",
        "captured_at": f"2026-12-01T07:00:0{n}Z", "figures": {"nonfinite": n % 2}})


def test_captures_on_a_stick_reach_a_remote_manager_and_export_alike(
    manager: RemoteManager, tmp_path: Path
) -> None:
    key = SigningKey.generate()
    manager.remote("device", "add", "site-1", "--device-class", "cam-v2",
                   "--public-key", key.public.to_pem().decode()).ok()
    files = {capture_name(d): d for d in (_capture(n) for n in range(3))}
    body = {"status": {"device_id": "site-1", "channels": {}}, "events": [],
            "samples": [{"file": f"samples/{n}", "sha256": n[:-4], "size": len(d)}
                        for n, d in files.items()]}
    report = stick.Report(uuid.uuid4().hex, "site-1",
                          datetime.now(timezone.utc).replace(microsecond=0), body)
    where = tmp_path / "stick" / report.path
    (where.parent / "samples").mkdir(parents=True)
    where.write_bytes(stick.sign_report(report, key))
    for name, data in files.items():
        (where.parent / "samples" / name).write_bytes(data)

    imported = manager.remote("usb", "import", tmp_path / "stick", "--json").json()
    assert imported["samples"] == 3 and imported["refused"] == []

    remote = manager.remote("samples", "list", "--json").json()
    assert remote == manager.local("samples", "list", "--json").json()
    assert sorted(s["sha256"] for s in remote["samples"]) == sorted(n[:-4] for n in files)
    assert {s["via"] for s in remote["samples"]} == {"usb"}

    manager.remote("samples", "export", "detector", "1.3.0", "-o", tmp_path / "r.npz").ok()
    manager.local("samples", "export", "detector", "1.3.0", "-o", tmp_path / "l.npz").ok()
    assert (tmp_path / "r.npz").read_bytes() == (tmp_path / "l.npz").read_bytes()
    assert (tmp_path / "r.json").read_text() == (tmp_path / "l.json").read_text()
    with np.load(tmp_path / "r.npz", allow_pickle=False) as npz:
        assert npz["input"].shape == (3, 1, 8)

    only = manager.remote("samples", "export", "detector", "1.3.0", "-o", tmp_path / "n.npz",
                          "--reason", "nonfinite", "--json").json()
    assert only["count"] == 1
    refused = manager.remote("samples", "export", "detector", "9.9", "-o", tmp_path / "x.npz")
    assert "no captures" in refused.refusal()
