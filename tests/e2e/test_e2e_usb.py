"""Sneakernet end to end: `satchel usb export` -> `satchel-agent usb` on a device that only
the manager's register knows (never on the LAN) -> `satchel usb import`."""

from __future__ import annotations

import json

from satchel.bundles.envelope import open_envelope
from satchel.bundles.keys import SigningKey
from satchel.bundles.plan import PLAN_FILE, Plan, sign_plan
from tests.e2e.kit import DEVICE_CLASS, Kit
from tests.e2e.sites import ManagerProcess, Site


def test_a_usb_only_device_gets_its_release_and_shows_up_on_the_manager(
    site: Site, manager: ManagerProcess, kit: Kit
) -> None:
    state = site.init("field-1")
    manager.cli("device", "add", "field-1", "--device-class", DEVICE_CLASS,
                "--public-key", state / "device.pub")
    manager.add("v1")
    deployment = manager.deploy("vision:1.0.0", ["field-1"], "100%")
    stick = site.root / "stick"
    manager.cli("usb", "export", stick, "--key", kit.keydir / "signing.key",
                "--deployment", str(deployment))

    done = site.agent_cli(state, "usb", stick)

    assert "installed vision 1.0.0" in done.stdout
    status = json.loads(site.agent_cli(state, "status", "--json").stdout)
    assert status["channels"]["vision"]["active"] == {"version": "1.0.0", "sequence": 100}

    first = manager.cli("usb", "import", stick)
    assert first.stdout.startswith("1 report(s) imported")
    shown = manager.device("field-1")
    assert shown["channels"]["vision"]["active"]["version"] == "1.0.0"
    assert shown["last_via"] == "usb"
    events = manager.events("field-1")
    kinds = sorted(e["kind"] for e in events)
    assert kinds == ["activated", "downloaded", "smoke_test", "verified"]
    smoke = next(e for e in events if e["kind"] == "smoke_test")
    assert smoke["passed"] is True and smoke["figures"]["p95_ms"] is not None

    again = manager.cli("usb", "import", stick)
    assert "0 report(s) imported, 1 already imported" in again.stdout
    assert len(manager.events("field-1")) == len(events)


def test_a_plan_signed_by_an_untrusted_key_is_refused_on_the_device(
    site: Site, manager: ManagerProcess, kit: Kit
) -> None:
    state = site.init("field-2")
    manager.cli("device", "add", "field-2", "--device-class", DEVICE_CLASS,
                "--public-key", state / "device.pub")
    manager.add("v1")
    deployment = manager.deploy("vision:1.0.0", ["field-2"], "100%")
    stick = site.root / "stick"
    manager.cli("usb", "export", stick, "--key", kit.keydir / "signing.key",
                "--deployment", str(deployment))
    signed, _ = open_envelope((stick / PLAN_FILE).read_bytes(), "plan", 1 << 24)
    forged = sign_plan(Plan.from_signed(signed), [SigningKey.generate()])
    (stick / PLAN_FILE).write_bytes(forged)  # same plan, someone else's signature

    refused = site.agent_cli(state, "usb", stick, check=False)

    assert refused.returncode == 1
    assert refused.stderr.startswith("error: USB plan on ") and "refused" in refused.stderr
    assert refused.stderr.count("\n") == 1
    status = json.loads(site.agent_cli(state, "status", "--json").stdout)
    assert status["channels"] == {}
    assert not (stick / "reports" / "field-2").exists()
