"""The TUF attack catalogue over the LAN: a device running the real check-in loop against a
compromised manager or mirror on 127.0.0.1 (`rogue.py`), or a real manager for the root chain.

Each test installs release 1.0.0 (sequence 10) first, then lets the attacker offer something;
the device must refuse it with a named error in one line, report that refusal, and keep
serving 1.0.0 with every byte of its state unchanged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from satchel.agent.errors import (
    DeviceClassError,
    DownloadError,
    ManagerUnreachableError,
    SequenceRollbackError,
)
from satchel.agent.sync.checkin import CheckinLoop
from satchel.agent.sync.client import ManagerClient, Offer
from satchel.agent.sync.credentials import require_credentials
from satchel.agent.sync.enroll import enroll_device
from satchel.bundles.errors import (
    ExpiredError,
    PayloadHashError,
    PayloadSizeError,
    ThresholdError,
    UnknownKeyError,
)
from satchel.bundles.keys import SigningKey
from satchel.bundles.timeutil import utcnow
from satchel.bundles.trust import load_root
from tests.factory.keys import Keyring, make_keys
from tests.factory.spans import flip_byte, span_of
from tests.factory.tar import pack_members, read_members
from tests.reliability.figures import Recorder
from tests.reliability.kit import (
    CFG,
    CHANNEL,
    Site,
    installer_refusal,
    make_site,
    normalized,
    one_refusal,
    sha256_of,
    successor_root,
)
from tests.reliability.rogue import ENDLESS, TRICKLE, RogueManager, Served
from tests.service.devices import Models
from tests.service.live_manager import Manager

AREA = "TUF attack, LAN"


@dataclass
class Lan:
    """A device serving 1.0.0 (sequence 10), enrolled with the attacker's server."""

    site: Site
    rogue: RogueManager
    loop: CheckinLoop
    v1: Path

    def attack(self, data: bytes, *, version: str = "2.0.0", sequence: int = 20,
               **offer: Any) -> dict[str, Any]:
        """Offer `data`, let the device act on it, then deliver its events; assert nothing
        changed on the device and return the one refusal it reported."""
        before = self.site.snapshot()
        self.rogue.offer(CHANNEL, version, sequence, data, **offer)
        self.loop.once()
        self.rogue.offers = []
        self.loop.once()
        self.assert_unchanged(before)
        return one_refusal(self.rogue.events())

    def assert_unchanged(self, before: dict[str, Any]) -> None:
        assert self.site.snapshot() == before
        assert self.site.active() == ("1.0.0", 10)
        downloads = self.site.state / "downloads"
        assert not downloads.exists() or list(downloads.iterdir()) == []

    def client(self) -> ManagerClient:
        return ManagerClient(self.rogue.url, require_credentials(self.site.state).token,
                             config=CFG)


def _lan(site: Site, rogue: RogueManager, models: Models) -> Lan:
    v1 = site.bundle(models.good, "1.0.0", 10)
    site.install(v1)
    enroll_device(site.state, rogue.url, "sat_enroll_rogue", config=CFG)
    return Lan(site, rogue, site.loop(), v1)


@pytest.fixture
def lan(site: Site, rogue: RogueManager, models: Models) -> Lan:
    return _lan(site, rogue, models)


def _offer(data: bytes, **kwargs: Any) -> Offer:
    fields: dict[str, Any] = {"channel": CHANNEL, "version": "2.0.0", "sequence": 20,
                              "bundle_sha256": sha256_of(data), "size": len(data),
                              "url": "/mirror/bundles/0.satchel", "deployment_id": 7}
    fields.update(kwargs)
    return Offer(**fields)


# --- arbitrary software installation -----------------------------------------------------


def test_bundle_signed_by_an_unknown_key_is_refused(lan: Lan, models: Models,
                                                    measured: Recorder) -> None:
    forged = lan.site.bundle(models.other, "2.0.0", 20, signers=[SigningKey.generate()])

    refusal = lan.attack(forged.read_bytes())

    assert refusal["kind"] == "install_refused"
    assert refusal["reason"] == installer_refusal(lan.site, forged, UnknownKeyError)
    measured.row(AREA, "arbitrary software: bundle signed by an unknown key", 1,
                 "refused: UnknownKeyError")


