"""Hard examples brought home: a device uploads the captures it kept (once by sha256, its own
only, bounded), a USB stick carries them too, and the admin exports one channel and release
as the `.npz` that `satchel bundle build --samples` builds a bundle from."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
from click.testing import CliRunner

from satchel.bundles import plan as stick
from satchel.bundles.captures import capture_name, encode_capture
from satchel.manager.cli import main
from satchel.manager.config import ManagerConfig
from satchel.manager.models import Sample
from tests.factory.keys import Keyring
from tests.factory.model_makers import make_mlp_weights, onnx_mlp
from tests.manager.admin_cli import Cli
from tests.manager.helpers import Fleet, SimDevice

IN_DIM = 8
START = datetime(2026, 12, 1, 7, 0, tzinfo=timezone.utc)


def capture(n: int, reason: str = "disagreement", version: str = "1.1", width: int = IN_DIM,
            channel: str = "kws") -> bytes:
    """A capture as an agent writes it: one feed of the model's input, and its meta."""
    feed = np.full((1, width), float(n), dtype=np.float32)
    meta: dict[str, Any] = {
        "channel": channel, "version": version, "sequence": 2, "active_version": "1.0",
        "active_sequence": 1, "reason": reason,
        "captured_at": (START + timedelta(seconds=n)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "figures": {"top1_active": 1, "top1_candidate": n % 10},
    }
    return encode_capture({"input": feed}, meta)


def upload(fleet: Fleet, device: SimDevice, data: bytes, headers: dict[str, str] | None = None,
           sha: str | None = None) -> Any:
    return fleet.client.post(
        f"/api/v1/devices/{device.device_id}/samples", data=data,
        headers={**(device.headers if headers is None else headers),
                 "X-Satchel-Sample-SHA256": sha or hashlib.sha256(data).hexdigest()},
        content_type="application/octet-stream",
    )


def stored(fleet: Fleet) -> list[tuple[str, str]]:
    db = fleet.app.extensions["satchel"].db
    return db.run(lambda s: sorted((x.device_id, x.sha256) for x in s.query(Sample)))


def test_upload_is_stored_once_by_sha256(fleet: Fleet) -> None:
    device = fleet.enroll("cam-1")
    data = capture(1)
    first = upload(fleet, device, data)
    assert first.status_code == 201, first.json
    assert first.json["sha256"] == capture_name(data)[:-4]
    again = upload(fleet, device, data)
    assert again.status_code == 200 and again.json["stored"] is False
    assert stored(fleet) == [("cam-1", hashlib.sha256(data).hexdigest())]
    listed = fleet.client.get("/api/v1/samples?channel=kws", headers=fleet.admin).json["samples"]
    assert [(s["device_id"], s["reason"], s["version"], s["via"]) for s in listed] == [
        ("cam-1", "disagreement", "1.1", "lan")
    ]


def test_hostile_uploads_are_refused_and_store_nothing(fleet: Fleet) -> None:
    device = fleet.enroll("cam-1")
    bad = upload(fleet, device, b"PK\x03\x04 not really a zip")
    assert bad.status_code == 400 and "\n" not in bad.json["error"]["message"]
    lying = upload(fleet, device, capture(1), sha="0" * 64)
    assert lying.status_code == 400 and "sha256" in lying.json["error"]["message"]
    limit = fleet.app.extensions["satchel"].config.max_sample_bytes
    huge = upload(fleet, device, b"x" * (limit + 1))
    assert huge.status_code == 413
    assert stored(fleet) == []


def test_a_device_may_store_only_its_own(fleet: Fleet) -> None:
    mine, other = fleet.enroll("cam-1"), fleet.enroll("cam-2")
    data = capture(1)
    nobody = fleet.client.post(f"/api/v1/devices/{mine.device_id}/samples", data=data,
                               content_type="application/octet-stream")
    assert nobody.status_code == 401
    foreign = upload(fleet, mine, data, headers=other.headers)
    assert foreign.status_code == 403
    assert stored(fleet) == []
    listing = fleet.client.get("/api/v1/samples", headers=mine.headers)
    assert listing.status_code == 403  # listing and exporting are the admin's


def test_per_device_cap_drops_the_oldest(app: Any, fleet: Fleet) -> None:
    app.extensions["satchel"].config = _with(app, max_samples_per_device=3)
    device = fleet.enroll("cam-1")
    uploads = [capture(n) for n in range(5)]
    for data in uploads:
        assert upload(fleet, device, data).status_code == 201
    kept = {sha for _, sha in stored(fleet)}
    assert kept == {hashlib.sha256(d).hexdigest() for d in uploads[2:]}


def _with(app: Any, **changes: Any) -> ManagerConfig:
    from satchel.manager.config import replace

    return replace(app.extensions["satchel"].config, **changes)


def test_export_builds_a_bundle_with_samples(
    fleet: Fleet, config: ManagerConfig, keys: Keyring, tmp_path: Path
) -> None:
    device, other = fleet.enroll("cam-1"), fleet.enroll("cam-2")
    for n in range(3):
        assert upload(fleet, device, capture(n)).status_code == 201
    assert upload(fleet, other, capture(7, reason="nonfinite")).status_code == 201
    assert upload(fleet, other, capture(9, version="1.2")).status_code == 201  # another release
    cli = Cli(config)
    out = tmp_path / "field.npz"
    cli.ok("samples", "export", "kws", "1.1", "-o", str(out))
    with np.load(out, allow_pickle=False) as npz:
        assert npz.files == ["input"]
        assert npz["input"].shape == (4, 1, IN_DIM)  # four feeds of the model's [batch, 8]
        assert [row[0][0] for row in npz["input"]] == [0.0, 1.0, 2.0, 7.0]
    meta = json.loads(out.with_suffix(".json").read_text())
    assert [(r["device_id"], r["reason"]) for r in meta["rows"]] == [
        ("cam-1", "disagreement")] * 3 + [("cam-2", "nonfinite")]
    assert meta["rows"][0]["figures"] == {"top1_active": 1, "top1_candidate": 0}

    only = tmp_path / "nonfinite.npz"
    cli.ok("samples", "export", "kws", "1.1", "-o", str(only), "--reason", "nonfinite")
    with np.load(only, allow_pickle=False) as npz:
        assert npz["input"].shape == (1, 1, IN_DIM)

    model = onnx_mlp(make_mlp_weights(in_dim=IN_DIM, seed=0), tmp_path / "model.onnx")
    bundle = tmp_path / "kws-1.2.satchel"
    r = CliRunner().invoke(
        main,
        ["bundle", "build", "--name", "kws", "--version", "1.2", "--sequence", "3",
         "--model", str(model), "--samples", str(out), "--key", str(keys.directory / "signing.key"),
         "-o", str(bundle), "--json"],
    )
    assert r.exit_code == 0, r.output
    assert bundle.exists()
    inspected = CliRunner().invoke(main, ["bundle", "inspect", str(bundle), "--json"])
    assert inspected.exit_code == 0, inspected.output
    assert json.loads(inspected.stdout)["manifest"]["build"]["agreement"]["samples"] == 4


def test_export_of_differing_shapes_is_refused_naming_them(
    fleet: Fleet, config: ManagerConfig, tmp_path: Path
) -> None:
    device = fleet.enroll("cam-1")
    upload(fleet, device, capture(1))
    upload(fleet, device, capture(2, width=IN_DIM + 1))
    line = Cli(config).refused("samples", "export", "kws", "1.1", "-o", str(tmp_path / "x.npz"))
    assert f"input[1, {IN_DIM}]" in line and f"input[1, {IN_DIM + 1}]" in line
    assert not (tmp_path / "x.npz").exists()


def test_export_of_nothing_is_refused(config: ManagerConfig, fleet: Fleet, tmp_path: Path) -> None:
    line = Cli(config).refused("samples", "export", "kws", "9.9", "-o", str(tmp_path / "x.npz"))
    assert "no captures" in line


def test_samples_list_json(fleet: Fleet, config: ManagerConfig) -> None:
    device = fleet.enroll("cam-1")
    upload(fleet, device, capture(1))
    out = json.loads(Cli(config).ok("samples", "list", "--json"))
    assert [s["device_id"] for s in out["samples"]] == ["cam-1"]


# --- USB ------------------------------------------------------------------------------------


def _register(fleet: Fleet, device_id: str) -> SimDevice:
    from satchel.bundles.keys import SigningKey

    device = SimDevice(device_id, "edge-box", SigningKey.generate())
    r = fleet.client.post("/api/v1/devices", headers=fleet.admin, json={
        "device_id": device_id, "device_class": "edge-box",
        "public_key": device.key.public.to_pem().decode()})
    assert r.status_code == 201
    return device


def _report_with_samples(root: Path, device: SimDevice, files: dict[str, bytes],
                         listed: list[dict[str, Any]] | None = None) -> None:
    """What the agent leaves on a stick: its signed report listing the captures, and them."""
    entries = listed if listed is not None else [
        {"file": f"samples/{name}", "sha256": name[:-4], "size": len(data)}
        for name, data in files.items()
    ]
    body = {**device.body(), "samples": entries}
    report = stick.Report(uuid.uuid4().hex, device.device_id,
                          datetime.now(timezone.utc).replace(microsecond=0), body)
    target = root / report.path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(stick.sign_report(report, device.key))
    (target.parent / "samples").mkdir(exist_ok=True)
    for name, data in files.items():
        (target.parent / "samples" / name).write_bytes(data)


def test_usb_import_stores_the_listed_captures_once(
    fleet: Fleet, config: ManagerConfig, tmp_path: Path
) -> None:
    device = _register(fleet, "site-1")
    files = {capture_name(d): d for d in (capture(1), capture(2, reason="low_margin"))}
    _report_with_samples(tmp_path / "stick", device, files)
    cli = Cli(config)
    first = json.loads(cli.ok("usb", "import", str(tmp_path / "stick"), "--json"))
    assert first["samples"] == 2 and first["refused"] == []
    again = json.loads(cli.ok("usb", "import", str(tmp_path / "stick"), "--json"))
    assert again["samples"] == 0
    assert {sha for _, sha in stored(fleet)} == {n[:-4] for n in files}
    listed = json.loads(cli.ok("samples", "list", "--json"))["samples"]
    assert {s["via"] for s in listed} == {"usb"}


def test_usb_capture_that_differs_from_its_signed_listing_is_refused(
    fleet: Fleet, config: ManagerConfig, tmp_path: Path
) -> None:
    device = _register(fleet, "site-1")
    good, evil = capture(1), capture(2)
    name = capture_name(good)
    _report_with_samples(tmp_path / "stick", device, {name: evil},
                         [{"file": f"samples/{name}", "sha256": name[:-4], "size": len(evil)}])
    r = Cli(config).run("usb", "import", str(tmp_path / "stick"), "--json")
    assert r.exit_code == 1
    assert stored(fleet) == []


def test_usb_capture_that_is_a_link_refuses_the_stick(
    fleet: Fleet, config: ManagerConfig, tmp_path: Path
) -> None:
    device = _register(fleet, "site-1")
    data = capture(1)
    secret = tmp_path / "secret.npz"
    secret.write_bytes(data)
    name = capture_name(data)
    _report_with_samples(tmp_path / "stick", device, {},
                         [{"file": f"samples/{name}", "sha256": name[:-4], "size": len(data)}])
    (tmp_path / "stick" / "reports" / "site-1" / "samples" / name).symlink_to(secret)
    r = Cli(config).run("usb", "import", str(tmp_path / "stick"))
    assert r.exit_code == 1
    assert stored(fleet) == []

