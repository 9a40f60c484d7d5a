"""Encrypted bundles end to end (issue 19): `satchel bundle build --encrypt-to` a device's own
key and the manager's; the manager verifies and serves it without being able to read it
(beyond its own recipient key) and an enrolled agent installs it over the LAN; on a USB stick
the right device installs it and the wrong one refuses it in one line, unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.e2e.commands import SATCHEL, run, wait_for
from tests.e2e.kit import DEVICE_CLASS, Kit, expected_outputs, positive
from tests.e2e.sites import ManagerProcess, Site


def build_encrypted(kit: Kit, out: Path, version: str, sequence: int,
                    recipients: list[str], manager: ManagerProcess | None = None) -> Path:
    """`satchel bundle build --encrypt-to ...` (on the manager's data dir, when given, so
    that `device:ID` recipients resolve)."""
    args: list[str | Path] = []
    for r in recipients:
        args += ["--encrypt-to", r]
    samples = kit.root / "samples.npz"
    where: list[str | Path] = ["--data-dir", manager.data_dir] if manager else []
    done = run(SATCHEL, *where, "bundle", "build", "--name", "secret", "--version", version,
               "--model", kit.good, "--samples", samples, "--sequence", str(sequence),
               "--device-class", DEVICE_CLASS, "--probation-s", "1", "--min-samples", "5",
               "--key", kit.keydir / "signing.key", *args, "-o", out)
    assert "encrypted (AES-256-GCM)" in done.stdout
    return out


def manager_recipient(site: Site) -> Path:
    run(SATCHEL, "keys", "recipient", "init", "manager", "-o", site.root / "manager-keys")
    return site.root / "manager-keys" / "manager.pub"


def test_lan_agent_installs_a_bundle_encrypted_for_it_and_the_admin_verifies_it_keyless(
    site: Site, manager: ManagerProcess, kit: Kit
) -> None:
    state = site.init("enc-lan-1")
    site.enroll(state, manager)  # the Ed25519 key it enrolls with is its recipient too
    bundle = build_encrypted(kit, site.root / "secret-1.satchel", "1.0.0", 1000,
                             ["device:enc-lan-1", str(manager_recipient(site))], manager)
    assert kit.good.read_bytes()[:4096] not in bundle.read_bytes()
    verified = run(SATCHEL, "bundle", "verify", bundle, "--trust", kit.keydir / "root.json")
    assert "encrypted payload(s) match as ciphertext" in verified.stdout
    shown = json.loads(run(SATCHEL, "bundle", "inspect", bundle, "--json").stdout)
    assert [r["name"] for r in shown["encryption"]["recipients"]] == ["enc-lan-1", "manager"]

    manager.cli("bundle", "add", bundle)
    agent = site.start(state)
    manager.deploy("secret:1.0.0", ["enc-lan-1"], "100%")

    wait_for(lambda: agent.serving_version("secret") == "1.0.0", 60, "the encrypted install")
    x = positive(3, seed=5)
    np.testing.assert_allclose(agent.infer("secret", x), expected_outputs(kit.good, x),
                               rtol=1e-4, atol=1e-5)


def test_usb_stick_installs_on_its_device_and_is_refused_by_another(
    site: Site, manager: ManagerProcess, kit: Kit
) -> None:
    right = site.init("enc-usb-1")
    wrong = site.init("enc-usb-2")
    for device_id, state in (("enc-usb-1", right), ("enc-usb-2", wrong)):
        manager.cli("device", "add", device_id, "--device-class", DEVICE_CLASS,
                    "--public-key", state / "device.pub")
    bundle = build_encrypted(kit, site.root / "secret-usb.satchel", "2.0.0", 2000,
                             [f"enc-usb-1={right / 'device.pub'}"])
    manager.cli("bundle", "add", bundle)
    deployment = manager.deploy("secret:2.0.0", ["enc-usb-1", "enc-usb-2"], "100%")
    stick = site.root / "stick"
    manager.cli("usb", "export", stick, "--key", kit.keydir / "signing.key",
                "--deployment", str(deployment))

    done = site.agent_cli(right, "usb", stick)
    assert "installed secret 2.0.0" in done.stdout
    status = json.loads(site.agent_cli(right, "status", "--json").stdout)
    assert status["channels"]["secret"]["active"] == {"version": "2.0.0", "sequence": 2000}

    refused = site.agent_cli(wrong, "usb", stick, check=False)
    assert refused.returncode == 1
    assert ("bundle secret 2.0.0 is encrypted for other devices (recipients: enc-usb-1), "
            "not for device enc-usb-2") in refused.stdout + refused.stderr
    status = json.loads(site.agent_cli(wrong, "status", "--json").stdout)
    assert status["channels"] == {}

    imported = manager.cli("usb", "import", stick)
    assert imported.stdout.startswith("2 report(s) imported")
    shown = manager.device("enc-usb-1")
    assert shown["channels"]["secret"]["active"]["version"] == "2.0.0"


def test_admin_rewraps_for_a_new_device_and_decrypts_with_the_manager_key(
    site: Site, manager: ManagerProcess, kit: Kit
) -> None:
    """`satchel bundle rewrap` gives a bundle to a device that did not exist when it was
    built, copying the signed manifest and the ciphertext byte for byte; `satchel bundle
    decrypt` and `verify --identity` check the plaintext with the manager's key."""
    first = site.init("enc-old-1")
    bundle = build_encrypted(kit, site.root / "secret-3.satchel", "3.0.0", 3000,
                             [f"enc-old-1={first / 'device.pub'}",
                              str(manager_recipient(site))])
    manager_key = site.root / "manager-keys" / "manager.key"
    assert manager_key.stat().st_mode & 0o777 == 0o600
    shown = run(SATCHEL, "bundle", "inspect", bundle).stdout
    assert "encrypted: x25519-hkdf-sha256+aes-256-gcm-stream/1" in shown
    assert "recipients (keys.json): enc-old-1" in shown
    later = site.init("enc-new-1")
    refused = site.agent_cli(later, "install", bundle, check=False)
    assert refused.returncode == 1
    assert "is encrypted for other devices (recipients: enc-old-1, manager)" in refused.stderr

    manager.cli("device", "add", "enc-new-1", "--device-class", DEVICE_CLASS,
                "--public-key", later / "device.pub")
    copy = site.root / "secret-3-new.satchel"
    done = manager.cli("bundle", "rewrap", bundle, "--identity", manager_key,
                       "--to", "device:enc-new-1", "-o", copy)
    assert "recipients enc-old-1, manager, enc-new-1" in done.stdout
    assert copy.read_bytes()[:1024] == bundle.read_bytes()[:1024]  # manifest.json untouched
    installed = site.agent_cli(later, "install", copy)
    assert "activated secret 3.0.0" in installed.stdout

    checked = run(SATCHEL, "bundle", "verify", copy, "--trust", kit.keydir / "root.json",
                  "--identity", manager_key)
    assert "payload(s) match" in checked.stdout and "ciphertext" not in checked.stdout
    plain = site.root / "plain"
    run(SATCHEL, "bundle", "decrypt", copy, "--trust", kit.keydir / "root.json",
        "--identity", manager_key, "-o", plain)
    assert (plain / "model.onnx").read_bytes() == kit.good.read_bytes()
    stranger = run(SATCHEL, "bundle", "decrypt", copy, "--trust", kit.keydir / "root.json",
                   "--identity", first / "device.key", "-o", site.root / "p2")
    assert stranger.returncode == 0  # enc-old-1 is still a recipient