# --- rollback -----------------------------------------------------------------------------


def test_rollback_to_an_older_sequence_is_refused(lan: Lan, models: Models,
                                                  measured: Recorder) -> None:
    older = lan.site.bundle(models.other, "0.9.0", 5)
    lan.rogue.offer(CHANNEL, "0.9.0", 5, older.read_bytes())  # says what it is: skipped
    lan.loop.once()
    assert sum(lan.rogue.sent.values()) == 0 and lan.site.active() == ("1.0.0", 10)

    refusal = lan.attack(older.read_bytes(), version="0.9.0", sequence=30)  # lies: refused

    assert refusal["kind"] == "install_refused"
    assert "offer names vision 0.9.0 (sequence 30)" in refusal["reason"]  # OfferMismatchError
    installer_refusal(lan.site, older, SequenceRollbackError)  # the installer refuses it too
    measured.row(AREA, "rollback: older sequence (honest offer skipped, lying offer refused)",
                 2, "refused: OfferMismatchError (installer: SequenceRollbackError)")


def test_rollback_to_an_equal_sequence_is_refused(lan: Lan, models: Models,
                                                  measured: Recorder) -> None:
    same = lan.site.bundle(models.other, "1.0.1", 10)  # another build, same sequence

    refusal = lan.attack(same.read_bytes(), version="1.0.1", sequence=11)

    assert "offer names vision 1.0.1 (sequence 11)" in refusal["reason"]  # OfferMismatchError
    installer_refusal(lan.site, same, SequenceRollbackError)  # the installer refuses it too
    measured.row(AREA, "rollback: equal sequence, other content", 1,
                 "refused: OfferMismatchError (installer: SequenceRollbackError)")


def test_replayed_old_bundle_is_refused(lan: Lan, models: Models, measured: Recorder) -> None:
    v2 = lan.site.bundle(models.other, "2.0.0", 20)
    lan.site.install(v2)  # the device moved on; the attacker kept the old, genuine 1.0.0
    before = lan.site.snapshot()
    lan.rogue.offer(CHANNEL, "1.0.0", 30, lan.v1.read_bytes())

    lan.loop.once()
    lan.rogue.offers = []
    lan.loop.once()

    assert lan.site.snapshot() == before and lan.site.active() == ("2.0.0", 20)
    refusal = one_refusal(lan.rogue.events())
    assert "offer names vision 1.0.0 (sequence 30)" in refusal["reason"]  # OfferMismatchError
    installer_refusal(lan.site, lan.v1, SequenceRollbackError)  # the installer refuses it too
    measured.row(AREA, "rollback: replayed old genuine bundle", 1,
                 "refused: OfferMismatchError (installer: SequenceRollbackError)")


def test_replayed_old_trust_root_is_refused(lan: Lan, measured: Recorder) -> None:
    keys = lan.site.keys
    lan.rogue.roots = {2: successor_root(keys, keys.signing_keys)}
    lan.rogue.trust_version = 2
    lan.loop.once()
    assert lan.site.root_version() == 2
    before = lan.site.snapshot()
    lan.rogue.roots, lan.rogue.trust_version = {3: keys.root_json}, 3  # v1 replayed as "v3"

    lan.loop.once()
    lan.loop.once()

    assert lan.site.snapshot() == before and lan.site.root_version() == 2
    (refused,) = [e for e in lan.rogue.events() if e["kind"] == "trust_update_refused"]
    assert "not newer than trusted version 2" in refused["reason"]
    assert "\n" not in refused["reason"]
    measured.row(AREA, "rollback: replayed old trust root", 1, "refused: RootRotationError")


# --- indefinite freeze --------------------------------------------------------------------


def test_expired_manifest_is_refused(lan: Lan, models: Models, measured: Recorder) -> None:
    now = utcnow()
    stale = lan.site.bundle(models.other, "2.0.0", 20, created=now - timedelta(days=2),
                            expires=now - timedelta(days=1))

    refusal = lan.attack(stale.read_bytes())

    assert refusal["reason"] == installer_refusal(lan.site, stale, ExpiredError)
    measured.row(AREA, "freeze: expired manifest", 1, "refused: ExpiredError")


