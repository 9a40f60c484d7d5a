"""Attacks on encrypted bundles (issue 19), on a USB-only device running the real
`satchel-agent usb` code: altered ciphertext, a bundle wrapped for someone else, and a
keys.json (which is not signed) swapped for one wrapping a key of the attacker's choosing.

Each stick carries a plan honestly signed for the bytes on it, so the device's own checks
are what refuse them; the installer refuses each with its named error, in one line, and the
device is left exactly as it was, still serving 1.0.0 (sequence 10).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest

from satchel.agent.sync.usb import process_stick
from satchel.bundles.crypt import KeyFile, wrap
from satchel.bundles.cryptinfo import KEYS_MEMBER
from satchel.bundles.errors import (
    NotARecipientError,
    PayloadHashError,
    WrappedKeyError,
)
from satchel.bundles.recipients import Identity, Recipient
from tests.factory.encrypted import encrypt_bundle
from tests.factory.spans import flip_byte, layout
from tests.factory.tar import rewrite_member
from tests.reliability.figures import Recorder
from tests.reliability.kit import CFG, Site, installer_refusal, no_health
from tests.reliability.sticks import Stick, assign_file
from tests.service.devices import Models

AREA = "TUF attack, USB"
CIPHERTEXT_FLIPS = 24  # random single-byte changes across the encrypted payload members


class EncryptedUsb:
    """A USB-only device serving 1.0.0 (sequence 10) and an encrypted 2.0.0 made for it."""

    def __init__(self, site: Site, models: Models, stick_dir: Path) -> None:
        self.site = site
        site.install(site.bundle(models.good, "1.0.0", 10))
        self.recipient = Recipient.from_pem(
            site.device_id, (site.state / "device.pub").read_bytes())
        self.v2 = encrypt_bundle(site.bundle(models.other, "2.0.0", 20),
                                 site.keys.signing_keys, [self.recipient])
        self.stick_dir = stick_dir
        self.sticks = 0

    def attack(self, data: bytes) -> dict[str, Any]:
        """Hand the device a stick carrying `data` as vision 2.0.0 under an honestly signed
        plan; assert nothing changed; return the refusal its report names."""
        self.sticks += 1
        stick = Stick(self.stick_dir / f"stick-{self.sticks}")
        stick.roots(self.site.keys.root_json)
        stick.plan([assign_file(stick, data, "2.0.0", 20)], self.site.keys.signing_keys)
        before = self.site.snapshot()
        outcome = process_stick(self.site.state, stick.path, self.site.events(), no_health,
                                config=CFG)
        assert self.site.snapshot() == before
        assert self.site.active() == ("1.0.0", 10)
        assert outcome.installed == [] and len(outcome.failed) == 1
        return {"reason": outcome.failed[0][1]}

    def refused_by_installer(self, data: bytes, error: type[Exception]) -> str:
        path = self.site.work / f"attack-{self.sticks}.satchel"
        path.write_bytes(data)
        return installer_refusal(self.site, path, error)


@pytest.fixture
def enc(site: Site, models: Models, tmp_path: Path) -> EncryptedUsb:
    return EncryptedUsb(site, models, tmp_path / "sticks")


def test_honest_encrypted_stick_installs(enc: EncryptedUsb) -> None:
    stick = Stick(enc.stick_dir / "honest")
    stick.roots(enc.site.keys.root_json)
    stick.plan([assign_file(stick, enc.v2.read_bytes(), "2.0.0", 20)],
               enc.site.keys.signing_keys)
    outcome = process_stick(enc.site.state, stick.path, enc.site.events(), no_health,
                            config=CFG)
    assert outcome.installed == ["vision 2.0.0"]
    assert enc.site.active() == ("2.0.0", 20)


def test_altered_ciphertext_is_refused_before_it_is_decrypted(
    enc: EncryptedUsb, measured: Recorder
) -> None:
    data = enc.v2.read_bytes()
    members = [s for s in layout(data) if s.region == "data" and s.member.startswith("payload/")]
    rng = random.Random(19)
    for _ in range(CIPHERTEXT_FLIPS):
        span = rng.choice(members)
        tampered = flip_byte(data, rng.randrange(span.start, span.stop), 1 << rng.randrange(8))
        refusal = enc.attack(tampered)
        assert refusal["reason"] == enc.refused_by_installer(tampered, PayloadHashError)
        assert "does not match its signed hash" in refusal["reason"]
    measured.row(AREA, "encrypted bundle: altered ciphertext (chunk index refuses it before "
                 "decryption)", CIPHERTEXT_FLIPS, "refused: PayloadHashError")


def test_bundle_wrapped_for_someone_else_is_refused(
    enc: EncryptedUsb, models: Models, measured: Recorder
) -> None:
    theirs = Identity.generate("cam-8")
    other = encrypt_bundle(enc.site.bundle(models.other, "2.0.0", 20), enc.site.keys.signing_keys,
                           [theirs.recipient])
    refusal = enc.attack(other.read_bytes())
    reason = enc.refused_by_installer(other.read_bytes(), NotARecipientError)
    assert refusal["reason"] == reason
    assert reason == ("bundle vision 2.0.0 is encrypted for other devices (recipients: cam-8), "
                      f"not for device {enc.site.device_id}")
    measured.row(AREA, "encrypted bundle: data key wrapped for someone else", 1,
                 "refused: NotARecipientError")


def test_keys_json_swapped_for_a_key_the_attacker_chose_is_refused(
    enc: EncryptedUsb, measured: Recorder
) -> None:
    """keys.json is not signed: anyone may wrap any key for the device's public key. The
    signed key commitment makes such a key useless; a garbled stanza fails to unwrap."""
    forged = KeyFile((wrap(os.urandom(32), enc.recipient),)).to_bytes()
    data = rewrite_member(enc.v2.read_bytes(), KEYS_MEMBER, forged)
    refusal = enc.attack(data)
    assert refusal["reason"] == enc.refused_by_installer(data, WrappedKeyError)
    measured.row(AREA, "encrypted bundle: keys.json wrapping a key of the attacker's choosing",
                 1, "refused: WrappedKeyError")
