"""`satchel-agent install` of encrypted bundles (issue 19): the device decrypts with its own
key (or a class key it was given), the plaintext lands mode 0600 inside its release only, and
a bundle encrypted for other devices is refused in one line with the device unchanged."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from satchel.agent.install.decrypt import key_dir
from satchel.agent.provision import init_device
from satchel.agent.state import FILES_DIR, DeviceState
from satchel.bundles.recipients import Identity, Recipient
from satchel.bundles.tarformat import BLOCK
from tests.agent.bundle_maker import BundleMaker
from tests.agent.devices import DEVICE_CLASS, Device
from tests.factory.encrypted import encrypt_bundle
from tests.factory.keys import Keyring
from tests.factory.spans import flip_byte, span_of


def encrypted(plain: Path, keys: Keyring, recipients: list[Recipient]) -> Path:
    return encrypt_bundle(plain, [keys.signing], recipients)


def own_recipient(device: Device, name: str = "dev-1") -> Recipient:
    """What the admin encrypts to: the device.pub it enrolled (or was registered) with."""
    return Recipient.from_pem(name, (device.state_dir / "device.pub").read_bytes())


def test_the_device_key_it_enrolls_with_is_its_recipient_and_no_private_key_is_shown(
    device: Device,
) -> None:
    assert stat.S_IMODE((device.state_dir / "device.key").stat().st_mode) == 0o600
    out = device.run("recipient", "--json").ok()
    shown = json.loads(out.stdout)
    assert shown["fingerprint"] == own_recipient(device).fingerprint
    assert Recipient.from_pem("dev-1", shown["public_key"].encode()) == own_recipient(device)
    assert "PRIVATE KEY" not in out.stdout
    assert not key_dir(device.state_dir).exists()  # no class or fleet key given


def test_encrypted_bundle_installs_with_the_device_key_and_plaintext_is_mode_0600(
    device: Device, make_bundle: BundleMaker, keys: Keyring
) -> None:
    manager = Identity.generate("manager")
    bundle = encrypted(make_bundle(), keys, [own_recipient(device), manager.recipient])
    out = device.spawn("install", str(bundle))  # the real console script
    assert out.exit_code == 0, out.stderr
    assert "activated kws 1.0.0" in out.stdout
    device.verify_active()  # every file re-hashed against the signed plaintext hashes
    release = DeviceState(device.state_dir).active_release("kws")
    assert release is not None
    files = [p for p in (release.directory / FILES_DIR).rglob("*") if p.is_file()]
    assert files
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    staging = device.state_dir / "channels" / "kws" / "staging"
    assert list(staging.iterdir()) == []  # nothing left behind


def test_bundle_for_other_devices_is_refused_in_one_line_and_the_device_is_unchanged(
    device: Device, make_bundle: BundleMaker, keys: Keyring
) -> None:
    device.run("install", str(make_bundle())).ok()
    cam8 = Identity.generate("cam-8")
    bundle = encrypted(make_bundle(version="2.0.0", sequence=2), keys, [cam8.recipient])
    before = device.tree()
    out = device.run("install", str(bundle))
    assert out.exit_code == 1
    assert out.stderr.strip() == (
        "error: bundle kws 2.0.0 is encrypted for other devices (recipients: cam-8), "
        "not for device dev-1"
    )
    assert device.tree() == before
    assert device.active() == ("1.0.0", 1)


def test_a_class_key_given_at_init_unlocks_bundles_for_the_class(
    tmp_path: Path, make_bundle: BundleMaker, keys: Keyring
) -> None:
    klass = Identity.generate("test-board")
    key_file = tmp_path / "test-board.key"
    key_file.write_bytes(klass.to_pem())
    state_dir = tmp_path / "classy"
    init_device(state_dir, keys.root_json, "dev-2", DEVICE_CLASS, decryption_keys=(key_file,))
    device = Device(state_dir)
    held = key_dir(state_dir) / "test-board.key"
    assert stat.S_IMODE(held.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_dir(state_dir).stat().st_mode) == 0o700
    bundle = encrypted(make_bundle(), keys, [klass.recipient])
    device.run("install", str(bundle)).ok()
    assert device.active() == ("1.0.0", 1)


def test_altered_ciphertext_is_refused_and_the_device_is_unchanged(
    device: Device, make_bundle: BundleMaker, keys: Keyring
) -> None:
    bundle = encrypted(make_bundle(), keys, [own_recipient(device)])
    data = bundle.read_bytes()
    span = span_of(data, "payload/model.onnx.zst", "data")
    bundle.write_bytes(flip_byte(data, span.start + min(BLOCK, span.stop - span.start - 1)))
    before = device.tree()
    out = device.run("install", str(bundle))
    assert out.exit_code == 1
    assert "does not match its signed hash" in out.stderr
    assert device.tree() == before
    assert device.active() is None