def test_stale_trust_root_is_refused(lan: Lan, models: Models, measured: Recorder) -> None:
    keys = lan.site.keys
    stale_root = successor_root(keys, keys.signing_keys, expires=utcnow() - timedelta(hours=1))
    lan.rogue.roots, lan.rogue.trust_version = {2: stale_root}, 2  # and never a newer one
    lan.loop.once()
    assert lan.site.root_version() == 2
    genuine = lan.site.bundle(models.other, "2.0.0", 20)

    refusal = lan.attack(genuine.read_bytes())

    assert "a new root.json is needed" in refusal["reason"]
    assert refusal["reason"] == installer_refusal(lan.site, genuine, ExpiredError)
    measured.row(AREA, "freeze: stale (expired) trust root, no newer one served", 1,
                 "refused: ExpiredError")


def test_untrusted_clock_refuses_what_expired_before_the_newest_signed_time_seen(
    tmp_path: Path, keys: Keyring, rogue: RogueManager, models: Models, measured: Recorder
) -> None:
    site = make_site(tmp_path / "noclock", keys, trusted_clock=False)
    lan = _lan(site, rogue, models)  # 1.0.0 was signed now: the newest signed time seen
    now = utcnow()
    frozen = site.bundle(models.other, "2.0.0", 20, created=now - timedelta(days=30),
                         expires=now - timedelta(days=1))

    refusal = lan.attack(frozen.read_bytes())

    assert "newest signed time this device has seen" in refusal["reason"]
    assert refusal["reason"] == installer_refusal(site, frozen, ExpiredError)
    measured.row(AREA, "freeze: no trustworthy clock, manifest expired before the newest "
                 "signed time seen", 1, "refused: ExpiredError")


# --- endless data -------------------------------------------------------------------------


def test_endless_download_stops_at_the_declared_size(lan: Lan, models: Models,
                                                     measured: Recorder) -> None:
    data = lan.site.bundle(models.other, "2.0.0", 20).read_bytes()
    served = Served(data, mode=ENDLESS)
    lan.rogue.files["/mirror/bundles/0.satchel"] = served

    with pytest.raises(DownloadError) as info:
        lan.client().download(_offer(data), lan.site.work / "dl")
    assert "larger than the" in str(info.value) and "\n" not in str(info.value)
    assert list((lan.site.work / "dl").iterdir()) == []

    refusal = lan.attack(data, served=served)

    assert refusal["kind"] == "install_failed"
    assert refusal["reason"] == normalized(str(info.value))
    sent = max(lan.rogue.sent.values())
    assert sent < 64 * 1024 * 1024  # it hung up long before the server's own cap
    measured.row(AREA, "endless data: an answer that never ends", 2, "refused: DownloadError",
                 declared_bytes=len(data), bytes_kept=0,
                 bytes_pushed_into_the_socket_before_hang_up=sent)


def test_endless_trust_root_document_is_cut_at_the_answer_limit(
    lan: Lan, measured: Recorder
) -> None:
    lan.rogue.roots, lan.rogue.trust_version = {2: Served(b"{", mode=ENDLESS)}, 2
    before = lan.site.snapshot()

    lan.loop.once()  # reported, not raised: offers would go on with the trusted root
    lan.loop.once()

    (failed,) = [e for e in lan.rogue.events() if e["kind"] == "trust_update_failed"]
    assert f"answer larger than {CFG.max_answer_bytes} bytes" in failed["reason"]
    assert "\n" not in failed["reason"]
    lan.assert_unchanged(before)
    assert lan.site.root_version() == 1
    sent = max(lan.rogue.sent.values())
    measured.row(AREA, "endless data: a trust root document that never ends", 1,
                 "refused: trust_update_failed (answer larger than the limit)",
                 limit_bytes=CFG.max_answer_bytes,
                 bytes_pushed_into_the_socket_before_hang_up=sent)


