"""Delta bundles on the manager (services/deltas.py): stored linked to their full bundle, and
offered, on the fast and the full check-in path alike, only to devices that keep the base,
with the full bundle as the offer's fallback."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import pytest

from satchel.bundles.delta import make_delta_bundle
from tests.factory.bundles import build_test_bundle
from tests.manager.helpers import Fleet, SimDevice

SMOKE = {"smoke/inputs.npz": b"inputs " * 40, "smoke/reference.npz": b"reference " * 30}


def _model(seed: int, tuned: bool = False) -> bytes:
    data = bytearray(random.Random(seed).randbytes(60_000))
    if tuned:  # the last tenth retrained
        data[54_000:] = random.Random(seed + 100).randbytes(6_000)
    return bytes(data)


def _upload(fleet: Fleet, path: Path) -> object:
    return fleet.client.post("/api/v1/bundles", data=path.read_bytes(), headers=fleet.admin,
                             content_type="application/octet-stream")


@pytest.fixture
def pair(fleet: Fleet) -> dict[str, Path]:
    tmp = fleet.tmp
    old = build_test_bundle(tmp / "v1.satchel", keys=fleet.keys, version="1.0.0", sequence=1,
                            payloads={"model.onnx": _model(1), **SMOKE}).path
    full = build_test_bundle(tmp / "v2.satchel", keys=fleet.keys, version="2.0.0", sequence=2,
                             payloads={"model.onnx": _model(1, tuned=True), **SMOKE}).path
    delta = tmp / "v2.delta.satchel"
    make_delta_bundle(full, old, delta, [fleet.keys.signing])
    return {"old": old, "full": full, "delta": delta}


def _checkin(fleet: Fleet, device: SimDevice, accepts: bool = True) -> list[dict[str, Any]]:
    """The install offers of a check-in of `device`, an agent that patches (or an older one)."""
    body = {**device.body(), **({"accepts": ["delta"]} if accepts else {})}
    r = fleet.client.post(f"/api/v1/devices/{device.device_id}/checkin", json=body,
                          headers=device.headers)
    assert r.status_code == 200, r.json
    return list(r.json["install"])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_delta_before_its_full_bundle_is_refused_and_stores_nothing(
    fleet: Fleet, pair: dict[str, Path]
) -> None:
    r = _upload(fleet, pair["delta"])
    assert r.status_code == 409  # type: ignore[attr-defined]
    assert "add the full bundle first" in r.json["error"]["message"]  # type: ignore[attr-defined]
    store = fleet.app.extensions["satchel"].store.root
    assert [p for p in store.rglob("*.satchel")] == []


def test_a_delta_of_other_content_is_refused(fleet: Fleet, pair: dict[str, Path]) -> None:
    other = build_test_bundle(fleet.tmp / "other.satchel", keys=fleet.keys, version="2.0.0",
                              sequence=2, payloads={"model.onnx": _model(7), **SMOKE}).path
    assert _upload(fleet, other).status_code == 201  # type: ignore[attr-defined]
    r = _upload(fleet, pair["delta"])
    assert r.status_code == 409  # type: ignore[attr-defined]
    assert "does not carry the same files" in r.json["error"]["message"]  # type: ignore


def test_offers_name_the_delta_only_to_devices_keeping_its_base(
    fleet: Fleet, pair: dict[str, Path]
) -> None:
    for b in ("old", "full"):
        assert _upload(fleet, pair[b]).status_code == 201  # type: ignore[attr-defined]
    added = _upload(fleet, pair["delta"])
    assert added.status_code == 201  # type: ignore[attr-defined]
    assert added.json["delta_base"]["sequence"] == 1  # type: ignore[attr-defined]
    keeper, fresh = fleet.enroll("keeper"), fleet.enroll("fresh")
    keeper.run("vision", "1.0.0", 1)
    fleet.deploy("vision:2.0.0", devices=["keeper", "fresh"], waves=["100%"])

    older = _checkin(fleet, keeper, accepts=False)  # an agent from before delta bundles
    assert [o["bundle_sha256"] for o in older] == [_sha(pair["full"])]
    answers = [_checkin(fleet, keeper) for _ in range(3)]  # full path, then fast
    assert answers[0] == answers[1] == answers[2]
    (offer,) = answers[0]
    assert (offer["bundle_sha256"], offer["size"]) == (
        _sha(pair["delta"]), pair["delta"].stat().st_size)
    assert offer["fallback"]["bundle_sha256"] == _sha(pair["full"])
    (plain,) = _checkin(fleet, fresh)
    assert plain["bundle_sha256"] == _sha(pair["full"]) and "fallback" not in plain

    got = fleet.client.get(offer["url"], headers=keeper.headers)
    assert got.status_code == 200 and got.data == pair["delta"].read_bytes()


def _plan_deltas(fleet: Fleet) -> list[Any]:
    r = fleet.client.post("/api/v1/usb/plan", json={}, headers=fleet.admin)
    assert r.status_code == 200, r.json
    return [a.get("deltas", []) for a in r.json["assignments"]]


def test_a_usb_plan_lists_no_delta_while_a_device_on_it_last_reported_an_older_agent(
    fleet: Fleet, pair: dict[str, Path]
) -> None:
    """An agent from before delta bundles refuses a whole plan that lists one, so one such
    device on the stick takes the deltas off the whole plan; once it reports a current agent
    they are back."""
    for b in ("old", "full", "delta"):
        assert _upload(fleet, pair[b]).status_code == 201  # type: ignore[attr-defined]
    old, new = fleet.enroll("old-agent"), fleet.enroll("new-agent")  # both enroll as 0.1.0
    fleet.deploy("vision:2.0.0", devices=["old-agent", "new-agent"], waves=["100%"])
    assert _plan_deltas(fleet) == [[]]
    for device in (old, new):
        body = {**device.body(), "agent_version": "0.3.0"}
        r = fleet.client.post(f"/api/v1/devices/{device.device_id}/checkin", json=body,
                              headers=device.headers)
        assert r.status_code == 200, r.json
    (deltas,) = _plan_deltas(fleet)
    assert [d["bundle_sha256"] for d in deltas] == [_sha(pair["delta"])]
