"""Delta bundles end to end: `satchel bundle build --delta-from` makes a fine-tuned release's
patch bundle beside the full one; the manager stores both, linked; over the LAN a device that
keeps the base release is offered the delta and one that does not gets the full bundle; a USB
stick carries both and its plan sends each device the right one."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from satchel.bundles.envelope import open_envelope
from satchel.bundles.plan import PLAN_FILE, Plan
from tests.e2e.commands import SATCHEL, run, wait_for
from tests.e2e.kit import DEVICE_CLASS, IN_DIM, OUT_DIM, Kit, positive
from tests.e2e.sites import ManagerProcess, Site
from tests.factory.delta import fine_tuned
from tests.factory.model_makers import INPUT_NAME, make_mlp_weights, onnx_mlp

HIDDEN = 4096  # w2 is a third of the weights: the patch is well under half the full bundle


@dataclass(frozen=True)
class Releases:
    base: Path  # kws 1.0.0, sequence 10
    full: Path  # kws 1.1.0, sequence 20, the last layer fine-tuned
    delta: Path  # its delta against 1.0.0
    base_sha: str
    full_sha: str
    delta_sha: str


def _build(kit: Kit, d: Path, model: Path, version: str, sequence: int,
           *extra: str | Path) -> Path:
    samples = d / "samples.npz"
    if not samples.exists():
        np.savez(samples, **{INPUT_NAME: positive(16, seed=0)})  # type: ignore[arg-type]
    out = d / f"kws-{version}.satchel"
    run(SATCHEL, "bundle", "build", "--name", "kws", "--version", version, "--model", model,
        "--samples", samples, "--sequence", str(sequence), "--device-class", DEVICE_CLASS,
        "--probation-s", "1", "--key", kit.keydir / "signing.key", "-o", out, *extra)
    return out


def _sha(added: str) -> str:
    return str(json.loads(added)["sha256"])


@pytest.fixture(scope="module")
def releases(kit: Kit, manager: ManagerProcess,
             tmp_path_factory: pytest.TempPathFactory) -> Releases:
    d = tmp_path_factory.mktemp("delta-kit")
    weights = make_mlp_weights(IN_DIM, HIDDEN, OUT_DIM, seed=5)
    base = _build(kit, d, onnx_mlp(weights, d / "base.onnx"), "1.0.0", 10)
    built = run(SATCHEL, "bundle", "build", "--name", "kws", "--version", "1.1.0", "--model",
                onnx_mlp(fine_tuned(weights), d / "tuned.onnx"), "--samples",
                d / "samples.npz", "--sequence", "20", "--device-class", DEVICE_CLASS,
                "--probation-s", "1", "--key", kit.keydir / "signing.key",
                "-o", d / "kws-1.1.0.satchel", "--delta-from", base, "--json")
    delta = Path(json.loads(built.stdout)["delta"]["output"])
    assert delta.name == "kws-1.1.0.delta.satchel"
    full = d / "kws-1.1.0.satchel"
    assert delta.stat().st_size < full.stat().st_size / 2
    shas = [_sha(manager.cli("bundle", "add", b, "--json").stdout)
            for b in (base, full, delta)]
    return Releases(base, full, delta, *shas)


def test_build_and_inspect_show_the_delta_and_the_manager_links_it(
    manager: ManagerProcess, releases: Releases
) -> None:
    shown = manager.cli("bundle", "inspect", releases.delta).stdout
    assert "delta against kws 1.0.0 (sequence 10)" in shown
    assert "patch (zstd-patch-from)" in shown
    listed = json.loads(manager.cli("bundle", "list", "--json").stdout)
    kws = [b for b in (listed["bundles"] if isinstance(listed, dict) else listed)
           if b["name"] == "kws"]
    assert {b["version"] for b in kws} == {"1.0.0", "1.1.0"}  # the delta is no release of its own
    again = manager.cli("bundle", "add", releases.delta, "--json")
    assert json.loads(again.stdout)["created"] is False
    assert json.loads(again.stdout)["delta_base"] == {"channel": "kws", "version": "1.0.0",
                                                     "sequence": 10}


def _downloaded(manager: ManagerProcess, device: str) -> list[str]:
    """The bundles of 1.1.0 the device downloaded, oldest first."""
    return [e.get("bundle_sha256") for e in reversed(manager.events(device))
            if e["kind"] == "downloaded" and e.get("version") == "1.1.0"]


def test_lan_device_with_the_base_gets_the_delta_one_without_gets_the_full_bundle(
    site: Site, manager: ManagerProcess, releases: Releases
) -> None:
    keeper = site.device("delta-keeper", manager)
    fresh = site.device("delta-fresh", manager)
    rotten = site.device("delta-rotten", manager)
    first = manager.deploy("kws:1.0.0", ["delta-keeper", "delta-rotten"], "100%")
    wait_for(lambda: manager.deployment(first)["state"] == "completed", 60,
             "the base release reaches the keepers")
    (model,) = (site.root / "delta-rotten").glob("channels/kws/releases/*/files/model.onnx")
    model.write_bytes(model.read_bytes()[:-1] + b"!")  # its base rots on disk

    update = manager.deploy("kws:1.1.0", ["delta-keeper", "delta-fresh", "delta-rotten"],
                            "100%")
    wait_for(lambda: manager.deployment(update)["state"] == "completed", 90,
             "the fine-tuned release reaches every device")

    for agent in (keeper, fresh, rotten):
        assert agent.serving_version("kws") == "1.1.0"
    assert _downloaded(manager, "delta-keeper") == [releases.delta_sha]
    assert _downloaded(manager, "delta-fresh") == [releases.full_sha]
    # offered the delta, whose base is damaged: the offer's full bundle, no failure reported
    assert _downloaded(manager, "delta-rotten") == [releases.full_sha]
    assert not [e for e in manager.events("delta-rotten") if e["kind"] == "install_refused"]
    assert ("whose file model.onnx on this device is damaged: install the full bundle: "
            "installing the full bundle offered with it") in rotten.log


def test_usb_stick_carries_both_and_each_device_installs_the_right_one(
    site: Site, manager: ManagerProcess, releases: Releases, kit: Kit
) -> None:
    states = {}
    for name in ("delta-usb-keeper", "delta-usb-fresh"):
        states[name] = site.init(name)
        manager.cli("device", "add", name, "--device-class", DEVICE_CLASS,
                    "--public-key", states[name] / "device.pub")
    site.agent_cli(states["delta-usb-keeper"], "install", releases.base)  # a technician's

    deployment = manager.deploy("kws:1.1.0", list(states), "100%")
    stick = site.root / "stick"
    manager.cli("usb", "export", stick, "--key", kit.keydir / "signing.key",
                "--deployment", str(deployment))
    assert (stick / "bundles" / f"{releases.full_sha}.satchel").is_file()
    assert (stick / "bundles" / f"{releases.delta_sha}.satchel").is_file()
    signed, _ = open_envelope((stick / PLAN_FILE).read_bytes(), "plan", 1 << 24)
    (assignment,) = Plan.from_signed(signed).assignments
    assert assignment.bundle_sha256 == releases.full_sha  # the fallback
    assert [(d.base_version, d.bundle_sha256) for d in assignment.deltas] == [
        ("1.0.0", releases.delta_sha)]

    for name, state in states.items():
        done = site.agent_cli(state, "usb", stick)
        assert "installed kws 1.1.0" in done.stdout, name
        status = json.loads(site.agent_cli(state, "status", "--json").stdout)
        assert status["channels"]["kws"]["active"] == {"version": "1.1.0", "sequence": 20}

    manager.cli("usb", "import", stick)
    assert _downloaded(manager, "delta-usb-keeper") == [releases.delta_sha]
    assert _downloaded(manager, "delta-usb-fresh") == [releases.full_sha]


def test_delta_from_another_channel_is_refused_before_anything_is_built(
    kit: Kit, tmp_path: Path
) -> None:
    out = tmp_path / "kws-9.satchel"
    refused = run(SATCHEL, "bundle", "build", "--name", "kws", "--version", "9.0.0", "--model",
                  kit.good, "--key", kit.keydir / "signing.key", "-o", out, "--delta-from",
                  kit.v1, check=False)
    assert refused.returncode == 1
    assert refused.stderr == "error: --delta-from is a bundle of channel vision, not kws\n"
    assert list(tmp_path.iterdir()) == []