def test_bundle_bigger_than_announced_is_cut_at_the_declared_size(
    lan: Lan, models: Models, measured: Recorder
) -> None:
    data = lan.site.bundle(models.other, "2.0.0", 20).read_bytes()

    refusal = lan.attack(data, served=Served(data, extra=b"\0" * 100_000))

    assert refusal["kind"] == "install_failed"
    assert f"larger than the {len(data)} bytes announced" in refusal["reason"]
    measured.row(AREA, "endless data: bundle bigger than its announced size", 1,
                 "refused: DownloadError")


# --- slow retrieval -----------------------------------------------------------------------


def test_trickling_download_times_out_and_changes_nothing(lan: Lan, models: Models,
                                                          measured: Recorder) -> None:
    data = lan.site.bundle(models.other, "2.0.0", 20).read_bytes()
    before = lan.site.snapshot()
    lan.rogue.offer(CHANNEL, "2.0.0", 20, data, served=Served(data, mode=TRICKLE,
                                                                trickle_s=0.01))
    started = time.monotonic()

    with pytest.raises(ManagerUnreachableError) as info:
        lan.loop.once()

    seconds = time.monotonic() - started
    assert "too slow" in str(info.value) and "\n" not in str(info.value)
    assert max(lan.rogue.sent.values()) < len(data)  # it gave up, the trickle did not end
    assert lan.site.snapshot() == before and lan.site.active() == ("1.0.0", 10)
    partial = list((lan.site.state / "downloads").glob("*"))
    assert all(p.suffix == ".part" and p.stat().st_size < len(data) for p in partial)
    measured.row(AREA, "slow retrieval: a download trickled one byte at a time", 1,
                 "refused: ManagerUnreachableError (too slow)",
                 seconds_until_given_up=round(seconds, 2))


# --- mix-and-match ------------------------------------------------------------------------


def test_manifest_of_one_release_with_payloads_of_another_is_refused(
    lan: Lan, models: Models, measured: Recorder
) -> None:
    a = lan.site.bundle(models.other, "2.0.0", 20).read_bytes()
    b = lan.site.bundle(models.good, "2.0.0", 20).read_bytes()
    members_a, members_b = read_members(a), read_members(b)
    mixed = lan.site.work / "mixed.satchel"
    mixed.write_bytes(pack_members(members_a[:2] + members_b[2:]))
    same_size = all(len(x.data) == len(y.data)
                    for x, y in zip(members_a[2:], members_b[2:], strict=True))

    refusal = lan.attack(mixed.read_bytes())

    error = PayloadHashError if same_size else PayloadSizeError
    assert refusal["reason"] == installer_refusal(lan.site, mixed, error)
    measured.row(AREA, "mix-and-match: manifest of one release, payloads of another", 1,
                 f"refused: {error.__name__}")


def test_offer_whose_sha256_names_another_bundle_is_refused(
    lan: Lan, models: Models, measured: Recorder
) -> None:
    # The offer says 2.0.0 (sequence 20) but its sha256 names the old 1.0.0, served as is.
    refusal = lan.attack(lan.v1.read_bytes(), version="2.0.0", sequence=20)

    assert "is vision 1.0.0 (sequence 10)" in refusal["reason"]  # OfferMismatchError
    assert (refusal["version"], refusal["sequence"]) == ("1.0.0", 10)  # the manifest's facts
    installer_refusal(lan.site, lan.v1, SequenceRollbackError)  # the installer refuses it too
    measured.row(AREA, "mix-and-match: offer whose sha256 names another (older) bundle", 1,
                 "refused: OfferMismatchError (installer: SequenceRollbackError)")


# --- malicious mirror ---------------------------------------------------------------------


