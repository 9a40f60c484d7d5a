"""Field-aware activation on a device the manager reaches only by USB stick (issue 18): the
stick brings a release with a shadow stage; the device's own `satchel-agent run` serves its
local clients, judges the release on their requests and refuses it (it gives NaN on field
inputs it never met in the lab) without answering one of them; the next `satchel-agent usb`
writes the field inputs it tripped on beside the signed report; `satchel usb import` stores
them and `satchel samples export` hands them to the admin."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from satchel.bundles.plan import read_report_unverified
from tests.e2e.commands import SATCHEL, run, wait_for
from tests.e2e.kit import DEVICE_CLASS, Kit, negative, positive
from tests.e2e.sites import ManagerProcess, Site

CHANNEL = "usbstaged"


def _build(kit: Kit, model: Path, samples: Path, version: str, sequence: int,
           *staged: str) -> Path:
    out = kit.root / f"{CHANNEL}-{version}.satchel"
    run(SATCHEL, "bundle", "build", "--name", CHANNEL, "--version", version, "--model", model,
        "--samples", samples, "--sequence", str(sequence), "--device-class", DEVICE_CLASS,
        "--probation-s", "1", "--min-samples", "5", "--key", kit.keydir / "signing.key",
        "-o", out, *staged)
    return out


def _status(site: Site, state: Path) -> dict[str, Any]:
    channels: dict[str, Any] = json.loads(site.agent_cli(state, "status", "--json").stdout)[
        "channels"]
    return dict(channels[CHANNEL])


def test_usb_only_device_refuses_a_bad_release_in_shadow_and_its_captures_come_home(
    site: Site, manager: ManagerProcess, kit: Kit, tmp_path: Path
) -> None:
    device_id = "usb-staged-1"
    state = site.init(device_id)
    manager.cli("device", "add", device_id, "--device-class", DEVICE_CLASS,
                "--public-key", state / "device.pub")
    lab = tmp_path / "lab.npz"
    np.savez(lab, input=positive(16, seed=0))
    # 1.0.0 is the NaN model's healthy twin (same weights): installed by hand on the device
    site.agent_cli(state, "install", _build(kit, kit.newer, lab, "1.0.0", 1))
    bad = _build(kit, kit.nan, lab, "2.0.0", 2, "--shadow-requests", "20",
                 "--shadow-fraction", "1", "--capture", "disagreement,nonfinite")
    manager.cli("bundle", "add", bad)
    deployment = manager.deploy(f"{CHANNEL}:2.0.0", [device_id], "100%")
    stick = tmp_path / "stick"
    manager.cli("usb", "export", stick, "--key", kit.keydir / "signing.key",
                "--deployment", str(deployment))

    site.agent_cli(state, "usb", stick)  # the stick's release: judged in shadow first
    assert _status(site, state)["candidate"]["stage"] == "shadow"
    agent = site.start(state)
    answered: list[str] = []

    def refused() -> bool:
        for x in np.concatenate([positive(2, seed=len(answered)),
                                 negative(2, seed=len(answered) + 1)]):
            r = agent.http.post(f"{agent.url}/v2/models/{CHANNEL}/infer", timeout=10, json={
                "inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32",
                            "data": x.tolist()}]})
            assert r.status_code == 200, r.text
            answered.append(str(r.json()["model_version"]))
        return _status(site, state).get("candidate") is None

    wait_for(refused, 30, "2.0.0 is refused in shadow on the device")
    assert set(answered) == {"1.0.0"}  # no local client ever got an answer from 2.0.0
    assert agent.stop() == 0
    site.agents.remove(agent)
    captured = sorted(p.name for p in (state / "captures").iterdir())
    assert captured, "the field inputs 2.0.0 tripped on are kept on the device"

    again = site.agent_cli(state, "usb", stick)  # the report, with the captures beside it
    assert f"refused here earlier: {CHANNEL} 2.0.0" in again.stdout  # not tried again
    reports = stick / "reports" / device_id
    assert sorted(p.name for p in (reports / "samples").iterdir()) == captured
    assert list((state / "captures").iterdir()) == []  # dropped once the report is there
    listed: list[dict[str, Any]] = []
    for report in (p for p in reports.iterdir() if p.is_file()):
        listed += read_report_unverified(report.read_bytes()).checkin.get("samples") or []
    assert sorted(Path(s["file"]).name for s in listed) == captured
    for s in listed:
        assert (reports / s["file"]).stat().st_size == s["size"]

    imported = manager.cli("usb", "import", stick)
    assert f"{len(captured)} sample(s) stored" in imported.stdout
    events = manager.events(device_id)
    assert [e["version"] for e in events if e["kind"] == "shadow_failed"] == ["2.0.0"]
    assert "2.0.0" not in {e["version"] for e in events if e["kind"] == "activated"}
    samples = manager.api(f"/api/v1/samples?channel={CHANNEL}")["samples"]
    assert {(s["device_id"], s["version"]) for s in samples} == {(device_id, "2.0.0")}
    field = tmp_path / "field.npz"
    manager.cli("samples", "export", CHANNEL, "2.0.0", "-o", field)
    with np.load(field, allow_pickle=False) as npz:
        feeds = npz["input"]
    assert feeds.shape == (len(captured), 1, 8) and np.all(feeds[:, 0, 0] < 0)