def test_mirror_serving_altered_bytes_is_refused(lan: Lan, models: Models,
                                                 measured: Recorder) -> None:
    genuine = lan.site.bundle(models.other, "2.0.0", 20).read_bytes()
    altered = flip_byte(genuine, len(genuine) // 2)

    lan.rogue.files["/mirror/bundles/0.satchel"] = Served(altered)
    with pytest.raises(DownloadError) as info:
        lan.client().download(_offer(genuine), lan.site.work / "dl")
    assert list((lan.site.work / "dl").iterdir()) == []
    refusal = lan.attack(genuine, served=Served(altered))

    assert "does not match" in refusal["reason"]
    assert refusal["reason"].split(" (")[0] == normalized(str(info.value)).split(" (")[0]
    measured.row(AREA, "malicious mirror: altered bytes under the genuine sha256", 1,
                 "refused: DownloadError")


def test_manager_announcing_altered_bytes_is_refused(lan: Lan, models: Models,
                                                     measured: Recorder) -> None:
    genuine = lan.site.bundle(models.other, "2.0.0", 20).read_bytes()
    altered = lan.site.work / "altered.satchel"
    model = span_of(genuine, "payload/model.onnx.zst", "data")
    altered.write_bytes(flip_byte(genuine, (model.start + model.stop) // 2))

    refusal = lan.attack(altered.read_bytes())  # sha256 and size of the altered file

    assert refusal["reason"] == installer_refusal(lan.site, altered, PayloadHashError)
    measured.row(AREA, "malicious mirror: altered bytes announced as they are", 1,
                 "refused: PayloadHashError")


# --- wrong software -----------------------------------------------------------------------


def test_bundle_for_another_device_class_is_refused(lan: Lan, models: Models,
                                                    measured: Recorder) -> None:
    other = lan.site.bundle(models.other, "2.0.0", 20, device_classes=("doorbell",))

    refusal = lan.attack(other.read_bytes())

    assert refusal["reason"] == installer_refusal(lan.site, other, DeviceClassError)
    measured.row(AREA, "wrong software: bundle for another device class", 1,
                 "refused: DeviceClassError")


# --- key compromise -----------------------------------------------------------------------


def test_bundle_signed_by_one_stolen_key_under_a_threshold_of_two_is_refused(
    tmp_path: Path, rogue: RogueManager, models: Models, measured: Recorder
) -> None:
    keys = make_keys(tmp_path / "t2", signing_count=2, signing_threshold=2)
    lan = _lan(make_site(tmp_path / "t2", keys), rogue, models)
    stolen = keys.signing_keys[0]
    forged = lan.site.bundle(models.other, "2.0.0", 20, signers=[stolen])

    refusal = lan.attack(forged.read_bytes())

    assert refusal["reason"] == installer_refusal(lan.site, forged, ThresholdError)
    measured.row(AREA, "key compromise: one stolen key under a signing threshold of 2", 1,
                 "refused: ThresholdError")


def test_revoked_signing_key_is_refused_after_rotation_through_the_version_url_chain(
    site: Site, rogue: RogueManager, real_manager: Manager, models: Models,
    measured: Recorder,
) -> None:
    keys = site.keys
    compromised, fresh = keys.signing, SigningKey.generate()
    v1 = site.bundle(models.good, "1.0.0", 10)
    site.install(v1)
    enroll_device(site.state, real_manager.url, real_manager.enroll_token(), config=CFG)
    loop = site.loop()
    real_manager.import_root(successor_root(keys, [fresh]))  # revokes the compromised key

    loop.once()  # the manager's answer names v2; the device walks version_url to it
    assert site.root_version() == 2
    trusted = load_root((site.state / "root.json").read_bytes())
    assert set(trusted.signing_keys()) == {fresh.keyid}
    forged = site.bundle(models.other, "2.0.0", 20, signers=[compromised])
    bundles_before = real_manager.call("GET", "/api/v1/bundles")
    real_manager.call("POST", "/api/v1/bundles", 422, data=forged.read_bytes())
    assert real_manager.call("GET", "/api/v1/bundles") == bundles_before
    loop.manager_url = rogue.url  # so the thief serves it from a mirror of his own
    lan = Lan(site, rogue, loop, v1)

    refusal = lan.attack(forged.read_bytes())

    assert refusal["reason"] == installer_refusal(site, forged, UnknownKeyError)
    signed_by_fresh = site.bundle(models.other, "2.0.0", 20, signers=[fresh])
    site.install(signed_by_fresh)  # the new key works
    assert site.active() == ("2.0.0", 20)
    measured.row(AREA, "root rotation: revoked signing key (new root via version_url)", 2,
                 "refused: UnknownKeyError (manager 422, device refuses)")
